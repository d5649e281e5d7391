"""The durable log behind the scheduler.

The scheduler's :class:`~actorq._core.QueueState` is the queue; a store only
keeps records of it, so that a restarted process can rebuild the same state.
The scheduler calls :meth:`Store.commit` once per batch of requests, and
answers none of them before that commit returns. ``docs/stores.md`` says how
to write a store of your own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import trio

if TYPE_CHECKING:
    from uuid import UUID

    from .._core._records import Changes, JobRecord, ScheduleRecord, WorkerRecord

__all__ = ["MemoryStore", "Store"]


@runtime_checkable
class Store(Protocol):
    """Everything a queue calls on its durable storage.

    :func:`actorq.open_queue` calls :meth:`load` once, then runs
    :meth:`watch` beside the scheduler, which calls :meth:`commit` once per
    batch; :meth:`close` comes last, also after a failure or cancellation.
    ``load``, ``commit`` and ``close`` are called one at a time, never
    concurrently with each other; ``watch`` runs concurrently with all of
    them. Blocking work belongs on a worker thread, through
    ``actorq._stores._threads.run_sync`` (it keeps a
    :class:`trio.testing.MockClock` from jumping meanwhile). The full
    contract is in ``docs/stores.md``.
    """

    async def load(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        """Every job, in enqueue order (ascending ``seq``), and every worker.

        A dependency always precedes its dependent. Raises
        :class:`~actorq.StoreError` if the records cannot be read or are
        inconsistent: a queue is rebuilt from all of them or not at all.
        """
        ...

    async def load_schedules(self) -> list[ScheduleRecord]:
        """Every schedule (:meth:`actorq.JobQueue.schedule`), called once, after :meth:`load`.

        Raises :class:`~actorq.StoreError` if they cannot be read.
        """
        ...

    async def commit(self, changes: Changes) -> None:
        """Make one batch of changes durable, atomically.

        After it returns, every change survives a crash; if it raises (a
        :class:`~actorq.StoreError`), none of them may be visible to the
        next :meth:`load`. A cancellation must not leave half a batch.
        """
        ...

    async def watch(self) -> None:
        """Raise :class:`~actorq.StoreError` once this store has lost the right to write.

        The queue stops serving when it raises. A store that cannot lose it
        (one process owns the records) waits forever; the queue cancels it
        when it closes.
        """
        ...

    async def close(self) -> None:
        """Release what :meth:`load` acquired. Idempotent; must not fail on cancellation."""
        ...


class MemoryStore:
    """Keeps records in this process's memory.

    Useful in tests: open a queue on the same ``MemoryStore`` twice and the
    second one is rebuilt from what the first committed, exactly as it would
    be from disk.
    """

    def __init__(self) -> None:
        self.jobs: dict[UUID, JobRecord] = {}
        self.workers: dict[UUID, WorkerRecord] = {}
        self.schedules: dict[str, ScheduleRecord] = {}
        self.commits = 0

    async def load(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        return sorted(self.jobs.values(), key=lambda r: r.seq), list(self.workers.values())

    async def load_schedules(self) -> list[ScheduleRecord]:
        return list(self.schedules.values())

    async def commit(self, changes: Changes) -> None:
        for job_id in changes.deleted_jobs:
            self.jobs.pop(job_id, None)
        for record in changes.jobs:
            self.jobs[record.id] = record
        for worker_id in changes.deleted_workers:
            self.workers.pop(worker_id, None)
        for worker in changes.workers:
            self.workers[worker.id] = worker
        for name in changes.deleted_schedules:
            self.schedules.pop(name, None)
        for schedule in changes.schedules:
            self.schedules[schedule.name] = schedule
        self.commits += 1

    async def watch(self) -> None:
        """Wait forever: nothing else writes to this process's memory."""
        await trio.sleep_forever()

    async def close(self) -> None:
        """Nothing to release: the records stay, for the next queue on this store."""
