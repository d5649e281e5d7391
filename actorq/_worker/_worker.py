"""The worker runtime: run your handlers for the jobs of any :class:`actorq.JobQueue`.

A :class:`Worker` registers itself with the queue, takes up to
``concurrency`` jobs at once, runs each through the handler registered for its
type, keeps the heartbeats of its running jobs fresh (one batched refresh per
interval for all of them), and finishes each job with the handler's return
value, or with a structured error result when the handler raises.

Where the queue offers streams (:class:`~actorq._core._streaming.StreamingQueue`:
the in-process queue and the remote client do), the worker opens one with
its concurrency as the credit: jobs arrive as they become ready, finishes
travel batched and return the credit, and a cancel reaches a running handler
as soon as the queue knows. Any other :class:`~actorq.JobQueue` is served
with dequeues, one per free slot.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import signal
import socket
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from .._core import _validate as v
from .._core._errors import (
    ActiveJobsError,
    CanceledError,
    DequeueTimeoutError,
    JobQueueError,
    NotExistError,
    QueueClosedError,
    WorkerNotExistError,
)
from .._core._models import DequeuedJob
from .._core._protocol import JobQueue
from .._core._streaming import JobStream, StreamingQueue
from .._core._unwrap import ErrorPolicy
from ._backoff import Backoff
from ._handlers import Handler, make_handler
from ._job import Job, error_result, message_of, shutdown_result, timeout_result, type_name

if TYPE_CHECKING:
    from uuid import UUID

__all__ = ["Job", "Worker", "error_result"]

log = logging.getLogger("actorq.worker")

F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class _Policy:
    """How a handler's attempts are bounded and retried."""

    retries: int
    backoff: Backoff
    timeout: float | None


@attrs.define(eq=False)
class _Run:
    """One running job: its handler's cancel scope and how it ended."""

    job: Job
    got: DequeuedJob
    stream: JobStream | None  # the stream it came from; None: dequeued
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    result: Any = None
    has_result: bool = False
    failed: bool = False  # the handler raised: the finish settles a failure
    # why the handler was cancelled: "canceled" (job canceled), "lost" (token
    # void), "shutdown" (grace period over); None while it runs on
    reason: str | None = None
    settled: bool = False
    credited: bool = False  # its slot went back to the stream (with its finish)
    ended: trio.Event | None = None  # made by a later run of the job that waits for this one


def _check_queue(queue: object) -> JobQueue:
    if not isinstance(queue, JobQueue):
        raise TypeError(f"queue must be a JobQueue, not {type(queue).__name__}")
    return queue


