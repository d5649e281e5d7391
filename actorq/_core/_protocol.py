"""The ``JobQueue`` protocol: what every actorq queue offers, local or remote."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime
    from uuid import UUID

    from ._models import (
        DequeuedJob,
        JobInfo,
        JobState,
        JobStatus,
        JobSummary,
        NewJob,
        QueueStats,
        ScheduleInfo,
        WorkerInfo,
    )

__all__ = ["JobQueue"]


@runtime_checkable
class JobQueue(Protocol):
    """A job queue with dependencies, channels, tokens and heartbeats.

    Every method is async. Queue errors are subclasses of
    :class:`actorq.JobQueueError`; bad arguments raise :class:`TypeError` or
    :class:`ValueError` before anything changes. Arguments and results are
    JSON values (or attrs classes / dataclasses, unstructured through
    :data:`actorq.converter`); anything else raises :class:`TypeError`.
    """

    async def enqueue(
        self,
        job_type: str,
        args: Any = None,
        dependencies: Iterable[UUID] = (),
        channel: str = "",
        *,
        cancel_on_failed_dependency: bool = False,
        priority: int = 0,
        delay: float | None = None,
        not_before: datetime | None = None,
        unique_key: str | None = None,
    ) -> UUID:
        """Add a job. It is handed out once every dependency has settled (finished
        or failed: a dependent can read its dependency's error result).

        Among the ready jobs a dequeue can take, the highest ``priority`` goes
        first, oldest first within a priority (a requeued job keeps both). The
        job is not ready before ``delay`` seconds (the queue's monotonic
        clock, trio's) or before ``not_before`` (an aware datetime, the
        queue's wall clock) have passed; giving both is a :class:`ValueError`.
        With ``unique_key``, while a job of the same channel and key is
        pending or running, that job's id is returned and nothing changes.

        With ``cancel_on_failed_dependency``, a dependency that settles as a
        failure cancels the job (and its pending dependents) instead, and
        :attr:`JobStatus.failed_dependency` names that dependency; a job
        enqueued after a dependency already failed is enqueued canceled.
        Raises :class:`NotExistError` (and enqueues nothing) if a dependency
        does not exist.
        """
        ...

    async def enqueue_many(
        self, jobs: Iterable[NewJob | tuple[str, Any]], channel: str = ""
    ) -> list[UUID]:
        """Add several jobs in one step, all of them or none; return their ids in order.

        Each job is a :class:`NewJob`, or a ``(job_type, args)`` pair enqueued
        in ``channel`` without dependencies. A :class:`NewJob` may depend on
        existing jobs (by id) and on earlier jobs of the same call (by index),
        so a whole dependency graph is enqueued at once. An index that does not
        name an earlier job raises :class:`ValueError` and an unknown id
        :class:`NotExistError`; in either case, and for any bad argument,
        nothing is enqueued.
        """
        ...

    async def dequeue(
        self,
        job_types: Sequence[str],
        channels: Sequence[str] = ("",),
        *,
        timeout: float | None = None,
        worker_id: UUID | None = None,
    ) -> DequeuedJob:
        """Take the oldest ready job whose type and channel match, waiting for one.

        ``timeout`` seconds without a matching job raise
        :class:`DequeueTimeoutError`; ``timeout=0`` only looks at what is ready
        now. If the caller is cancelled, :class:`trio.Cancelled` propagates and
        any job that was already assigned to it goes back to its place, its
        token void.
        """
        ...

    async def dequeue_any_channel(
        self,
        job_types: Sequence[str],
        *,
        timeout: float | None = None,
        worker_id: UUID | None = None,
    ) -> DequeuedJob:
        """Like :meth:`dequeue`, matching jobs of every channel."""
        ...

    async def dequeue_by_id(self, job_id: UUID, *, worker_id: UUID | None = None) -> DequeuedJob:
        """Take one particular job now. :class:`NotPendingError` unless it is ready."""
        ...

    async def finish_job(self, job_id: UUID, result: Any = None, *, failed: bool = False) -> None:
        """Finish a running job with ``result``.

        ``failed=True`` settles it as a failure (:attr:`JobState.FAILED`); the
        state is never guessed from the result's shape.
        """
        ...

    async def requeue_or_finish_job(
        self,
        job_id: UUID,
        max_retries: int,
        result: Any = None,
        *,
        failed: bool = False,
        delay: float | None = None,
    ) -> bool:
        """Put a running job back (True) unless it has been retried ``max_retries`` times,
        in which case finish it with ``result`` (False), as a failure if ``failed``.

        Requeued, it keeps its place and priority; with ``delay`` it is not
        ready again for that many seconds (a retry's backoff).
        """
        ...

    async def update_job_result(self, job_id: UUID, result: Any) -> None:
        """Store a result for a running job without finishing it."""
        ...

    async def fail_job(self, job_id: UUID, result: Any) -> None:
        """Settle a job that never started as a failure, with ``result``.

        It is then :attr:`JobState.FAILED`, with ``started`` and ``finished``
        set. :class:`RunningError` for a running job (its worker fails it with
        ``finish_job(..., failed=True)``), :class:`FinishedError` for a settled
        one, :class:`CanceledError` for a canceled one.
        """
        ...

    async def cancel_job(self, job_id: UUID) -> None:
        """Cancel a pending or running job, and its pending dependents."""
        ...

    async def retry_job(self, job_id: UUID) -> list[UUID]:
        """Put a failed or canceled job back to pending; return the jobs put back.

        The job keeps its id, type, args, channel, priority and dependencies;
        its result, timestamps and retries are cleared, and it becomes ready
        once its dependencies allow. Its dependents canceled on its account
        (``cancel_on_failed_dependency``, or its own cancel's cascade) come
        back with it, so a whole tree is retried in one call; the result is
        the job's id, then theirs in enqueue order. Pending dependents of a
        failed job wait for it again. :class:`FinishedError` for a job that
        finished successfully, :class:`RunningError` for a running one,
        :class:`NotRetryableError` for a pending one or one that could not
        run (see docs/lifecycle.md); any error changes nothing.
        """
        ...

    async def job_status(self, job_id: UUID) -> JobStatus: ...

    async def wait(self, job_id: UUID, *, timeout: float | None = None) -> JobStatus:
        """The job's status once it has settled (finished, failed or canceled).

        Returns at once for a settled job. Waits without polling: the queue
        answers when the job settles (from a server, as a push of the
        reply). ``timeout`` seconds without that raise
        :class:`WaitTimeoutError` (``timeout=0``: only a job settled now);
        an unknown job, or one deleted meanwhile, :class:`NotExistError`. A
        cancelled caller gets :class:`trio.Cancelled` and leaves nothing
        behind in the queue or on the server.
        """
        ...

    async def job(self, job_id: UUID) -> JobInfo: ...

    async def id_from_token(self, token: UUID) -> UUID: ...

    async def heartbeats(self, older_than: float) -> list[UUID]:
        """Tokens of running jobs whose last heartbeat is at least ``older_than`` seconds old."""
        ...

    async def refresh_heartbeat(self, token: UUID) -> None: ...

    async def all_root_job_ids(self) -> list[UUID]: ...

    async def delete_job(self, job_id: UUID) -> None: ...

    async def insert_worker(self, channel: str, arch: str, *, channels: Sequence[str] = ()) -> UUID:
        """Register a worker of ``channel`` (and of ``channels`` after it: a worker
        that serves several); ``workers()`` lists them all in ``channels``."""
        ...

    async def update_worker_status(self, worker_id: UUID) -> None: ...

    async def workers(self, older_than: float = 0.0) -> list[WorkerInfo]: ...

    async def delete_worker(self, worker_id: UUID) -> None: ...

    async def list_jobs(
        self,
        state: JobState | None = None,
        job_type: str | None = None,
        channel: str | None = None,
        limit: int | None = None,
        *,
        offset: int = 0,
        id_prefix: str = "",
        newest_first: bool = False,
    ) -> list[JobSummary]:
        """Jobs in enqueue order, filtered by state, type and channel; at most ``limit``.

        ``newest_first`` lists from the newest job back, ``offset`` skips that
        many matches first (for paging), and ``id_prefix`` keeps the jobs whose
        id's text starts with it (hex digits and dashes, any case). The queue
        builds a summary only for the jobs it returns.
        """
        ...

    async def stats(self) -> QueueStats:
        """Counts of jobs by state, ready jobs per type and channel, dequeuers, workers."""
        ...

    async def schedule(
        self,
        name: str,
        cron: str,
        job_type: str,
        args: Any = None,
        channel: str = "",
        *,
        timezone: str = "UTC",
        catch_up: str = "last",
    ) -> ScheduleInfo:
        """Define the durable periodic job ``name``: at every slot of ``cron``
        (croniter's syntax, read in the IANA ``timezone``), enqueue ``job_type``
        with ``args`` in ``channel``.

        Each slot fires once, across restarts and failovers: its job and the
        schedule's last-fired mark are committed together. ``catch_up`` says
        what happens to slots missed while the queue was not serving:
        ``"last"`` fires the last one once, ``"none"`` skips them, ``"all"``
        fires each (at most 100). Defining it again exactly as it is changes
        nothing; a different definition replaces it, counting slots from now.
        A bad cron expression, time zone or policy is a :class:`ValueError`.
        Returns the schedule, with its next slot.
        """
        ...

    async def unschedule(self, name: str) -> bool:
        """Remove the schedule ``name`` (no slot fires after it); False if there is none."""
        ...

    async def schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by name, with its last and next slots."""
        ...
