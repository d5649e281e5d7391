"""The in-process queue: a handle that talks to a scheduler actor in the same trio run."""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .._core import _validate as v
from .._core._api import QueueAPI
from .._core._errors import (
    DequeueTimeoutError,
    JobQueueError,
    QueueClosedError,
    WaitTimeoutError,
)
from .._core._operation import MAX_MATCH_KEYS
from .._core._ops import (
    Dequeue,
    Operation,
    Scope,
    WaitForJob,
    WaitingOperation,
    check_access,
    run,
)
from .._core._state import QueueState
from .._core._unwrap import ErrorPolicy
from .._stores._base import Store
from ._maintenance import Maintainer, Maintenance
from ._scheduler import (
    AwaitSettle,
    Call,
    Park,
    Release,
    Reply,
    Scheduler,
    Settle,
    StopAwaiting,
    Subscribe,
    Subscription,
    Target,
    Unsubscribe,
    Withdraw,
)
from ._stream import LocalJobStream, check_credit, handle_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence
    from uuid import UUID

    from .._core._models import DequeuedJob, JobStatus
    from .._core._ops import FinishJob
    from .._core._records import Assignment
    from ._metrics import QueueMetrics

__all__ = ["LocalQueue", "open_queue", "resolve_store", "utc_now"]

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")


