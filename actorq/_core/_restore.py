"""Rebuilding :class:`~actorq._core._state.QueueState` from a store's records."""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

from ._entities import (
    ANY_CHANNEL,
    COUNT_SLOTS,
    JobEntry,
    ReadyHeap,
    StateAttributes,
    add_dependent,
)
from ._models import JobState

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._records import JobRecord

__all__ = ["StateRestore"]


class StateRestore(StateAttributes):
    """The hot loop of a reopen."""

    def _restore_jobs(self, jobs: Iterable[JobRecord], now: float) -> None:
        # The hot loop of a reopen, so names are bound locally and each job
        # is built slot by slot (an attrs __init__ with keywords costs several
        # times as much). Ready jobs go straight into their heaps: records come
        # in enqueue order, so appending keeps each heap sorted, which is a
        # valid heap, and no waiter exists yet to be offered them.
        all_jobs = self._jobs
        tokens = self._tokens
        running = self._running
        workers = self._workers
        ready = self._ready
        new = object.__new__
        ready_key = self._next_ready_key
        unknown = math.nan  # when a restored job became ready or started
        last_seq = 0
        timers = self._timers
        unique = self._unique
        wall_now = self._wall()
        prioritized = False
        # jobs per state, for stats() (canceled, pending, running, settled; failed)
        canceled_count = pending_count = running_count = settled_count = failed_count = 0
        delayed_count = 0
        for rec in jobs:
            seq = rec.seq
            job_id = rec.id
            if seq <= last_seq:
                raise ValueError(f"job {job_id}: records are not in enqueue order")
            last_seq = seq
            if job_id in all_jobs:
                raise ValueError(f"job {job_id} appears twice")
            job_type = rec.type
            channel = rec.channel
            dependencies = tuple(rec.dependencies)
            started = rec.started
            finished = rec.finished
            canceled = rec.canceled
            token = rec.token
            if rec.failed and finished is None:
                raise ValueError(f"job {job_id} failed but never finished")
            waiting_on = 0
            for dep_id in dependencies:
                dep = all_jobs.get(dep_id)
                if dep is None:
                    raise ValueError(f"job {job_id} depends on missing job {dep_id}")
                add_dependent(dep, job_id)
                if dep.finished is None:
                    waiting_on += 1
            job: JobEntry = new(JobEntry)
            job.id = job_id
            job.seq = seq
            job.type = job_type
            job.channel = channel
            job.args = rec.args
            job.dependencies = dependencies
            job.queued = rec.queued
            job.dependents = ()
            job.started = started
            job.finished = finished
            job.canceled = canceled
            job.result = rec.result
            job.retries = rec.retries
            job.token = token
            job.worker_id = rec.worker_id
            job.failed = rec.failed
            job.cancel_on_failed_dependency = rec.cancel_on_failed_dependency
            job.failed_dependency = rec.failed_dependency
            priority = job.priority = rec.priority
            not_before = job.not_before = rec.not_before
            unique_key = job.unique_key = rec.unique_key
            job.due = 0.0
            if not_before is not None and started is None and not canceled:
                wait = (not_before - wall_now).total_seconds()
                if wait > 0:
                    job.due = now + wait
            if unique_key is not None and finished is None and not canceled:
                unique[(channel, unique_key)] = job_id
            job.waiting_on = waiting_on
            job.heartbeat = now
            job.ready_key = 0
            job.since = unknown
            all_jobs[job_id] = job
            if canceled:
                canceled_count += 1
                if token is not None and finished is None:
                    tokens[token] = job_id  # canceled while running: the token says so
            elif started is None:
                pending_count += 1
                if waiting_on == 0 and job.due:
                    delayed_count += 1
                    timers.append((job.due, seq, job_id))
                elif waiting_on == 0:
                    job.ready_key = ready_key
                    entry = (-priority, seq, ready_key, job_id)
                    ready_key += 1
                    if priority:
                        prioritized = True
                    for heap_key in ((job_type, channel), (job_type, ANY_CHANNEL)):
                        heap = ready.get(heap_key)
                        if heap is None:
                            heap = ready[heap_key] = ReadyHeap()
                        heap.entries.append(entry)
                        heap.live += 1
            elif finished is None:
                running_count += 1
                if token is None:
                    raise ValueError(f"running job {job_id} has no token")
                tokens[token] = job_id
                running[token] = job
                if job.worker_id is not None:
                    worker = workers.get(job.worker_id)
                    if worker is None:
                        job.worker_id = None
                    else:
                        worker.active_jobs.add(job_id)
            else:
                settled_count += 1
                if rec.failed:
                    failed_count += 1
        if prioritized:
            # appended in enqueue order, which is heap order only without priorities
            for heap in ready.values():
                heapq.heapify(heap.entries)
        heapq.heapify(timers)
        self._next_ready_key = ready_key
        self._next_seq = last_seq + 1
        counts = self._counts
        counts[COUNT_SLOTS[JobState.PENDING]] += pending_count
        counts[COUNT_SLOTS[JobState.RUNNING]] += running_count
        counts[COUNT_SLOTS[JobState.FINISHED]] += settled_count - failed_count
        counts[COUNT_SLOTS[JobState.FAILED]] += failed_count
        counts[COUNT_SLOTS[JobState.CANCELED]] += canceled_count
        self._delayed += delayed_count
