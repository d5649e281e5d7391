"""The in-process queue: a handle that talks to a scheduler actor in the same trio run."""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import attrs
import trio

from .._core import _validate as v
from .._core._errors import DequeueTimeoutError, QueueClosedError
from .._core._json import loads, to_json_text
from .._core._models import (
    DequeuedJob,
    JobInfo,
    JobState,
    JobStatus,
    JobSummary,
    QueueStats,
    WorkerInfo,
)
from .._core._records import Assignment
from .._core._state import QueueState
from .._stores._base import Store
from ._maintenance import Maintainer, Maintenance
from ._metrics import QueueMetrics, observe, wants_events
from ._scheduler import Call, Park, Release, Reply, Scheduler, Withdraw

__all__ = ["LocalQueue", "open_queue", "resolve_store", "utc_now"]

T = TypeVar("T")


def utc_now() -> datetime:
    """The default wall clock: the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def to_dequeued_job(got: Assignment) -> DequeuedJob:
    return DequeuedJob(
        id=got.id,
        token=got.token,
        dependencies=list(got.dependencies),
        type=got.type,
        args=loads(got.args),
        channel=got.channel,
    )


def decode_status(status: JobStatus) -> JobStatus:
    # The core keeps results as JSON text; callers get JSON values.
    return attrs.evolve(status, result=None if status.result is None else loads(status.result))


def decode_info(info: JobInfo) -> JobInfo:
    return attrs.evolve(info, args=loads(info.args))


class LocalQueue:
    """A :class:`actorq.JobQueue` served by a scheduler actor in this trio run.

    Make one with :func:`open_queue`. Any number of tasks may use it at once;
    each call is one message to the actor and one reply.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    @property
    def scheduler(self) -> Scheduler:
        return self._scheduler

    # ------------------------------------------------------------ plumbing

    async def call(self, fn: Callable[[QueueState], T]) -> T:
        """Run ``fn`` on the queue state inside the actor and return its result.

        For extensions; ``fn`` must be synchronous and quick. Whatever it
        changes is committed before this returns. If the caller is cancelled
        before the actor gets to the request, ``fn`` never runs; once it ran,
        cancellation cannot undo it.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        reply = Reply()
        self._scheduler.post_nowait(Call(fn, reply))
        result: T = await reply.wait()
        return result

    def _give_back(self, got: Assignment | None) -> None:
        if got is not None:
            with contextlib.suppress(QueueClosedError):
                self._scheduler.post_nowait(Release(got))

    async def _wait_for_job(
        self,
        job_types: tuple[str, ...],
        channels: tuple[str, ...] | None,
        timeout: float | None,
        worker_id: UUID | None,
    ) -> DequeuedJob:
        if timeout == 0:
            # move_on_after(0) would cancel even a ready reply (trio issue 1626)
            got = await self.call(lambda s: s.dequeue(job_types, channels, worker_id))
            if got is None:
                raise DequeueTimeoutError()
            return to_dequeued_job(got)
        await trio.lowlevel.checkpoint_if_cancelled()
        reply = Reply()
        self._scheduler.post_nowait(Park(job_types, channels, worker_id, reply))
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                return to_dequeued_job(await reply.wait())
        finally:
            if reply.abandoned:
                # Timed out or cancelled before a job arrived: withdraw the wait.
                # A job assigned meanwhile finds the reply abandoned and the
                # actor puts it back itself.
                with contextlib.suppress(QueueClosedError):
                    self._scheduler.post_nowait(Withdraw(reply))
        raise DequeueTimeoutError()

    # ------------------------------------------------------------ the API

    def release(self, job: DequeuedJob) -> None:
        """Give back a job whose hand-over failed (for front ends such as the server).

        Synchronous and non-blocking, so it is safe in ``finally`` blocks and
        under cancellation. The job returns to its place in the ready order and
        its token is void; if the job has moved on since (finished, canceled,
        requeued), nothing happens.
        """
        self._give_back(
            Assignment(job.id, job.token, tuple(job.dependencies), job.type, "null", job.channel)
        )

    async def enqueue(
        self,
        job_type: str,
        args: Any = None,
        dependencies: Iterable[UUID] = (),
        channel: str = "",
    ) -> UUID:
        job_type = v.check_job_type(job_type)
        deps = v.check_uuids(dependencies, "dependencies")
        channel = v.check_channel(channel)
        text = to_json_text(args, "args")
        return await self.call(lambda s: s.enqueue(job_type, text, deps, channel))

    async def enqueue_many(self, jobs: Iterable[tuple[str, Any]], channel: str = "") -> list[UUID]:
        """Enqueue several jobs without dependencies in one request (one commit)."""
        channel = v.check_channel(channel)
        prepared = [(v.check_job_type(t), to_json_text(a, "args")) for t, a in jobs]
        return await self.call(lambda s: [s.enqueue(t, a, (), channel) for t, a in prepared])

    async def dequeue(
        self,
        job_types: Sequence[str],
        channels: Sequence[str] = ("",),
        *,
        timeout: float | None = None,
        worker_id: UUID | None = None,
    ) -> DequeuedJob:
        return await self._wait_for_job(
            v.check_job_types(job_types),
            v.check_channels(channels),
            v.check_timeout(timeout),
            v.check_optional_uuid(worker_id, "worker_id"),
        )

    async def dequeue_any_channel(
        self,
        job_types: Sequence[str],
        *,
        timeout: float | None = None,
        worker_id: UUID | None = None,
    ) -> DequeuedJob:
        return await self._wait_for_job(
            v.check_job_types(job_types),
            None,
            v.check_timeout(timeout),
            v.check_optional_uuid(worker_id, "worker_id"),
        )

    async def dequeue_by_id(self, job_id: UUID, *, worker_id: UUID | None = None) -> DequeuedJob:
        job_id = v.check_uuid(job_id, "job_id")
        worker = v.check_optional_uuid(worker_id, "worker_id")
        return to_dequeued_job(await self.call(lambda s: s.dequeue_by_id(job_id, worker)))

    async def finish_job(self, job_id: UUID, result: Any = None) -> None:
        job_id = v.check_uuid(job_id, "job_id")
        text = to_json_text(result, "result")
        await self.call(lambda s: s.finish_job(job_id, text))

    async def requeue_or_finish_job(
        self, job_id: UUID, max_retries: int, result: Any = None
    ) -> bool:
        job_id = v.check_uuid(job_id, "job_id")
        retries = v.check_max_retries(max_retries)
        text = to_json_text(result, "result")
        return await self.call(lambda s: s.requeue_or_finish_job(job_id, retries, text))

    async def update_job_result(self, job_id: UUID, result: Any) -> None:
        job_id = v.check_uuid(job_id, "job_id")
        text = to_json_text(result, "result")
        await self.call(lambda s: s.update_job_result(job_id, text))

    async def fail_job(self, job_id: UUID, result: Any) -> None:
        job_id = v.check_uuid(job_id, "job_id")
        text = to_json_text(result, "result")
        await self.call(lambda s: s.fail_job(job_id, text))

    async def cancel_job(self, job_id: UUID) -> None:
        job_id = v.check_uuid(job_id, "job_id")
        await self.call(lambda s: s.cancel_job(job_id))

    async def job_status(self, job_id: UUID) -> JobStatus:
        job_id = v.check_uuid(job_id, "job_id")
        return decode_status(await self.call(lambda s: s.job_status(job_id)))

    async def job(self, job_id: UUID) -> JobInfo:
        job_id = v.check_uuid(job_id, "job_id")
        return decode_info(await self.call(lambda s: s.job(job_id)))

    async def id_from_token(self, token: UUID) -> UUID:
        token = v.check_uuid(token, "token")
        return await self.call(lambda s: s.id_from_token(token))

    async def heartbeats(self, older_than: float) -> list[UUID]:
        seconds = v.check_seconds(older_than, "older_than")
        return await self.call(lambda s: s.heartbeats(seconds))

    async def refresh_heartbeat(self, token: UUID) -> None:
        token = v.check_uuid(token, "token")
        await self.call(lambda s: s.refresh_heartbeat(token))

    async def all_root_job_ids(self) -> list[UUID]:
        return await self.call(QueueState.all_root_job_ids)

    async def delete_job(self, job_id: UUID) -> None:
        job_id = v.check_uuid(job_id, "job_id")
        await self.call(lambda s: s.delete_job(job_id))

    async def insert_worker(self, channel: str, arch: str) -> UUID:
        channel = v.check_channel(channel)
        arch = v.check_str(arch, "arch")
        return await self.call(lambda s: s.insert_worker(channel, arch))

    async def update_worker_status(self, worker_id: UUID) -> None:
        worker_id = v.check_uuid(worker_id, "worker_id")
        await self.call(lambda s: s.update_worker_status(worker_id))

    async def workers(self, older_than: float = 0.0) -> list[WorkerInfo]:
        seconds = v.check_seconds(older_than, "older_than")
        return await self.call(functools.partial(QueueState.workers, older_than=seconds))

    async def delete_worker(self, worker_id: UUID) -> None:
        worker_id = v.check_uuid(worker_id, "worker_id")
        await self.call(lambda s: s.delete_worker(worker_id))

    async def list_jobs(
        self,
        state: JobState | None = None,
        job_type: str | None = None,
        channel: str | None = None,
        limit: int | None = None,
    ) -> list[JobSummary]:
        wanted = v.check_state(state)
        job_type = None if job_type is None else v.check_str(job_type, "job_type")
        channel = None if channel is None else v.check_channel(channel)
        limit = v.check_limit(limit)
        return await self.call(lambda s: s.list_jobs(wanted, job_type, channel, limit))

    async def stats(self) -> QueueStats:
        return await self.call(QueueState.stats)


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
    """
    wall = clock or utc_now
    sample = wall()
    if not isinstance(sample, datetime) or sample.tzinfo is None:
        raise ValueError("clock must return timezone-aware datetimes")
    resolved = resolve_store(store)
    observed = wants_events(metrics)
    if resolved is None:
        state = QueueState(wall=wall, monotonic=trio.current_time, track_events=observed)
    else:
        jobs, workers = await resolved.load()
        state = QueueState.restore(
            jobs,
            workers,
            wall=wall,
            monotonic=trio.current_time,
            track_changes=True,
            track_events=observed,
        )
        del jobs, workers  # the records are in the state now; don't hold them twice
    scheduler = Scheduler(state, resolved, max_batch=max_batch)
    queue = LocalQueue(scheduler)
    unobserve: Callable[[], None] | None = None
    try:
        unobserve = observe(state, scheduler, metrics)  # before the actor serves anything
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            # A store that can lose the right to write (a PostgreSQL leader
            # that was deposed) has a watch() that raises when it does: the
            # queue must then stop serving at once, not at its next commit.
            watch = getattr(resolved, "watch", None)
            if watch is not None:
                nursery.start_soon(watch)
            if maintenance is not None:
                await nursery.start(Maintainer(queue, maintenance, wall).run)
            try:
                yield queue
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if unobserve is not None:
            unobserve()
        if resolved is not None:
            with trio.CancelScope(shield=True):
                await resolved.close()