def utc_now() -> datetime:
    """The default wall clock: the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class LocalQueue(QueueAPI):
    """A :class:`actorq.JobQueue` served by a scheduler actor in this trio run.

    Make one with :func:`open_queue`. Any number of tasks may use it at once;
    each call is one message to the actor and one reply.
    """

    def __init__(self, scheduler: Scheduler, *, max_match_keys: int = MAX_MATCH_KEYS) -> None:
        self._scheduler = scheduler
        self._max_match_keys = max_match_keys

    def _check_pairs(self, op: WaitingOperation) -> None:
        # each (type, channel) pair is a key the scheduler looks at and parks a
        # waiter under; the core refuses more than MAX_MATCH_KEYS anywhere
        pairs = len(op.job_types) * max(len(op.channels), 1)
        if pairs > self._max_match_keys:
            raise ValueError(
                f"{len(op.job_types)} job types x {len(op.channels)} channels is more than "
                f"this queue's {self._max_match_keys} (type, channel) pairs"
            )

    # ------------------------------------------------------------ plumbing

    async def _call(self, fn: Callable[[QueueState], T]) -> T:
        """Run ``fn`` on the queue state inside the actor and return its result.

        ``fn`` must be synchronous and quick. Whatever it changes is committed
        before this returns. If the caller is cancelled before the actor gets
        to the request, ``fn`` never runs; once it ran, cancellation cannot
        undo it (a job it handed out goes back, its token void).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        reply = Reply()
        self._scheduler.post_nowait(Call(fn, reply))
        result: T = await reply.wait()
        return result

    async def _run(self, op: Operation[Any, P]) -> P:
        # execute() without a scope, one coroutine level shorter: every in-process call
        op = op.checked()
        if isinstance(op, WaitingOperation):
            return op.present(await self._wait_for_job(op, None))  # type: ignore[return-value]
        if type(op) is WaitForJob:
            return op.present(await self._wait_for_settle(op, None))  # type: ignore[return-value]
        return op.present(await self._call(op.apply_unscoped))

    async def execute(self, op: Operation[R, Any], *, scope: Scope = None) -> R:
        """Check ``op``'s arguments, run it in the actor and return the core's result.

        The seam every front end serves the queue through: ``scope`` limits the
        caller to those channels (the server's tenancy). A waiting operation
        (a dequeue) parks until a job is ready or its timeout passes
        (:class:`DequeueTimeoutError`); if the caller is cancelled meanwhile,
        :class:`trio.Cancelled` propagates and a job already assigned to it
        goes back to its place, its token void. A job returned here that the
        caller cannot hand on must be given back with :meth:`release`.
        """
        op = op.checked()
        if isinstance(op, WaitingOperation):
            got: R = await self._wait_for_job(op, scope)  # type: ignore[assignment]
            return got
        if type(op) is WaitForJob:
            status: R = await self._wait_for_settle(op, scope)  # type: ignore[assignment]
            return status
        return await self._call(functools.partial(run, op, scope=scope))

    async def _wait_for_settle(self, op: WaitForJob, scope: Scope) -> JobStatus:
        # No poll: the actor answers when the job settles (after that commit).
        answer = functools.partial(run, op, scope=scope)
        if op.timeout == 0:
            # move_on_after(0) would cancel even a ready reply (trio issue 1626)
            status: JobStatus = await self._call(answer)
            return status
        await trio.lowlevel.checkpoint_if_cancelled()
        reply = Reply()
        self._scheduler.post_nowait(AwaitSettle(op.job_id, answer, reply))
        try:
            with trio.move_on_after(math.inf if op.timeout is None else op.timeout):
                settled: JobStatus = await reply.wait()
                return settled
        finally:
            if reply.abandoned:
                # timed out or cancelled: nothing of the wait stays in the actor
                with contextlib.suppress(QueueClosedError):
                    self._scheduler.post_nowait(StopAwaiting(op.job_id, reply))
        raise WaitTimeoutError()

    async def _wait_for_job(self, op: WaitingOperation, scope: Scope) -> Assignment:
        self._check_pairs(op)
        if op.timeout == 0:
            # move_on_after(0) would cancel even a ready reply (trio issue 1626)
            got = await self._call(functools.partial(run, op, scope=scope))
            if got is None:
                raise DequeueTimeoutError()
            return got
        await trio.lowlevel.checkpoint_if_cancelled()
        reply = Reply()
        types, channels = op.matching(scope)
        access = op.access() if scope is not None else None

        def prelude(state: QueueState) -> None:
            if access is not None and scope is not None:
                check_access(state, access, scope)
            op.prelude(state)

        self._scheduler.post_nowait(Park(prelude, types, channels, op.worker_id, reply))
        try:
            with trio.move_on_after(math.inf if op.timeout is None else op.timeout):
                assigned: Assignment = await reply.wait()
                return assigned
        finally:
            if reply.abandoned:
                # Timed out or cancelled before a job arrived: withdraw the wait.
                # A job assigned meanwhile finds the reply abandoned and the
                # actor puts it back itself.
                with contextlib.suppress(QueueClosedError):
                    self._scheduler.post_nowait(Withdraw(reply))
        raise DequeueTimeoutError()

    # ------------------------------------------------------------ streams

    @asynccontextmanager
    async def open_stream(
        self,
        job_types: Sequence[str],
        channels: Sequence[str] = ("",),
        *,
        any_channel: bool = False,
        worker_id: UUID | None = None,
        credit: int = 1,
        on_revoked: Callable[[UUID, UUID, bool], None] | None = None,
        on_refused: Callable[[UUID, JobQueueError], None] | None = None,
    ) -> AsyncIterator[LocalJobStream]:
        """A :class:`~actorq._core._streaming.JobStream` served by this queue's actor.

        See :meth:`actorq.StreamingQueue.open_stream` for the contract. Bad
        arguments raise :class:`TypeError`/:class:`ValueError` and an unknown
        ``worker_id`` :class:`WorkerNotExistError`, before the block runs.
        """
        stream = await self.start_stream(
            job_types,
            channels,
            any_channel=any_channel,
            worker_id=worker_id,
            credit=credit,
            on_revoked=on_revoked,
            on_refused=on_refused,
        )
        try:
            yield stream
        finally:
            stream.stop()

    async def start_stream(
        self,
        job_types: Sequence[str],
        channels: Sequence[str] = ("",),
        *,
        any_channel: bool = False,
        worker_id: UUID | None = None,
        credit: int = 1,
        scope: Scope = None,
        on_revoked: Callable[[UUID, UUID, bool], None] | None = None,
        on_refused: Callable[[UUID, JobQueueError], None] | None = None,
    ) -> LocalJobStream:
        """:meth:`open_stream` without the block, limited to ``scope``: the caller
        must :meth:`~LocalJobStream.stop` the stream it gets."""
        types_arg: Any = job_types
        channels_arg: Any = () if any_channel else channels
        op = Dequeue(
            job_types=types_arg, channels=channels_arg, any_channel=any_channel, worker_id=worker_id
        ).checked()
        self._check_pairs(op)
        stream = LocalJobStream(
            self._scheduler, op, check_credit(credit), scope, on_revoked, on_refused
        )
        await trio.lowlevel.checkpoint_if_cancelled()
        reply = Reply()
        self.subscribe(stream, reply)
        try:
            await reply.wait()
        except BaseException:
            stream.stop()
            raise
        return stream

    def subscribe(self, subscription: Subscription, target: Target) -> None:
        """Start feeding ``subscription`` (a front end's own stream); ``target`` hears
        ``None`` once it is open, or the error that refused it. Never blocks."""
        self._scheduler.post_nowait(Subscribe(subscription, target))

    def settle(
        self,
        subscription: Subscription,
        finishes: Sequence[FinishJob],
        credit: int,
        target: Target | None,
    ) -> None:
        """Apply ``finishes`` for ``subscription`` and add ``credit`` to it; ``target``
        hears the refused ones (see :class:`~._scheduler.Settle`). Never blocks."""
        self._scheduler.post_nowait(Settle(subscription, finishes, credit, target))

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop feeding ``subscription``. Never blocks; nothing happens once the queue closed."""
        with contextlib.suppress(QueueClosedError):
            self._scheduler.post_nowait(Unsubscribe(subscription))

    def submit(self, op: Operation[Any, Any], target: Target, *, scope: Scope = None) -> None:
        """Run ``op`` (not a waiting one) for a caller limited to ``scope``; ``target``
        hears the core's result, after the commit. Never blocks: for front ends
        that answer without a task per request. Bad arguments raise here."""
        op = op.checked()
        if isinstance(op, WaitingOperation):
            if op.timeout != 0:
                raise TypeError("submit() runs only operations that do not wait")
            self._check_pairs(op)
        self._scheduler.post_nowait(Call(functools.partial(run, op, scope=scope), target))

    # ------------------------------------------------------------ extras

    def release(self, job: DequeuedJob, *, scope: Scope = None) -> None:
        """Give back a job whose hand-over failed (for front ends such as the server).

        Synchronous and non-blocking, so it is safe in ``finally`` blocks and
        under cancellation. The job returns to its place in the ready order and
        its token is void; if the job has moved on since (finished, canceled,
        requeued), or lies outside ``scope`` (a tenant's channels), nothing
        happens.
        """
        with contextlib.suppress(QueueClosedError):
            self._scheduler.post_nowait(Release(handle_of(job), scope))


#: What :func:`open_queue` runs unless told otherwise: upstream's heartbeat
#: reaper (120 s, checked every 30 s, 2 retries) and stale-worker removal.
DEFAULT_MAINTENANCE = Maintenance()


def resolve_store(store: str | Store | None) -> Store | None:
    """Turn a store URL into a :class:`Store` (``None`` for a memory-only queue).

    ``memory://`` keeps nothing; ``sqlite:///path/to/file.db`` and
    ``postgresql://...`` name durable stores.
    """
    if store is None:
        return None
    if isinstance(store, str):
        scheme = store.partition(":")[0].lower()
        if scheme == "memory":
            return None
        modules = {"sqlite": "_sqlite", "postgresql": "_postgres", "postgres": "_postgres"}
        if scheme in modules:
            # imported on demand: a memory-only queue never loads a database driver
            module = importlib.import_module(f"actorq._stores.{modules[scheme]}")
            resolved: Store = module.store_from_url(store)
            return resolved
        raise ValueError(
            f"unsupported store URL {store!r}; use memory://, sqlite:///PATH or postgresql://..."
        )
    if isinstance(store, Store):
        return store
    raise TypeError(f"store must be a URL or a Store, not {type(store).__name__}")


@asynccontextmanager
async def open_queue(
    store: str | Store | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
    max_batch: int = 1024,
    max_match_keys: int = MAX_MATCH_KEYS,
    maintenance: Maintenance | None = DEFAULT_MAINTENANCE,
    metrics: QueueMetrics | None = None,
) -> AsyncIterator[LocalQueue]:
    """Start a queue's scheduler actor for the duration of the ``async with`` block.

    ``store`` is ``None`` or ``"memory://"`` for a queue that lives in memory
    only, or a :class:`Store`: the queue is rebuilt from what the store holds
    and every acknowledged change is committed to it. ``clock`` returns the
    current time as an aware datetime, for job timestamps (default: wall
    time in UTC); ages (heartbeats, workers) always use trio's clock, so
    :class:`trio.testing.MockClock` drives them.

    ``max_match_keys`` bounds the (job type, channel) pairs one dequeue or
    stream may name (a :class:`ValueError` past it, remote callers included):
    each pair is work for the scheduler and a key a waiting dequeue is kept
    under. It may be lowered from the default, the most any queue takes,
    10,000.

    ``maintenance`` (a :class:`actorq.Maintenance`) runs the heartbeat
    reaper, stale-worker removal and retention next to the actor. The
    default is upstream's: a running job silent for 120 s is requeued
    (checked every 30 s) and finished with an error after 2 retries; workers
    silent for an hour are removed. ``None`` runs none of them, and the queue
    changes only when asked to.

    ``metrics`` (an :class:`actorq.metrics.QueueMetrics`, one per queue)
    receives the queue's Prometheus metrics while it is open. State changes
    are logged to ``actorq.jobs`` and ``actorq.workers`` when those loggers
    are enabled for INFO as the queue opens.

    On exit the actor stops; blocked dequeuers and later calls raise
    :class:`QueueClosedError`.

    Errors (``docs/errors.md``): an exception raised in the block comes out
    as itself, never in an exception group. If one of the queue's own tasks
    fails (the scheduler, the store's watch, maintenance), the block is
    cancelled and the failure comes out as a :class:`JobQueueError`: the
    task's own one (a :class:`StoreError`, say), or a
    :class:`QueueClosedError` whose ``__cause__`` is what the task raised.
    """
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be callable, not {type(clock).__name__}")
    max_batch = v.check_int(max_batch, "max_batch", minimum=1)
    max_match_keys = v.check_int(max_match_keys, "max_match_keys", minimum=1)
    if max_match_keys > MAX_MATCH_KEYS:
        raise ValueError(f"max_match_keys must be at most {MAX_MATCH_KEYS}, not {max_match_keys}")
    if maintenance is not None and not isinstance(maintenance, Maintenance):
        raise TypeError(f"maintenance must be a Maintenance, not {type(maintenance).__name__}")
    # imported here: prometheus_client is slow to load, and "import actorq" must not pay for it
    from ._metrics import QueueMetrics, observe, wants_events

    if metrics is not None and not isinstance(metrics, QueueMetrics):
        raise TypeError(f"metrics must be a QueueMetrics, not {type(metrics).__name__}")
    wall = clock or utc_now
    sample = wall()
    if not isinstance(sample, datetime):
        raise TypeError(f"clock must return datetimes, not {type(sample).__name__}")
    if sample.tzinfo is None:
        raise ValueError("clock must return timezone-aware datetimes")
    resolved = resolve_store(store)
    observed = wants_events(metrics)
    if resolved is None:
        state = QueueState(wall=wall, monotonic=trio.current_time, track_events=observed)
    else:
        jobs, workers = await resolved.load()
        schedules = await resolved.load_schedules()
        state = QueueState.restore(
            jobs,
            workers,
            wall=wall,
            monotonic=trio.current_time,
            track_changes=True,
            track_events=observed,
            schedules=schedules,
        )
        del jobs, workers  # the records are in the state now; don't hold them twice
    scheduler = Scheduler(state, resolved, max_batch=max_batch)
    queue = LocalQueue(scheduler, max_match_keys=max_match_keys)
    unobserve: Callable[[], None] | None = None
    policy = ErrorPolicy("the queue")
    try:
        unobserve = observe(state, scheduler, metrics)  # before the actor serves anything
        async with policy, trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            # A store that can lose the right to write (a PostgreSQL leader
            # that was deposed) has a watch() that raises when it does: the
            # queue must then stop serving at once, not at its next commit.
            if resolved is not None:
                nursery.start_soon(resolved.watch)
            if maintenance is not None:
                await nursery.start(Maintainer(queue, maintenance, wall).run)
            try:
                with policy.user():
                    yield queue
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if unobserve is not None:
            unobserve()
        if resolved is not None:
            with trio.CancelScope(shield=True):
                await resolved.close()
