"""The queries of :class:`~actorq._core._state.QueueState`: they read, never change.

A mixin over the state's own attributes, kept apart so the rules that change
the queue stay in one file of readable size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._entities import (
    ANY_CHANNEL,
    COUNT_SLOTS,
    JobEntry,
    StateAttributes,
    WorkerEntry,
    phase_of,
    state_of,
)
from ._errors import CanceledError, NotExistError, NotRunningError, WorkerNotExistError
from ._models import JobInfo, JobState, JobStatus, JobSummary, QueueStats, WorkerInfo

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Iterator
    from datetime import datetime
    from uuid import UUID

    from ._events import Phase
    from ._records import JobRecord, WorkerRecord

__all__ = ["StateReads"]


def _seq(job: JobEntry) -> int:
    return job.seq


class StateReads(StateAttributes):
    """Read-only operations on the queue state."""

    def job_status(self, job_id: UUID) -> JobStatus:
        job = self._get(job_id)
        return JobStatus(
            type=job.type,
            channel=job.channel,
            result=job.result,
            queued=job.queued,
            started=job.started,
            finished=job.finished,
            canceled=job.canceled,
            dependencies=list(job.dependencies),
            dependents=list(job.dependents),
            retries=job.retries,
            failed=job.failed,
            failed_dependency=job.failed_dependency,
            priority=job.priority,
            not_before=job.not_before,
            unique_key=job.unique_key,
        )

    def job(self, job_id: UUID) -> JobInfo:
        job = self._get(job_id)
        return JobInfo(
            type=job.type, args=job.args, dependencies=list(job.dependencies), channel=job.channel
        )

    def is_settled(self, job_id: UUID) -> bool:
        """Whether the job has finished, failed or been canceled; :class:`NotExistError`
        for an unknown one."""
        job = self._get(job_id)
        return job.canceled or job.finished is not None

    def job_state(self, job_id: UUID) -> JobState:
        return state_of(self._get(job_id))

    def job_channel(self, job_id: UUID) -> str:
        """The channel of a job; :class:`NotExistError` for an unknown one."""
        return self._get(job_id).channel

    def worker_channel(self, worker_id: UUID) -> str:
        """The channel of a worker; :class:`WorkerNotExistError` for an unknown one."""
        return self._get_worker(worker_id).channel

    def has_job_in(self, job_id: UUID, channels: Collection[str]) -> bool:
        """Whether ``job_id`` exists in one of ``channels``."""
        job = self._jobs.get(job_id)
        return job is not None and job.channel in channels

    def token_job(self, token: UUID) -> UUID | None:
        """The job ``token`` was handed out for, while it is running (or was
        canceled while running); ``None`` for any other token."""
        return self._tokens.get(token)

    def id_from_token(self, token: UUID) -> UUID:
        job_id = self._tokens.get(token)
        if job_id is None:
            raise NotExistError("token does not name a running job")
        if self._jobs[job_id].canceled:
            raise CanceledError()
        return job_id

    def heartbeats(self, older_than: float) -> list[UUID]:
        """Tokens of running jobs whose last heartbeat is at least ``older_than`` seconds old."""
        now = self._monotonic()
        return [tok for tok, job in self._running.items() if now - job.heartbeat >= older_than]

    def all_root_job_ids(self) -> list[UUID]:
        """Jobs no other job depends on, in enqueue order."""
        return [job.id for job in self._jobs.values() if not job.dependents]

    def settled_roots(self, finished_before: datetime) -> list[tuple[UUID, bool]]:
        """Roots of settled, old job trees, for retention: ``(root id, has_canceled)``.

        A root is a job nothing depends on; its tree is the root and,
        transitively, its dependencies. A tree is settled when no job in it is
        pending or running. Returned are the roots of settled trees whose
        finished jobs all finished before ``finished_before``, in enqueue order.
        The queue records no cancel time, so ``has_canceled`` is True when the
        tree holds a canceled job: its caller must age such a tree itself.
        """
        # Dependencies are enqueued before their dependents, so a single pass in
        # enqueue order has judged every dependency before the job that needs it.
        settled: dict[UUID, tuple[bool, bool]] = {}  # job id -> (old enough, has canceled)
        out: list[tuple[UUID, bool]] = []
        for job in self._jobs.values():
            if job.canceled:
                old, canceled = True, True
            elif job.finished is not None:
                old, canceled = job.finished < finished_before, False
            else:
                continue
            for dep_id in job.dependencies:
                dep = settled.get(dep_id)
                if dep is None:
                    break
                old, canceled = old and dep[0], canceled or dep[1]
            else:
                settled[job.id] = (old, canceled)
                if old and not job.dependents:
                    out.append((job.id, canceled))
        return out

    def list_jobs(
        self,
        state: JobState | frozenset[JobState] | None = None,
        job_type: str | None = None,
        channel: str | None = None,
        limit: int | None = None,
        *,
        offset: int = 0,
        id_prefix: str = "",
        newest_first: bool = False,
        channels: Collection[str] | None = None,
    ) -> list[JobSummary]:
        """Jobs in enqueue order (``newest_first``: the reverse), filtered by state
        (one, or any of a set), type, channel, the start of the id's text
        (``id_prefix``, lower case) and ``channels`` (a tenant's scope); the first
        ``offset`` matches are skipped, at most ``limit`` are returned. Only
        returned jobs cost a summary."""
        states = state if isinstance(state, frozenset) else None if state is None else {state}
        out: list[JobSummary] = []
        if limit == 0:
            return out
        jobs: Iterable[JobEntry]
        if state is JobState.RUNNING:
            # the running jobs have an index of their own: no pass over every job
            jobs = sorted(self._running.values(), key=_seq, reverse=newest_first)
        else:
            jobs = reversed(self._jobs.values()) if newest_first else self._jobs.values()
        skip = offset
        for job in jobs:
            if job_type is not None and job.type != job_type:
                continue
            if channel is not None and job.channel != channel:
                continue
            if channels is not None and job.channel not in channels:
                continue
            job_state = state_of(job)
            if states is not None and job_state not in states:
                continue
            if id_prefix and not str(job.id).startswith(id_prefix):
                continue
            if skip:
                skip -= 1
                continue
            out.append(
                JobSummary(
                    id=job.id,
                    type=job.type,
                    channel=job.channel,
                    state=job_state,
                    queued=job.queued,
                    started=job.started,
                    finished=job.finished,
                    retries=job.retries,
                    dependencies=list(job.dependencies),
                    worker_id=job.worker_id if job_state is JobState.RUNNING else None,
                )
            )
            if limit is not None and len(out) >= limit:
                break
        return out

    def phase_counts(self) -> dict[tuple[str, str], dict[Phase, int]]:
        """How many jobs of each ``(type, channel)`` are in each :class:`Phase`.

        One pass over every job: for observers that then follow the counts
        from events (the queue's metrics), taken once as the queue opens.
        """
        counts: dict[tuple[str, str], dict[Phase, int]] = {}
        for job in self._jobs.values():
            phase = phase_of(job)
            key = (job.type, job.channel)
            row = counts.get(key)
            if row is None:
                row = counts[key] = {}
            row[phase] = row.get(phase, 0) + 1
        return counts

    def stats(self) -> QueueStats:
        """Counts of the queue, in time independent of the number of jobs.

        The counts per state and of delayed jobs are kept at every transition;
        ready jobs are the live entries of the ready heaps, so a call costs one
        step per (type, channel) pair with ready jobs (listed in no particular
        order).
        """
        counts = self._counts
        slot = COUNT_SLOTS
        ready = [
            (job_type, channel, heap.live)
            for (job_type, channel), heap in self._ready.items()
            if channel is not ANY_CHANNEL
        ]
        pending = counts[slot[JobState.PENDING]]
        return QueueStats(
            jobs=len(self._jobs),
            pending=pending,
            ready=ready,
            blocked=pending - sum(n for _, _, n in ready),
            running=counts[slot[JobState.RUNNING]],
            finished=counts[slot[JobState.FINISHED]],
            canceled=counts[slot[JobState.CANCELED]],
            waiting_dequeuers=len(self._waiters_by_id),
            workers=len(self._workers),
            failed=counts[slot[JobState.FAILED]],
            delayed=self._delayed,
        )

    def job_ids(self) -> Iterator[UUID]:
        return iter(self._jobs)

    def workers(self, older_than: float = 0.0) -> list[WorkerInfo]:
        """Workers whose last status update is at least ``older_than`` seconds old."""
        now = self._monotonic()
        return [
            WorkerInfo(
                id=w.id, channel=w.channel, arch=w.arch, updated=w.updated, channels=w.channels
            )
            for w in self._workers.values()
            if now - w.heartbeat >= older_than
        ]

    def records(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        """Every job (in enqueue order) and worker, as a store would keep them."""
        return (
            [job.record() for job in self._jobs.values()],
            [worker.record() for worker in self._workers.values()],
        )

    @property
    def waiter_count(self) -> int:
        return len(self._waiters_by_id)

    def _get(self, job_id: UUID) -> JobEntry:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotExistError(f"job {job_id} does not exist")
        return job

    def _get_running(self, job_id: UUID) -> JobEntry:
        job = self._get(job_id)
        if job.canceled:
            raise CanceledError()
        if not job.running:
            raise NotRunningError()
        return job

    def _get_worker(self, worker_id: UUID) -> WorkerEntry:
        worker = self._workers.get(worker_id)
        if worker is None:
            raise WorkerNotExistError(f"worker {worker_id} does not exist")
        return worker

    def _check_worker(self, worker_id: UUID | None) -> None:
        if worker_id is not None:
            self._get_worker(worker_id)


def recount_stats(reads: StateReads) -> QueueStats:
    """:meth:`StateReads.stats` by one pass over every job, with the ready pairs
    sorted: the reference the kept counts are checked against (tests, and the
    core benchmark's baseline). Costs time in the number of jobs."""
    ready: dict[tuple[str, str], int] = {}
    counts = dict.fromkeys(JobState, 0)
    blocked = delayed = 0
    for job in reads._jobs.values():
        job_state = state_of(job)
        counts[job_state] += 1
        if job.ready_key:
            key = (job.type, job.channel)
            ready[key] = ready.get(key, 0) + 1
        elif job_state is JobState.PENDING:
            blocked += 1
            if job.due and not job.waiting_on:
                delayed += 1
    return QueueStats(
        jobs=len(reads._jobs),
        pending=counts[JobState.PENDING],
        ready=sorted((t, c, n) for (t, c), n in ready.items()),
        blocked=blocked,
        running=counts[JobState.RUNNING],
        finished=counts[JobState.FINISHED],
        canceled=counts[JobState.CANCELED],
        waiting_dequeuers=reads.waiter_count,
        workers=len(reads._workers),
        failed=counts[JobState.FAILED],
        delayed=delayed,
    )
