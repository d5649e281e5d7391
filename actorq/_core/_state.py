"""The queue's state and rules: plain synchronous code, no trio, no I/O.

:class:`QueueState` is the whole queue. Each public method validates, changes
state and returns what happened; jobs handed to blocked dequeuers along the way
are collected as :class:`Assignment`\\ s for the caller (the scheduler actor) to
deliver, and every job or worker that changed is remembered so a store can
persist exactly that (:meth:`QueueState.take_changes`).

Ready jobs are indexed by ``(type, channel)`` and by ``type`` alone, each a heap
ordered by enqueue sequence, so a dequeue looks at one heap head per
``(type, channel)`` pair it asks for, whatever else is pending. Blocked
dequeuers ("waiters") are indexed the same way, so a job that becomes ready is
offered to the oldest waiter that can take it, and to no one else.

Both indexes delete lazily: an entry is valid only while the job's
``ready_key`` (or the waiter's ``active`` flag) still matches, and a heap or
deque that fills up with dead entries is compacted once dead entries outnumber
live ones, so every operation is amortised O(log n) in the matching jobs.
"""

from __future__ import annotations

import gc
import heapq
import math
from datetime import timedelta
from typing import TYPE_CHECKING

from ._entities import (
    ANY_CHANNEL,
    COUNT_SLOTS,
    FAILED_SLOT,
    FINISHED_SLOT,
    PENDING_SLOT,
    RUNNING_SLOT,
    JobEntry,
    ReadyHeap,
    TypeKey,
    Waiter,
    WaiterQueue,
    WorkerEntry,
    add_dependent,
    count_slot,
    is_delayed,
    phase_of,
    remove_dependent,
)
from ._errors import (
    ActiveJobsError,
    CanceledError,
    FinishedError,
    HasDependentsError,
    JobQueueError,
    NotExistError,
    NotPendingError,
    NotRetryableError,
    NotRunningError,
    RunningError,
    WorkerNotExistError,
)
from ._events import (
    Event,
    JobCanceled,
    JobDeleted,
    JobEnqueued,
    JobFinished,
    JobReady,
    JobReleased,
    JobRequeued,
    JobRetried,
    JobStarted,
    Phase,
    WorkerDeleted,
    WorkerSeen,
)
from ._index import ReadyIndex
from ._reads import StateReads
from ._records import (
    Assignment,
    Changes,
    JobRecord,
    JobTuple,
    ScheduleRecord,
    WorkerRecord,
    new_uuid4,
)
from ._restore import StateRestore
from ._schedules import ScheduleEntry, ScheduleRules

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Sequence
    from datetime import datetime
    from uuid import UUID

__all__ = ["QueueState"]