class Worker:
    """Runs registered handlers for the jobs of a :class:`~actorq.JobQueue`.

    ``channels`` are the channels it takes jobs from (``None``: every channel);
    ``concurrency`` caps the jobs it runs at once. While a handler runs, its
    job's heartbeat is refreshed every ``heartbeat_interval`` seconds and the
    worker's status every ``status_interval`` seconds. ``grace`` is the default
    grace period of :meth:`shutdown`; ``max_retries`` bounds the requeues of a
    job interrupted by shutdown (past it, the job finishes with an error
    result). ``name`` (for logs) and ``arch`` (registered with the queue)
    default to this host and process. An option of the wrong type raises
    :class:`TypeError`, a wrong value :class:`ValueError`; intervals and
    timeouts must be > 0 seconds, ``grace`` >= 0.

    Register handlers with :meth:`handler` before :meth:`run`::

        worker = actorq.Worker(queue, concurrency=4)

        @worker.handler("build")
        async def build(job: actorq.Job, args: BuildArgs) -> dict[str, str]:
            ...

    A handler takes the :class:`Job` and optionally its args: annotate the
    second parameter with a class and the args are structured into it through
    :data:`actorq.converter` (invalid args finish the job with an error
    result). Async handlers run in the worker's trio run; sync ones run in a
    thread (:func:`trio.to_thread.run_sync`).
    """

    def __init__(
        self,
        queue: JobQueue | None = None,
        channels: Sequence[str] | None = ("",),
        *,
        concurrency: int = 8,
        heartbeat_interval: float = 15.0,
        status_interval: float = 60.0,
        grace: float = 30.0,
        max_retries: int = 2,
        poll_timeout: float | None = None,
        cleanup_timeout: float = 10.0,
        name: str | None = None,
        arch: str | None = None,
    ) -> None:
        self._queue: JobQueue | None = None if queue is None else _check_queue(queue)
        self.channels: tuple[str, ...] | None = (
            None
            if channels is None
            else tuple(
                v.check_channel(c)
                for c in v.check_strings(channels, "channels", allow_empty_items=True)
            )
        )
        self.concurrency = v.check_int(concurrency, "concurrency", minimum=1)
        self.heartbeat_interval = v.check_positive_seconds(heartbeat_interval, "heartbeat_interval")
        self.status_interval = v.check_positive_seconds(status_interval, "status_interval")
        self.grace = v.check_seconds(grace, "grace")
        self.max_retries = v.check_max_retries(max_retries)
        self.poll_timeout = (
            None if poll_timeout is None else v.check_positive_seconds(poll_timeout, "poll_timeout")
        )
        self.cleanup_timeout = v.check_positive_seconds(cleanup_timeout, "cleanup_timeout")
        name = v.check_optional_str(name, "name")
        arch = v.check_optional_str(arch, "arch")
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.arch = arch or platform.machine() or "unknown"
        self._handlers: dict[str, Handler] = {}
        self._policies: dict[str, _Policy] = {}
        self._id: UUID | None = None
        self._active: dict[UUID, _Run] = {}
        self._started = False
        self._stopping = False
        self._deadline = math.inf
        self._dequeue_scope: trio.CancelScope | None = None
        self._grace_scope: trio.CancelScope | None = None
        self._idle: trio.Event | None = None
        self._slots = trio.Semaphore(concurrency)
        self._stream: JobStream | None = None
        self._streams: list[JobStream] = []  # every stream opened, to settle before leaving
        self._by_token: dict[UUID, _Run] = {}
        self._threads = trio.CapacityLimiter(concurrency)
        self._crashed = False
        self._registering = trio.Lock()
        self._errors = ErrorPolicy("the worker")

    @property
    def queue(self) -> JobQueue:
        """The queue this worker takes jobs from (given to the constructor or to :meth:`run`)."""
        if self._queue is None:
            raise RuntimeError("this worker has no queue yet: pass one to run(queue=...)")
        return self._queue

    # ------------------------------------------------------------ registry

    def handler(
        self,
        job_type: str,
        *,
        retries: int = 0,
        backoff: Backoff | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """Decorator: register the decorated function as the handler of ``job_type``.

        See :meth:`add_handler` for ``retries``, ``backoff`` and ``timeout``.
        """

        def register(fn: F) -> F:
            self.add_handler(job_type, fn, retries=retries, backoff=backoff, timeout=timeout)
            return fn

        return register

    def add_handler(
        self,
        job_type: str,
        fn: Callable[..., Any],
        *,
        retries: int = 0,
        backoff: Backoff | None = None,
        timeout: float | None = None,
    ) -> None:
        """Register ``fn`` for ``job_type``.

        An attempt fails when the handler raises or runs past ``timeout``
        seconds (it is then cancelled, and its result is a ``HandlerTimeout``
        error). A failed attempt is retried up to ``retries`` times: the job
        is requeued, not ready again before ``backoff.delay(n)`` seconds
        (:class:`Backoff`'s defaults: 1 s doubling up to 5 minutes, jittered),
        and its handler sees ``job.retries == n`` (earlier attempts). The
        last failure settles the job as failed.

        Raises :class:`TypeError` for a signature other than ``(job)`` or
        ``(job, args)`` or a bad option, :class:`ValueError` if ``job_type``
        is empty or taken or an option is out of range, and
        :class:`RuntimeError` once the worker has started.
        """
        retries = v.check_int(retries, "retries", minimum=0)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be an actorq.Backoff, not {type(backoff).__name__}")
        limit = None if timeout is None else v.check_positive_seconds(timeout, "timeout")
        job_type = v.check_job_type(job_type)
        if self._started:
            raise RuntimeError("register handlers before the worker runs")
        if job_type in self._handlers:
            raise ValueError(f"a handler for {job_type!r} is already registered")
        self._handlers[job_type] = make_handler(job_type, fn)
        self._policies[job_type] = _Policy(retries, backoff or Backoff(), limit)

    @property
    def job_types(self) -> list[str]:
        """The job types this worker has handlers for."""
        return list(self._handlers)

    @property
    def id(self) -> UUID | None:
        """The worker's id in the queue while it is registered, else ``None``."""
        return self._id

    @property
    def running_jobs(self) -> list[UUID]:
        """Ids of the jobs whose handlers run now."""
        return list(self._active)

    # ------------------------------------------------------------ lifecycle

    def shutdown(self, grace: float | None = None) -> None:
        """Stop gracefully; :meth:`run` returns once done. Synchronous, never blocks.

        The worker stops dequeuing at once; running handlers get ``grace``
        seconds (default: the worker's ``grace``) to finish, then they are
        cancelled and their jobs requeued (:meth:`JobQueue.requeue_or_finish_job`).
        Calling it again can shorten the grace period, never lengthen it;
        ``grace=0`` cancels running handlers now. Must be called from the
        worker's trio thread. Before :meth:`run`, it makes ``run`` return at once.
        """
        grace = self.grace if grace is None else v.check_seconds(grace, "grace")
        self._stopping = True
        try:
            deadline = trio.current_time() + grace
        except RuntimeError:  # outside trio: the worker is not running
            return
        self._deadline = min(self._deadline, deadline)
        if self._grace_scope is not None:
            self._grace_scope.deadline = self._deadline
        if self._dequeue_scope is not None:
            self._dequeue_scope.cancel()

    async def run(
        self,
        *,
        queue: JobQueue | None = None,
        handle_signals: bool = False,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Register, run jobs until :meth:`shutdown`, then deregister and return.

        ``queue`` is the queue to work for, if none was given to the
        constructor: a worker can be defined at module level, its handlers
        registered on import, and bound to a queue only when it runs (this is
        how ``actorq worker module:worker`` runs it). Giving a queue here when
        the constructor had a different one raises :class:`ValueError`.

        With ``handle_signals=True`` (main thread only), SIGTERM or SIGINT calls
        :meth:`shutdown`; a second one cancels running handlers at once. With
        ``nursery.start(worker.run)``, startup returns once the worker is
        registered.

        A handler's :class:`Exception` never stops the worker: it becomes the
        job's error result (:func:`error_result`). A remote queue that
        reconnects (:func:`actorq.connect`) keeps the worker running through a
        lost connection: its stream subscribes again, running handlers go on
        and their finishes are delivered after the reconnect, and a
        registration the new server does not know is made again. If the queue
        closes (or gives up reconnecting), running handlers are cancelled and
        ``run`` raises :class:`QueueClosedError`.

        Errors (``docs/errors.md``) never come out in an exception group. The
        user's code here is the handlers: a :class:`BaseException` a handler
        raises that is not an :class:`Exception` (``sys.exit()``, say) stops
        the worker and comes out as itself. Everything else is the worker's
        own: a :class:`JobQueueError` its queue calls raise comes out as
        itself, any other failure as a :class:`QueueClosedError` whose
        ``__cause__`` is the original. If ``run`` itself is cancelled,
        running handlers are cancelled and their jobs requeued before the
        cancellation propagates. Either way the worker deregisters itself, each
        cleanup call bounded by ``cleanup_timeout``. A worker runs once.
        """
        if self._started:
            raise RuntimeError("a Worker runs only once; make a new one")
        if queue is not None:
            queue = _check_queue(queue)
            if self._queue is not None and self._queue is not queue:
                raise ValueError("this worker already has a different queue")
            self._queue = queue
        if self._queue is None:
            raise RuntimeError("this worker has no queue: pass one to run(queue=...)")
        if not self._handlers:
            raise RuntimeError("register at least one handler before running the worker")
        self._started = True
        await self._register()
        try:
            async with self._errors, trio.open_nursery() as services:
                if handle_signals:
                    await services.start(self._watch_signals)
                services.start_soon(self._report_status)
                services.start_soon(self._refresh_heartbeats)
                task_status.started()
                await self._run_jobs()
                services.cancel_scope.cancel()
        finally:
            if not self._crashed:
                with trio.move_on_after(self.cleanup_timeout, shield=True):
                    for stream in self._streams:
                        # finishes still on their way must land before the worker
                        # leaves, or it would still hold their jobs
                        await stream.wait_settled()
                    await self._deregister()

    async def _run_jobs(self) -> None:
        async with trio.open_nursery() as jobs:
            if not isinstance(self.queue, StreamingQueue) or not await self._stream_loop(
                jobs, self.queue
            ):
                await self._dequeue_loop(jobs)
            # shutdown: no more jobs taken; give running handlers their grace period
            jobs.start_soon(self._enforce_grace)

    async def _enforce_grace(self) -> None:
        self._idle = trio.Event()
        if not self._active:
            return
        with trio.CancelScope(deadline=self._deadline) as self._grace_scope:
            await self._idle.wait()
            return
        for run in list(self._active.values()):
            if run.reason is None:
                run.reason = "shutdown"
            run.job._cancel_requested = True
            run.scope.cancel()

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self._stopping:
                    log.info(
                        "worker %s: %s, shutting down (grace %s s)",
                        self.name,
                        name,
                        self.grace,
                        extra=self._extra(event="worker_stopping", signal=name),
                    )
                    self.shutdown()
                else:
                    log.warning(
                        "worker %s: %s again, cancelling running jobs",
                        self.name,
                        name,
                        extra=self._extra(event="worker_stopping", signal=name),
                    )
                    self.shutdown(grace=0)

    # ------------------------------------------------------------ registry calls

    async def _register(self) -> None:
        channels = self.channels or ("",)
        # every channel it serves, so that workers() shows them all
        self._id = await self.queue.insert_worker(channels[0], self.arch, channels=channels[1:])
        log.info(
            "worker %s registered as %s for %s",
            self.name,
            self._id,
            ", ".join(self._handlers),
            extra=self._extra(event="worker_registered"),
        )

    async def _reregister(self, lost: UUID | None) -> None:
        # The status loop and the dequeue loop can both find the registration
        # gone; only the first to get here registers again.
        async with self._registering:
            if self._id == lost:
                await self._register()

    async def _deregister(self) -> None:
        worker_id, self._id = self._id, None
        if worker_id is None:
            return
        try:
            await self.queue.delete_worker(worker_id)
        except WorkerNotExistError:
            pass
        except ActiveJobsError:
            log.warning(
                "worker %s could not deregister: it still holds jobs",
                self.name,
                extra=self._extra(event="worker_deregister_failed", worker_id=str(worker_id)),
            )
            return
        except JobQueueError as exc:
            log.warning("worker %s could not deregister: %s", self.name, exc)
            return
        log.info(
            "worker %s deregistered",
            self.name,
            extra=self._extra(event="worker_deregistered", worker_id=str(worker_id)),
        )

    async def _report_status(self) -> None:
        while True:
            await trio.sleep(self.status_interval)
            worker_id = self._id
            if worker_id is None:
                continue
            try:
                await self.queue.update_worker_status(worker_id)
            except WorkerNotExistError:
                # removed as stale (a long pause, say): come back under a new id
                await self._reregister(worker_id)
            except QueueClosedError:
                return
            except JobQueueError as exc:
                log.warning("worker %s: status update failed: %s", self.name, exc)

    # ------------------------------------------------------------ dequeuing

    async def _stream_loop(self, jobs: trio.Nursery, queue: StreamingQueue) -> bool:
        """Take jobs from streams until shutdown; False if the queue offers none after all
        (a server that speaks only protocol 1)."""
        types = list(self._handlers)
        start = jobs.start_soon
        while not self._stopping:
            worker_id = self._id
            with trio.CancelScope() as self._dequeue_scope:
                if self._stopping:
                    break
                try:
                    async with queue.open_stream(
                        types,
                        () if self.channels is None else self.channels,
                        any_channel=self.channels is None,
                        worker_id=worker_id,
                        # slots still held by runs of an earlier stream are not free
                        credit=max(1, self.concurrency - len(self._active)),
                        on_revoked=self._revoked,
                        on_refused=self._refused,
                    ) as stream:
                        self._stream = stream
                        self._streams.append(stream)
                        consume = getattr(stream, "consume", None)
                        if consume is not None:
                            # each job's task starts in the task that delivers
                            # the push: no wake-up of this one per job
                            await consume(partial(self._start_run, start, stream))
                        else:
                            await self._receive_loop(start, stream)
                except WorkerNotExistError:
                    await self._reregister(worker_id)
                except NotImplementedError:
                    self._dequeue_scope = None
                    return False
                except QueueClosedError:
                    raise
                except JobQueueError as exc:
                    log.warning("worker %s: job stream failed: %s", self.name, exc)
                    await trio.sleep(1)
                finally:
                    self._stream = None
        self._dequeue_scope = None
        return True

    async def _receive_loop(self, start: Callable[..., None], stream: JobStream) -> None:
        # for a stream that offers no consume(): a job at a time, as received
        run_job = self._run_job
        receive, receive_nowait = stream.receive, stream.receive_nowait
        while True:
            start(run_job, await receive(), stream)
            while True:  # whatever else arrived in the same push
                try:
                    got = receive_nowait()
                except trio.WouldBlock:
                    break
                start(run_job, got, stream)

    def _start_run(
        self,
        start: Callable[..., None],
        stream: JobStream,
        got: DequeuedJob,
    ) -> bool:
        if self._stopping:  # asked to stop: the job waits, and goes back with the stream
            return False
        try:
            start(self._run_job, got, stream)
        except RuntimeError:  # the jobs' nursery is closed: the worker is stopping
            return False
        return True

    def _revoked(self, job_id: UUID, token: UUID, canceled: bool) -> None:
        # The queue says a run of ours ended: its handler's work is wasted.
        run = self._by_token.get(token)
        if run is None or run.reason is not None or run.has_result:
            return
        run.reason = "canceled" if canceled else "lost"
        run.job._cancel_requested = True
        run.scope.cancel()

    def _refused(self, job_id: UUID, error: JobQueueError) -> None:
        log.warning(
            "job %s: the queue refused its finish (%s): it was requeued, reaped or "
            "canceled meanwhile, and the result is dropped",
            job_id,
            error,
            extra=self._extra(event="job_finish_refused", job_id=str(job_id)),
        )

    async def _dequeue_loop(self, jobs: trio.Nursery) -> None:
        types = list(self._handlers)
        while not self._stopping:
            with trio.CancelScope() as self._dequeue_scope:
                if self._stopping:  # shutdown() ran while the scope was being replaced
                    break
                await self._slots.acquire()
                try:
                    got = await self._dequeue(types)
                except BaseException:
                    self._slots.release()
                    raise
                if got is None:
                    self._slots.release()
                    continue
                jobs.start_soon(self._run_job, got, None)
        self._dequeue_scope = None

    async def _dequeue(self, types: list[str]) -> DequeuedJob | None:
        worker_id = self._id
        try:
            if self.channels is None:
                return await self.queue.dequeue_any_channel(
                    types, timeout=self.poll_timeout, worker_id=worker_id
                )
            return await self.queue.dequeue(
                types, self.channels, timeout=self.poll_timeout, worker_id=worker_id
            )
        except DequeueTimeoutError:
            return None
        except WorkerNotExistError:
            await self._reregister(worker_id)
            return None
        except QueueClosedError:
            raise
        except JobQueueError as exc:
            log.warning("worker %s: dequeue failed: %s", self.name, exc)
            await trio.sleep(1)
            return None

    # ------------------------------------------------------------ running a job

    async def _run_job(self, got: DequeuedJob, stream: JobStream | None) -> None:
        job = Job(
            id=got.id,
            token=got.token,
            type=got.type,
            args=got.args,
            channel=got.channel,
            dependencies=list(got.dependencies),
            worker_id=self._id,
            queue=self.queue,
        )
        run = _Run(job, got, stream)
        earlier = self._active.get(job.id)
        self._active[job.id] = run
        self._by_token[job.token] = run
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "job %s (%s) started", job.id, job.type, extra=self._job_extra(job, "started")
            )
        try:
            if earlier is not None:
                # Handed out again (reaped, released) while its earlier run,
                # revoked, still winds down here: that handler ends first.
                if earlier.ended is None:
                    earlier.ended = trio.Event()
                await earlier.ended.wait()
            await self._execute(run)
            if not self._crashed:
                await self._settle(run)
        finally:
            try:
                if not run.settled and not self._crashed:
                    # cancelled from outside (or settling was): put the job in order
                    # before going, shielded but bounded, since the queue may be gone
                    with trio.move_on_after(self.cleanup_timeout, shield=True):
                        await self._settle(run)
            finally:
                # A reaped or released job may already run again here, under
                # a new token, while this run winds down: its entry stays.
                if self._active.get(job.id) is run:
                    del self._active[job.id]
                del self._by_token[job.token]
                if run.ended is not None:
                    run.ended.set()
                if stream is None:
                    self._slots.release()
                elif not run.credited:
                    self._give_credit(run)
                if not self._active and self._idle is not None:
                    self._idle.set()

    async def _execute(self, run: _Run) -> None:
        policy = self._policies[run.job.type]
        with run.scope:
            try:
                if policy.retries:
                    run.job.retries = (await self.queue.job_status(run.job.id)).retries
                if policy.timeout is None:
                    run.result = await self._handlers[run.job.type](run.job, self._threads)
                else:
                    with trio.move_on_after(policy.timeout) as limit:
                        run.result = await self._handlers[run.job.type](run.job, self._threads)
                    if limit.cancelled_caught:
                        run.result = timeout_result(policy.timeout)
                        run.failed = True
                        log.warning(
                            "job %s (%s) ran past its time limit of %g s",
                            run.job.id,
                            run.job.type,
                            policy.timeout,
                            extra=self._job_extra(run.job, "handler_timeout"),
                        )
            except Exception as exc:
                run.result = error_result(exc)
                run.failed = True
                log.warning(
                    "job %s (%s) failed: %s: %s",
                    run.job.id,
                    run.job.type,
                    type_name(exc),
                    message_of(exc),
                    extra=self._job_extra(run.job, "handler_failed"),
                )
            except BaseException as exc:
                if not isinstance(exc, trio.Cancelled):
                    # this stops the worker: take no more jobs, not even
                    # the one being requeued now
                    self._errors.record_user(exc)
                    self._stopping = True
                    if self._dequeue_scope is not None:
                        self._dequeue_scope.cancel()
                raise
            run.has_result = True

    async def _refresh_heartbeats(self) -> None:
        # One refresh for every running job per interval. It is also how the
        # worker learns, on a queue that does not push it, that a job was
        # canceled or its token voided: then the handler's work is wasted.
        many = getattr(self.queue, "refresh_heartbeats", None)
        while True:
            await trio.sleep(self.heartbeat_interval)
            runs = [run for run in self._by_token.values() if run.reason is None]
            if not runs:
                continue
            try:
                if many is not None:
                    gone = set(await many([run.job.token for run in runs]))
                else:
                    gone = set()
                    for run in runs:
                        try:
                            await self.queue.refresh_heartbeat(run.job.token)
                        except (CanceledError, NotExistError):
                            gone.add(run.job.token)
            except QueueClosedError:
                return
            except JobQueueError as exc:
                log.warning("worker %s: heartbeat refresh failed: %s", self.name, exc)
                continue
            for run in runs:
                if run.job.token in gone and run.reason is None and not run.has_result:
                    run.reason = await self._why_gone(run)
                    run.job._cancel_requested = True
                    run.scope.cancel()

    async def _why_gone(self, run: _Run) -> str:
        try:
            await self.queue.refresh_heartbeat(run.job.token)
        except CanceledError:
            return "canceled"
        except JobQueueError:
            return "lost"
        return "lost"  # running again under the same token cannot happen; be safe

    async def _settle(self, run: _Run) -> None:
        """Tell the queue how the run ended: finished, requeued, or nothing to say."""
        job = run.job
        if run.reason == "canceled":
            log.info(
                "job %s (%s) was canceled; its handler was cancelled",
                job.id,
                job.type,
                extra=self._job_extra(job, "canceled"),
            )
        elif run.reason == "lost":
            log.warning(
                "job %s (%s) is no longer ours (its heartbeat lapsed); result dropped",
                job.id,
                job.type,
                extra=self._job_extra(job, "lost"),
            )
        elif run.has_result and run.failed and self._policies[job.type].retries:
            await self._retry(job, run.result)
        elif run.has_result:
            await self._finish(job, run.result, run, failed=run.failed)
        else:
            await self._requeue(job)
        run.settled = True

    def _give_credit(self, run: _Run) -> None:
        run.credited = True
        current = self._stream
        if current is not None:
            # the slot is free again, for whichever stream is open now
            current.give_credit()

    async def _finish(
        self, job: Job, result: Any, run: _Run | None = None, *, failed: bool = False
    ) -> None:
        stream = None if run is None else run.stream
        if stream is not None:
            assert run is not None
            try:
                # a finish returns the slot to its own stream; one from an
                # earlier stream leaves run.credited False, for the open one
                try:
                    stream.finish(run.got, result, failed=failed)
                except TypeError as exc:  # the result is not JSON
                    stream.finish(run.got, error_result(exc), failed=True)
                run.credited = stream is self._stream
            except JobQueueError as exc:
                log.warning("job %s (%s): could not finish: %s", job.id, job.type, exc)
                return
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "job %s (%s) finished", job.id, job.type, extra=self._job_extra(job, "finished")
                )
            return
        try:
            # a token voided since (job reaped, requeued, handed to another
            # worker) means the job is no longer ours to finish
            await self.queue.id_from_token(job.token)
            try:
                await self.queue.finish_job(job.id, result, failed=failed)
            except TypeError as exc:  # the result is not JSON
                await self.queue.finish_job(job.id, error_result(exc), failed=True)
        except JobQueueError as exc:
            log.warning(
                "job %s (%s): could not finish: %s",
                job.id,
                job.type,
                exc,
                extra=self._job_extra(job, "finish_failed"),
            )
            return
        log.debug("job %s (%s) finished", job.id, job.type, extra=self._job_extra(job, "finished"))

    async def _retry(self, job: Job, result: Any) -> None:
        """A failed attempt: requeue the job after its backoff, or fail it for good."""
        policy = self._policies[job.type]
        try:
            # a token voided since means the job is no longer ours to retry
            await self.queue.id_from_token(job.token)
            requeued = await self.queue.requeue_or_finish_job(
                job.id,
                policy.retries,
                result,
                failed=True,
                delay=policy.backoff.delay(job.retries),
            )
        except (JobQueueError, TypeError) as exc:
            log.warning(
                "job %s (%s): could not retry: %s",
                job.id,
                job.type,
                exc,
                extra=self._job_extra(job, "retry_failed"),
            )
            return
        log.info(
            "job %s (%s) attempt %d failed: %s",
            job.id,
            job.type,
            job.retries + 1,
            "retried after its backoff" if requeued else "out of retries, failed",
            extra=self._job_extra(job, "retried" if requeued else "failed"),
        )

    async def _requeue(self, job: Job) -> None:
        try:
            requeued = await self.queue.requeue_or_finish_job(
                job.id, self.max_retries, shutdown_result(self.max_retries), failed=True
            )
        except JobQueueError as exc:
            log.warning(
                "job %s (%s): could not requeue: %s",
                job.id,
                job.type,
                exc,
                extra=self._job_extra(job, "requeue_failed"),
            )
            return
        log.info(
            "job %s (%s) interrupted by shutdown: %s",
            job.id,
            job.type,
            "requeued" if requeued else "failed: out of retries",
            extra=self._job_extra(job, "requeued" if requeued else "failed"),
        )

    # ------------------------------------------------------------ testing aid

    def _crash(self) -> None:
        """Stop as if the process died: no more calls to the queue, nothing cleaned up.

        For :mod:`actorq.testing`: the queue sees a worker that fell silent, so
        the reaper's handling of lost jobs can be tested.
        """
        self._crashed = True
        self._stopping = True
        self._deadline = -math.inf
        if self._dequeue_scope is not None:
            self._dequeue_scope.cancel()
        if self._grace_scope is not None:
            self._grace_scope.deadline = -math.inf
        for run in self._active.values():
            run.reason = run.reason or "crashed"
            run.settled = True
            run.scope.cancel()

    # ------------------------------------------------------------ logging

    def _extra(self, **fields: Any) -> dict[str, Any]:
        return {
            "worker": self.name,
            "worker_id": None if self._id is None else str(self._id),
            **fields,
        }

    def _job_extra(self, job: Job, event: str) -> dict[str, Any]:
        return self._extra(
            event=f"job_{event}", job_id=str(job.id), job_type=job.type, channel=job.channel
        )
