"""The durable log behind the scheduler.

The scheduler's :class:`~actorq._core.QueueState` is the queue; a store only
keeps records of it, so that a restarted process can rebuild the same state.
The scheduler calls :meth:`Store.commit` once per batch of requests, and
answers none of them before that commit returns.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable
from uuid import UUID

from .._core._records import Changes, JobRecord, WorkerRecord

__all__ = ["MemoryStore", "Store"]


@runtime_checkable
class Store(Protocol):
    """What the scheduler needs from durable storage.

    ``load`` returns every job in enqueue order and every worker. ``commit``
    makes one batch of changes durable atomically: after it returns, they
    survive a crash; if it raises, none of them may be visible on the next
    ``load``. Both are called from the scheduler task only, one at a time.
    """

    async def load(self) -> tuple[list[JobRecord], list[WorkerRecord]]: ...

    async def commit(self, changes: Changes) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Keeps records in this process's memory.

    Useful in tests: open a queue on the same ``MemoryStore`` twice and the
    second one is rebuilt from what the first committed, exactly as it would
    be from disk.
    """

    def __init__(self) -> None:
        self.jobs: dict[UUID, JobRecord] = {}
        self.workers: dict[UUID, WorkerRecord] = {}
        self.commits = 0

    async def load(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        return sorted(self.jobs.values(), key=lambda r: r.seq), list(self.workers.values())

    async def commit(self, changes: Changes) -> None:
        for job_id in changes.deleted_jobs:
            self.jobs.pop(job_id, None)
        for record in changes.jobs:
            self.jobs[record.id] = record
        for worker_id in changes.deleted_workers:
            self.workers.pop(worker_id, None)
        for worker in changes.workers:
            self.workers[worker.id] = worker
        self.commits += 1

    async def close(self) -> None:
        pass