class QueueState(StateReads, ReadyIndex, StateRestore, ScheduleRules):
    """The complete state of a job queue, and every rule that changes it.

    ``wall`` returns the current time as an aware UTC datetime, for the
    timestamps jobs carry; ``monotonic`` returns seconds on a monotonic clock,
    for heartbeat and worker ages. Neither is called anywhere else, so a test
    can drive time by hand.

    With ``track_changes`` it remembers what changed for a store
    (:meth:`take_changes`); with ``track_events`` it records an event per
    change for observers (:meth:`take_events`, :mod:`actorq._core._events`).
    """

    def __init__(
        self,
        *,
        wall: Callable[[], datetime],
        monotonic: Callable[[], float],
        track_changes: bool = False,
        new_id: Callable[[], UUID] = new_uuid4,
        track_events: bool = False,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._new_id = new_id
        self._jobs: dict[UUID, JobEntry] = {}
        self._tokens: dict[UUID, UUID] = {}  # token -> job id; running or canceled while running
        self._running: dict[UUID, JobEntry] = {}  # token -> job, running and not canceled
        self._workers: dict[UUID, WorkerEntry] = {}
        self._ready: dict[TypeKey, ReadyHeap] = {}
        self._waiters: dict[TypeKey, WaiterQueue] = {}
        self._waiters_by_id: dict[int, Waiter] = {}
        self._next_seq = 1
        self._next_ready_key = 1
        self._next_waiter_id = 1
        # jobs whose dependencies have settled, waiting for their time:
        # (due on the monotonic clock, seq, id), deleted lazily
        self._timers: list[tuple[float, int, UUID]] = []
        self._unique: dict[tuple[str, str], UUID] = {}  # (channel, key) -> pending or running job
        # stats() in time independent of the number of jobs: every transition
        # below moves a job between these counts (_uncount before, _count after)
        self._counts = [0] * len(COUNT_SLOTS)
        self._delayed = 0
        self._schedules: dict[str, ScheduleEntry] = {}
        self._schedule_timers: list[tuple[float, int, str]] = []
        self._schedule_generation = 0
        self._changed_schedules: set[str] = set()
        self._deleted_schedules: set[str] = set()
        self._assignments: list[tuple[int, Assignment | WorkerNotExistError]] = []
        self._track = track_changes
        self._changed_jobs: set[UUID] = set()
        self._deleted_jobs: set[UUID] = set()
        self._changed_workers: set[UUID] = set()
        self._deleted_workers: set[UUID] = set()
        self._events: list[Event] | None = [] if track_events else None
        self._revoked: list[tuple[UUID, UUID, bool]] | None = None
        self._settled: list[UUID] | None = None

    # ------------------------------------------------------------------ jobs

    def enqueue(
        self,
        job_type: str,
        args: str,
        dependencies: Iterable[UUID] = (),
        channel: str = "",
        *,
        cancel_on_failed_dependency: bool = False,
        priority: int = 0,
        delay: float | None = None,
        not_before: datetime | None = None,
        unique_key: str | None = None,
    ) -> UUID:
        """Add a job; ``args`` is JSON text.

        Raises :class:`NotExistError`, and adds nothing, for an unknown dependency.
        ``priority`` orders it among ready jobs (highest first, then oldest).
        It is not ready before ``delay`` seconds (monotonic clock) or
        ``not_before`` (wall clock) have passed. With ``unique_key``, while a
        job of the same channel and key is pending or running, its id is
        returned and nothing changes.
        With ``cancel_on_failed_dependency``, the job is canceled (rather than
        run) once any dependency settles as a failure; if one already has, it
        is enqueued canceled. Either way ``failed_dependency`` names it.
        """
        deps = tuple(dict.fromkeys(dependencies))
        for dep_id in deps:
            if dep_id not in self._jobs:
                raise NotExistError(f"dependency {dep_id} does not exist")
        if unique_key is not None:
            holder = self._unique.get((channel, unique_key))
            if holder is not None:
                return holder
        due = 0.0
        if delay is not None and delay > 0:
            due = self._monotonic() + delay
            not_before = self._wall() + timedelta(seconds=delay)
        elif not_before is not None:
            wait = (not_before - self._wall()).total_seconds()
            if wait > 0:
                due = self._monotonic() + wait
        job = JobEntry(
            id=self._new_id(),
            seq=self._next_seq,
            type=job_type,
            channel=channel,
            args=args,
            dependencies=deps,
            queued=self._wall(),
        )
        job.cancel_on_failed_dependency = cancel_on_failed_dependency
        job.priority = priority
        job.not_before = not_before
        job.unique_key = unique_key
        job.due = due
        self._next_seq += 1
        self._jobs[job.id] = job
        failed_dependency: UUID | None = None
        for dep_id in deps:
            dep = self._jobs[dep_id]
            add_dependent(dep, job.id)
            if dep.finished is None:
                job.waiting_on += 1
            elif dep.failed and cancel_on_failed_dependency and failed_dependency is None:
                failed_dependency = dep_id
        self._touch(job)
        if failed_dependency is not None:
            # it could never run: it is born canceled, and says why
            if (events := self._events) is not None:
                events.append(JobEnqueued(job.id, job_type, channel, False))
                events.append(JobCanceled(job.id, job_type, channel, None, Phase.BLOCKED))
            job.canceled = True
            job.failed_dependency = failed_dependency
            self._count(job)
            return job.id
        if unique_key is not None:
            self._unique[(channel, unique_key)] = job.id
        self._count(job)
        ready = job.waiting_on == 0 and not due
        if (events := self._events) is not None:
            self._readied(events, job, JobEnqueued(job.id, job_type, channel, ready))
        if ready:
            self._make_ready(job)
        elif job.waiting_on == 0:
            heapq.heappush(self._timers, (due, job.seq, job.id))
        return job.id

    def enqueue_many(
        self, jobs: Sequence[tuple[str, str, Sequence[UUID | int], str] | JobTuple]
    ) -> list[UUID]:
        """Add several jobs, all or none; return their ids in order.

        Each job is ``(type, args JSON text, dependencies, channel)``, or that
        and ``cancel_on_failed_dependency``, and each dependency a job id or
        the index of an earlier job in ``jobs``. Every dependency is checked
        before any job is added: an unknown id raises :class:`NotExistError`,
        an index that is not earlier :class:`ValueError`, and nothing changes.
        One pass, linear in jobs and dependencies.
        """
        known = self._jobs
        for index, spec in enumerate(jobs):
            for dep in spec[2]:
                if isinstance(dep, int):
                    if not 0 <= dep < index:
                        raise ValueError(f"dependencies of job {index}: {dep} is not earlier")
                elif dep not in known:
                    raise NotExistError(f"dependency {dep} does not exist")
        ids: list[UUID] = []
        for spec in jobs:
            job_type, args, deps, channel = spec[0], spec[1], spec[2], spec[3]
            cancel_on_failed = len(spec) > 4 and bool(spec[4])
            resolved = [ids[dep] if isinstance(dep, int) else dep for dep in deps]
            ids.append(
                self.enqueue(
                    job_type, args, resolved, channel, cancel_on_failed_dependency=cancel_on_failed
                )
            )
        return ids

    def dequeue(
        self,
        job_types: tuple[str, ...],
        channels: tuple[str, ...] | None,
        worker_id: UUID | None = None,
    ) -> Assignment | None:
        """Hand out the oldest ready job matching, or return ``None``.

        ``channels=None`` matches every channel.
        """
        self._check_worker(worker_id)
        job = self._oldest_ready(job_types, channels)
        if job is None:
            return None
        return self._assign(job, worker_id)

    def add_waiter(
        self,
        job_types: tuple[str, ...],
        channels: tuple[str, ...] | None,
        worker_id: UUID | None = None,
    ) -> Assignment | int:
        """Dequeue now if a job is ready; otherwise park a waiter and return its id.

        A parked waiter receives the next matching job that becomes ready; it
        shows up in :meth:`take_assignments` under its id.
        """
        found = self.dequeue(job_types, channels, worker_id)
        if found is not None:
            return found
        waiter = Waiter(self._next_waiter_id, job_types, channels, worker_id)
        if self._events is not None:
            waiter.parked = self._monotonic()
        self._next_waiter_id += 1
        self._waiters_by_id[waiter.id] = waiter
        for key in self._waiter_keys(waiter):
            queue = self._waiters.get(key)
            if queue is None:
                queue = self._waiters[key] = WaiterQueue()
            queue.waiters.append(waiter)
            queue.live += 1
        return waiter.id

    def remove_waiter(self, waiter_id: int) -> bool:
        """Withdraw a parked waiter. Returns False if it was already served or withdrawn."""
        waiter = self._waiters_by_id.pop(waiter_id, None)
        if waiter is None:
            return False
        self._retire_waiter(waiter)
        return True

    def take_assignments(self) -> list[tuple[int, Assignment | WorkerNotExistError]]:
        """Jobs handed to parked waiters since the last call, as ``(waiter id, assignment)``.

        A waiter whose worker was deleted while it waited gets a
        :class:`WorkerNotExistError` instead.
        """
        out = self._assignments
        if out:
            self._assignments = []
        return out

    def track_revocations(self) -> None:
        """Start recording tokens that stop naming a running job (see :meth:`take_revocations`)."""
        if self._revoked is None:
            self._revoked = []

    def track_settles(self, on: bool = True) -> None:
        """Start (or, with ``on`` false, stop) recording jobs that settle or are
        deleted (see :meth:`take_settled`). Off, a settle records nothing."""
        if not on:
            self._settled = None
        elif self._settled is None:
            self._settled = []

    def take_settled(self) -> list[UUID]:
        """Jobs that settled (finished, failed, canceled) or were deleted since the
        last call. Empty unless :meth:`track_settles` was called."""
        out = self._settled
        if not out:
            return []
        self._settled = []
        return out

    def take_revocations(self) -> list[tuple[UUID, UUID, bool]]:
        """Runs that ended since the last call, as ``(job id, token, canceled)``.

        Every way a run ends counts (finished, requeued, released, reaped,
        canceled: ``canceled`` is True for that one), so whoever handed the
        job out can tell its holder the run is over. Empty unless
        :meth:`track_revocations` was called.
        """
        out = self._revoked
        if not out:
            return []
        self._revoked = []
        return out

    def dequeue_by_id(self, job_id: UUID, worker_id: UUID | None = None) -> Assignment:
        job = self._get(job_id)
        if job.ready_key == 0:
            raise NotPendingError()
        self._check_worker(worker_id)
        return self._assign(job, worker_id)

    def release(self, job_id: UUID, token: UUID) -> bool:
        """Undo an assignment that never reached its dequeuer.

        The job returns to its place in the ready order, its token is void, and
        nothing else about it changes. Returns False (and does nothing) if the
        token no longer names that running job.
        """
        job = self._jobs.get(job_id)
        if job is None or job.token != token or not job.running:
            return False
        if (events := self._events) is not None:
            self._readied(events, job, JobReleased(job.id, job.type, job.channel, job.worker_id))
        self._uncount(job)
        self._stop_running(job)
        job.started = None
        self._count(job)
        self._touch(job)
        self._make_ready(job)
        return True

    def finish_job(self, job_id: UUID, result: str, *, failed: bool = False) -> None:
        """Finish a running job with ``result``; ``failed`` settles it as a failure."""
        job = self._get_running(job_id)
        self._finish(job, result, failed)

    def requeue_or_finish_job(
        self,
        job_id: UUID,
        max_retries: int,
        result: str,
        *,
        failed: bool = False,
        delay: float | None = None,
    ) -> bool:
        """Requeue a running job (True), or finish it once retried ``max_retries`` times
        (False); ``failed`` makes that finish a failure. A requeued job keeps its
        place and priority; with ``delay`` it is not ready again for that many
        seconds (a retry's backoff)."""
        job = self._get_running(job_id)
        if job.retries >= max_retries:
            self._finish(job, result, failed)
            return False
        if (events := self._events) is not None:
            event = JobRequeued(job.id, job.type, job.channel, job.worker_id, job.retries + 1)
            self._readied(events, job, event)
        self._uncount(job)
        self._stop_running(job)
        job.retries += 1
        job.started = None
        job.result = None
        self._touch(job)
        if delay:
            job.due = self._monotonic() + delay
            job.not_before = self._wall() + timedelta(seconds=delay)
            heapq.heappush(self._timers, (job.due, job.seq, job.id))
            self._count(job)
        else:
            self._count(job)
            self._make_ready(job)
        return True

    def update_job_result(self, job_id: UUID, result: str) -> None:
        job = self._get_running(job_id)
        job.result = result
        self._touch(job)

    def fail_job(self, job_id: UUID, result: str) -> None:
        """Settle a job that never started as a failure with ``result`` (its dependencies
        may be unfinished)."""
        job = self._get(job_id)
        if job.canceled:
            raise CanceledError()
        if job.finished is not None:
            raise FinishedError()
        if job.started is not None:
            raise RunningError()
        if (events := self._events) is not None:
            phase = phase_of(job)
            events.append(JobFinished(job.id, job.type, job.channel, None, phase, True, None))
        self._uncount(job)
        self._unready(job)
        now = self._wall()
        job.started = now
        job.finished = now
        job.result = result
        job.failed = True
        job.due = 0.0
        self._count(job)
        self._forget_unique(job)
        self._touch(job)
        self._release_dependents(job)

    def cancel_job(self, job_id: UUID) -> None:
        """Cancel a pending or running job and, transitively, its pending dependents.

        Canceling a canceled job does nothing; a finished one raises
        :class:`NotRunningError`.
        """
        job = self._get(job_id)
        if job.finished is not None:
            raise NotRunningError("job has already finished")
        self._cancel_tree(job, None)

    def _cancel_tree(self, job: JobEntry, failed_dependency: UUID | None) -> None:
        # the job and, transitively, its pending dependents: they could never run
        stack = [job]
        while stack:
            job = stack.pop()
            if job.canceled or job.finished is not None:
                continue
            if (events := self._events) is not None:
                phase = phase_of(job)
                events.append(JobCanceled(job.id, job.type, job.channel, job.worker_id, phase))
            self._uncount(job)
            if job.running:
                self._stop_running(job, keep_token=True)
            else:
                self._unready(job)
            job.canceled = True
            job.failed_dependency = failed_dependency
            job.due = 0.0
            self._count(job)
            self._forget_unique(job)
            self._touch(job)
            stack.extend(self._jobs[d] for d in job.dependents)

    def retry_job(self, job_id: UUID) -> list[UUID]:
        """Put a failed or canceled job back to pending, with the dependents that
        were canceled on its account; return their ids (the job's first), in
        enqueue order.

        A retried job keeps its id, type, args, channel, priority, dependencies
        and opt-in; its result, timestamps, retries count, delay and failure
        marks are cleared, and it is ready once its dependencies allow. The
        dependents brought back with it are those canceled for the same reason
        (a failed job's: those naming it as their ``failed_dependency``; a
        canceled job's: those its cancel canceled, naming none, or naming the
        failed dependency it names), transitively, as long as nothing else keeps
        them from running. The pending dependents of a failed job wait for it
        again.

        Raises, changing nothing: :class:`FinishedError` for a job that finished
        successfully, :class:`RunningError` for a running one,
        :class:`NotRetryableError` for a pending one, or one that could not run
        (a dependency is canceled, a dependency failed and it opted out after a
        failure, or another job holds its unique key).
        """
        root = self._get(job_id)
        if root.running:
            raise RunningError()
        if root.finished is not None and not root.failed:
            raise FinishedError()
        if root.pending:
            raise NotRetryableError(f"job {job_id} is pending")
        reason = self._retry_blocker(root, frozenset())
        if reason is not None:
            raise NotRetryableError(f"job {job_id} cannot run: {reason}")
        cause = root.id if root.failed else root.failed_dependency
        revived = self._retry_tree(root, cause)
        events = self._events
        if root.finished is not None:
            # a settled dependency goes back to pending: its dependents wait again
            for dep_id in root.dependents:
                if dep_id in revived:
                    continue
                dependent = self._jobs[dep_id]
                self._uncount(dependent)
                dependent.waiting_on += 1
                self._count(dependent)
                if dependent.ready_key:
                    if events is not None:
                        events.append(
                            JobRetried(
                                dep_id, dependent.type, dependent.channel, Phase.READY, False
                            )
                        )
                    self._unready(dependent)
        order = sorted((self._jobs[i] for i in revived), key=_seq)
        befores = [phase_of(job) for job in order]
        for job in order:
            self._uncount(job)
            if job.token is not None:
                self._tokens.pop(job.token, None)  # canceled while running: that run is void
                job.token = None
            job.started = job.finished = None
            job.canceled = job.failed = False
            job.result = None
            job.failed_dependency = None
            job.retries = 0
            job.not_before = None
            job.due = 0.0
            if job.unique_key is not None:
                self._unique[(job.channel, job.unique_key)] = job.id
            self._touch(job)
        for job, before in zip(order, befores, strict=True):
            waiting_on = 0
            for dep_id in job.dependencies:
                if self._jobs[dep_id].finished is None:
                    waiting_on += 1
            job.waiting_on = waiting_on
            self._count(job)
            ready = not waiting_on
            if events is not None:
                self._readied(events, job, JobRetried(job.id, job.type, job.channel, before, ready))
            if ready:
                self._make_ready(job)
        return [job.id for job in order]

    def _retry_tree(self, root: JobEntry, cause: UUID | None) -> set[UUID]:
        # the root and, in enqueue order (dependencies first), each canceled
        # dependent that names the same cause and could run once they are back
        candidates = {root.id: root}
        stack = [root]
        while stack:
            job = stack.pop()
            for dep_id in job.dependents:
                dependent = self._jobs[dep_id]
                if (
                    dependent.canceled
                    and dependent.failed_dependency == cause
                    and dep_id not in candidates
                ):
                    candidates[dep_id] = dependent
                    stack.append(dependent)
        revived: set[UUID] = {root.id}
        for job in sorted(candidates.values(), key=_seq):
            if job is not root and self._retry_blocker(job, revived) is None:
                revived.add(job.id)
        return revived

    def _retry_blocker(self, job: JobEntry, revived: Collection[UUID]) -> str | None:
        # why the job could not run if it went back to pending, or None
        for dep_id in job.dependencies:
            if dep_id in revived:
                continue  # pending again with it
            dep = self._jobs[dep_id]
            if dep.canceled:
                return f"its dependency {dep_id} is canceled"
            if dep.failed and job.cancel_on_failed_dependency:
                return f"its dependency {dep_id} failed, and it opted out after a failure"
        if job.unique_key is not None:
            holder = self._unique.get((job.channel, job.unique_key))
            if holder is not None and holder != job.id:
                return f"job {holder} holds its unique key {job.unique_key!r}"
        return None

    def delete_job(self, job_id: UUID, channels: Collection[str] | None = None) -> None:
        """Delete a job and, recursively, each dependency nothing else needs.

        A running job cannot be deleted (:class:`RunningError`), nor one that
        other jobs depend on (:class:`HasDependentsError`). Dependencies that
        are running are kept, and so are those outside ``channels`` when it is
        given (a tenant deletes only what it can see).
        """
        job = self._get(job_id)
        if job.running:
            raise RunningError()
        if job.dependents:
            raise HasDependentsError()
        stack = [job]
        while stack:
            job = stack.pop()
            if (events := self._events) is not None:
                events.append(JobDeleted(job.id, job.type, job.channel, phase_of(job)))
            self._uncount(job)
            self._unready(job)
            self._forget_unique(job)
            if job.token is not None:
                self._tokens.pop(job.token, None)
            del self._jobs[job.id]
            if self._track:
                self._changed_jobs.discard(job.id)
                self._deleted_jobs.add(job.id)
            for dep_id in job.dependencies:
                dep = self._jobs.get(dep_id)
                if dep is None:
                    continue
                remove_dependent(dep, job.id)
                if (
                    not dep.dependents
                    and not dep.running
                    and (channels is None or dep.channel in channels)
                ):
                    stack.append(dep)

    def check_token(self, job_id: UUID, token: UUID | None) -> None:
        """A token operation touches only the job its token names.

        A job that is no longer running gets the error the plain operation gives
        (not running, canceled...); a job that runs under another token (it was
        requeued or released and handed to someone else) is out of reach.
        """
        if token is None:
            return
        job = self._get(job_id)
        if not job.running:
            return
        if self._tokens.get(token) != job_id:
            raise NotExistError("the token does not name this job any more")

    def refresh_heartbeat(self, token: UUID) -> None:
        job_id = self.id_from_token(token)
        self._jobs[job_id].heartbeat = self._monotonic()

    def refresh_heartbeats(self, tokens: Iterable[UUID]) -> list[UUID]:
        """Refresh many tokens; return those that no longer name a running job."""
        gone = []
        for token in tokens:
            try:
                self.refresh_heartbeat(token)
            except JobQueueError:
                gone.append(token)
        return gone

    # ---------------------------------------------------------------- workers

    def insert_worker(self, channel: str, arch: str, channels: Sequence[str] = ()) -> UUID:
        """Register a worker of ``channel`` and, after it, ``channels`` (all kept)."""
        worker = WorkerEntry(self._new_id(), channel, arch, self._wall(), self._monotonic())
        worker.channels = tuple(dict.fromkeys((channel, *channels)))
        self._workers[worker.id] = worker
        self._touch_worker(worker)
        if (events := self._events) is not None:
            events.append(WorkerSeen(worker.id, channel, arch, True))
        return worker.id

    def update_worker_status(self, worker_id: UUID) -> None:
        worker = self._get_worker(worker_id)
        worker.updated = self._wall()
        worker.heartbeat = self._monotonic()
        self._touch_worker(worker)
        if (events := self._events) is not None:
            events.append(WorkerSeen(worker_id, worker.channel, worker.arch, False))

    def delete_worker(self, worker_id: UUID) -> None:
        worker = self._get_worker(worker_id)
        if worker.active_jobs:
            raise ActiveJobsError()
        del self._workers[worker_id]
        if self._track:
            self._changed_workers.discard(worker_id)
            self._deleted_workers.add(worker_id)
        if (events := self._events) is not None:
            events.append(WorkerDeleted(worker_id))

    # ------------------------------------------------------------ durability

    def take_changes(self) -> Changes:
        """Records of every job and worker changed or deleted since the last call."""
        schedules, deleted_schedules = self._take_schedule_changes()
        changes = Changes(
            schedules=schedules,
            deleted_schedules=deleted_schedules,
            jobs=[self._jobs[i].record() for i in self._changed_jobs],
            deleted_jobs=list(self._deleted_jobs),
            workers=[self._workers[i].record() for i in self._changed_workers],
            deleted_workers=list(self._deleted_workers),
        )
        self._changed_jobs = set()
        self._deleted_jobs = set()
        self._changed_workers = set()
        self._deleted_workers = set()
        return changes

    def take_events(self) -> list[Event]:
        """Events of every change since the last call, oldest first.

        Always empty for a state built without ``track_events``.
        """
        events = self._events
        if not events:
            return []
        self._events = []
        return events

    @classmethod
    def restore(
        cls,
        jobs: Iterable[JobRecord],
        workers: Iterable[WorkerRecord],
        *,
        wall: Callable[[], datetime],
        monotonic: Callable[[], float],
        track_changes: bool = False,
        new_id: Callable[[], UUID] = new_uuid4,
        track_events: bool = False,
        schedules: Iterable[ScheduleRecord] = (),
    ) -> QueueState:
        """Rebuild a queue from records, which must come in enqueue order.

        Heartbeat and worker clocks restart now: a worker that is gone will be
        noticed by whoever watches :meth:`heartbeats`. Raises
        :class:`ValueError` if the records are inconsistent.
        """
        state = cls(
            wall=wall,
            monotonic=monotonic,
            track_changes=track_changes,
            new_id=new_id,
            track_events=track_events,
        )
        now = monotonic()
        for w in workers:
            entry = WorkerEntry(w.id, w.channel, w.arch, w.updated, now)
            entry.channels = w.channels or (w.channel,)
            state._workers[w.id] = entry
        # A reopen builds every job at once. None of these objects is garbage,
        # yet the cyclic collector would rescan the growing heap again and
        # again (a third of the time at a million jobs): pause it meanwhile.
        collecting = gc.isenabled()
        gc.disable()
        try:
            state._restore_jobs(jobs, now)
        finally:
            if collecting:
                gc.enable()
        # slots missed while the queue was down are due now (or skipped), by
        # each schedule's catch-up policy
        state._restore_schedules(schedules)
        return state

    # -------------------------------------------------------------- internals

    def _count(self, job: JobEntry) -> None:
        self._counts[count_slot(job)] += 1
        if job.due and is_delayed(job):
            self._delayed += 1

    def _uncount(self, job: JobEntry) -> None:
        self._counts[count_slot(job)] -= 1
        if job.due and is_delayed(job):
            self._delayed -= 1

    def _touch(self, job: JobEntry) -> None:
        if self._track:
            self._changed_jobs.add(job.id)

    def _touch_worker(self, worker: WorkerEntry) -> None:
        if self._track:
            self._changed_workers.add(worker.id)

    def _forget_unique(self, job: JobEntry) -> None:
        # a settled (or deleted) job frees its key for the next enqueue, and
        # whoever waits for it to settle hears of it
        if self._settled is not None:
            self._settled.append(job.id)
        if job.unique_key is not None:
            key = (job.channel, job.unique_key)
            if self._unique.get(key) == job.id:
                del self._unique[key]

    def next_due(self) -> float | None:
        """When (monotonic clock) the first delayed job falls due or the next
        schedule fires, or ``None``."""
        timers = self._timers
        schedule_due = self.next_schedule_due() if self._schedule_timers else None
        while timers:
            due, _, job_id = timers[0]
            job = self._jobs.get(job_id)
            if job is not None and job.due == due and job.pending and not job.waiting_on:
                return due if schedule_due is None else min(due, schedule_due)
            heapq.heappop(timers)  # settled, deleted or made ready since
        return schedule_due

    def release_due(self) -> int:
        """Make every delayed job whose time has come ready (handing it to a waiter
        if one matches); return how many."""
        timers = self._timers
        now = self._monotonic()
        released = 0
        while timers and timers[0][0] <= now:
            due, _, job_id = heapq.heappop(timers)
            job = self._jobs.get(job_id)
            if job is None or job.due != due or not job.pending or job.waiting_on:
                continue
            self._uncount(job)
            job.due = 0.0
            self._count(job)
            if (events := self._events) is not None:
                self._readied(events, job, JobReady(job.id, job.type, job.channel))
            self._make_ready(job)
            released += 1
        if self._schedule_timers:
            released += self.fire_due_schedules()
        return released

    def _finish(self, job: JobEntry, result: str, failed: bool = False) -> None:
        if (events := self._events) is not None:
            events.append(self._finished(job, failed))
        counts = self._counts  # a running job settles
        counts[RUNNING_SLOT] -= 1
        counts[FAILED_SLOT if failed else FINISHED_SLOT] += 1
        self._stop_running(job)
        job.finished = self._wall()
        job.result = result
        job.failed = failed
        self._forget_unique(job)
        self._touch(job)
        self._release_dependents(job)

    def _release_dependents(self, job: JobEntry) -> None:
        failed = job.failed
        for dep_id in job.dependents:
            dependent = self._jobs[dep_id]
            self._uncount(dependent)
            dependent.waiting_on -= 1
            if failed and dependent.cancel_on_failed_dependency and dependent.pending:
                # it asked not to run after a failed dependency: cancel it instead
                self._count(dependent)
                self._cancel_tree(dependent, job.id)
                continue
            if dependent.waiting_on == 0 and dependent.pending and dependent.due:
                if dependent.due > self._monotonic():
                    heapq.heappush(self._timers, (dependent.due, dependent.seq, dep_id))
                    self._count(dependent)
                    continue
                dependent.due = 0.0
            self._count(dependent)
            if dependent.waiting_on == 0 and dependent.pending:
                if (events := self._events) is not None:
                    event = JobReady(dep_id, dependent.type, dependent.channel)
                    self._readied(events, dependent, event)
                self._make_ready(dependent)

    def _stop_running(self, job: JobEntry, *, keep_token: bool = False) -> None:
        token = job.token
        if token is not None:
            if self._revoked is not None:
                self._revoked.append((job.id, token, job.canceled or keep_token))
            self._running.pop(token, None)
            if not keep_token:
                self._tokens.pop(token, None)
                job.token = None
        if job.worker_id is not None:
            worker = self._workers.get(job.worker_id)
            if worker is not None:
                worker.active_jobs.discard(job.id)
            job.worker_id = None

    def _assign(
        self, job: JobEntry, worker_id: UUID | None, parked: float | None = None
    ) -> Assignment:
        # a ready job (its due time is 0: never delayed) starts running
        counts = self._counts
        counts[PENDING_SLOT] -= 1
        counts[RUNNING_SLOT] += 1
        self._unready(job)
        token = self._new_id()
        job.token = token
        job.started = self._wall()
        job.heartbeat = self._monotonic()
        job.worker_id = worker_id
        self._tokens[token] = job.id
        self._running[token] = job
        if worker_id is not None:
            self._workers[worker_id].active_jobs.add(job.id)
        self._touch(job)
        if (events := self._events) is not None:
            events.append(self._started(job, worker_id, parked))
        return Assignment(job.id, token, job.dependencies, job.type, job.args, job.channel)

    def _make_ready(self, job: JobEntry) -> None:
        while (waiter := self._oldest_waiter(job)) is not None:
            self._waiters_by_id.pop(waiter.id, None)
            self._retire_waiter(waiter)
            if waiter.worker_id is None or waiter.worker_id in self._workers:
                got = self._assign(job, waiter.worker_id, waiter.parked)
                self._assignments.append((waiter.id, got))
                return
            # its worker was deleted while it waited: it can never take a job
            self._assignments.append((waiter.id, WorkerNotExistError()))
        key = self._next_ready_key
        self._next_ready_key += 1
        job.ready_key = key
        entry = (-job.priority, job.seq, key, job.id)
        for heap_key in ((job.type, job.channel), (job.type, ANY_CHANNEL)):
            heap = self._ready.get(heap_key)
            if heap is None:
                heap = self._ready[heap_key] = ReadyHeap()
            heapq.heappush(heap.entries, entry)
            heap.live += 1

    # ---------------------------------------------------------------- events

    def _readied(self, events: list[Event], job: JobEntry, event: Event) -> None:
        # the job is (again) ready to start: its queue latency counts from now
        job.since = self._monotonic()
        events.append(event)

    def _started(self, job: JobEntry, worker_id: UUID | None, parked: float | None) -> JobStarted:
        now = job.heartbeat  # _assign just read the clock
        since, job.since = job.since, now
        waited = None if math.isnan(since) else now - since
        dequeue_wait = 0.0 if parked is None else now - parked
        return JobStarted(job.id, job.type, job.channel, worker_id, waited, dequeue_wait)

    def _finished(self, job: JobEntry, failed: bool) -> JobFinished:
        since = job.since
        ran = None if math.isnan(since) else self._monotonic() - since
        return JobFinished(job.id, job.type, job.channel, job.worker_id, Phase.RUNNING, failed, ran)


def _seq(job: JobEntry) -> int:
    return job.seq
