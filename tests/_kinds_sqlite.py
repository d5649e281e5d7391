"""Queue kinds for the conformance suite contributed by the sqlite implementation.

``KINDS`` maps a kind name to a zero-argument factory returning an async
context manager that yields a fresh, empty :class:`actorq.JobQueue`.

``sqlite``
    An in-process queue on a :class:`actorq.SqliteStore` in a fresh temporary
    file: every acknowledged change goes through a real, fsynced SQLite
    transaction on a worker thread.

``sqlite-reopen``
    The same, closed and reopened on the same file before every call that
    starts while no other call is in flight, so every step of the suite runs
    on a queue rebuilt from disk (recovery). A call that overlaps another one
    (a blocked dequeue, say) goes to the queue that is open.

Two pieces of scaffolding keep these kinds deterministic, and neither changes
what the store does:

- While the store works on a thread, trio sees every task blocked, so a
  MockClock with ``autojump_threshold=0`` would jump to the next deadline
  mid-commit and ``wait_all_tasks_blocked`` would return mid-commit.
  :class:`KeepAwake` keeps one task runnable while store work is in flight,
  which is what the loop would see if the disk were infinitely fast.
- Heartbeat and worker-status clocks are not durable by design: they restart
  at recovery (``docs/durability.md``; ``test_sqlite.py`` checks it). The
  reopening queue carries them over from the queue it closed, so the suite's
  age assertions still describe one queue that never stopped.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any
from uuid import UUID

import trio
import trio.lowlevel

import actorq
from actorq._core._records import Changes, JobRecord, WorkerRecord


class KeepAwake:
    """Keeps one task runnable while store work is in flight on a thread."""

    def __init__(self) -> None:
        self._busy = 0
        self._wake = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            # a busy wait on purpose: a runnable task is what stops autojump
            while self._busy:
                await trio.lowlevel.checkpoint()
            self._wake = trio.Event()

    @contextmanager
    def busy(self) -> Iterator[None]:
        self._busy += 1
        self._wake.set()
        try:
            yield
        finally:
            self._busy -= 1


class AwakeStore:
    """A :class:`actorq.Store` that delegates to ``inner`` under :meth:`KeepAwake.busy`."""

    def __init__(self, inner: actorq.SqliteStore, awake: KeepAwake) -> None:
        self.inner = inner
        self._awake = awake

    async def load(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        with self._awake.busy():
            return await self.inner.load()

    async def commit(self, changes: Changes) -> None:
        with self._awake.busy():
            await self.inner.commit(changes)

    async def close(self) -> None:
        with self._awake.busy():
            await self.inner.close()


_TMPFS = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@asynccontextmanager
async def sqlite_store() -> AsyncIterator[tuple[AwakeStore, KeepAwake]]:
    """A store on a fresh temporary file, and the :class:`KeepAwake` it reports to.

    The file goes on a tmpfs where there is one: these kinds test the store's
    records and recovery, not the disk, and an fsync there costs nothing, which
    keeps the suite fast. ``test_crash.py`` kills real processes on a real disk.
    """
    with tempfile.TemporaryDirectory(prefix="actorq-", dir=_TMPFS) as directory:
        awake = KeepAwake()
        async with trio.open_nursery() as nursery:
            await nursery.start(awake.run)
            store = AwakeStore(actorq.SqliteStore(os.path.join(directory, "queue.db")), awake)
            try:
                yield store, awake
            finally:
                nursery.cancel_scope.cancel()


@asynccontextmanager
async def _sqlite() -> AsyncIterator[actorq.LocalQueue]:
    async with sqlite_store() as (store, _), actorq.open_queue(store) as queue:
        yield queue


class ReopeningQueue:
    """A :class:`actorq.JobQueue` that reopens its queue from disk before each call.

    A host task owns the open queue (trio wants a nursery exited by the task
    that entered it, and calls come from any task); a call that starts while
    nothing is in flight asks the host to close the queue and open a new one
    on the same store, then waits for it.
    """

    def __init__(self, store: AwakeStore, awake: KeepAwake) -> None:
        self._store = store
        self._awake = awake
        self._queue: actorq.LocalQueue | None = None
        self._ready = trio.Event()
        self._cycle = trio.Event()
        self._in_flight = 0
        self.reopens = 0

    async def host(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        clocks: tuple[dict[UUID, float], dict[UUID, float]] = ({}, {})
        started = False
        while True:
            async with actorq.open_queue(self._store) as queue:
                _set_clocks(queue, clocks)
                self._queue = queue
                self._ready.set()
                if not started:
                    task_status.started()
                    started = True
                await self._cycle.wait()
                self._cycle = trio.Event()
                # Let the old actor apply what was posted without a reply
                # (a withdrawn wait, a job given back) before it stops.
                await queue._call(lambda state: None)
                clocks = _get_clocks(queue)
            self.reopens += 1

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        reopen = self._in_flight == 0
        self._in_flight += 1
        try:
            if reopen:
                self._ready = trio.Event()
                self._cycle.set()
            with self._awake.busy():
                await self._ready.wait()
            assert self._queue is not None
            return await getattr(self._queue, name)(*args, **kwargs)
        finally:
            self._in_flight -= 1

    async def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("enqueue", *args, **kwargs)

    async def dequeue(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("dequeue", *args, **kwargs)

    async def dequeue_any_channel(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("dequeue_any_channel", *args, **kwargs)

    async def dequeue_by_id(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("dequeue_by_id", *args, **kwargs)

    async def finish_job(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("finish_job", *args, **kwargs)

    async def requeue_or_finish_job(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("requeue_or_finish_job", *args, **kwargs)

    async def update_job_result(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("update_job_result", *args, **kwargs)

    async def fail_job(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("fail_job", *args, **kwargs)

    async def cancel_job(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("cancel_job", *args, **kwargs)

    async def job_status(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("job_status", *args, **kwargs)

    async def job(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("job", *args, **kwargs)

    async def id_from_token(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("id_from_token", *args, **kwargs)

    async def heartbeats(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("heartbeats", *args, **kwargs)

    async def refresh_heartbeat(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("refresh_heartbeat", *args, **kwargs)

    async def all_root_job_ids(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("all_root_job_ids", *args, **kwargs)

    async def delete_job(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("delete_job", *args, **kwargs)

    async def insert_worker(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("insert_worker", *args, **kwargs)

    async def update_worker_status(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("update_worker_status", *args, **kwargs)

    async def workers(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("workers", *args, **kwargs)

    async def delete_worker(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("delete_worker", *args, **kwargs)

    async def list_jobs(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("list_jobs", *args, **kwargs)

    async def stats(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("stats", *args, **kwargs)


def _get_clocks(queue: actorq.LocalQueue) -> tuple[dict[UUID, float], dict[UUID, float]]:
    state = queue._scheduler.state
    jobs = {job_id: job.heartbeat for job_id, job in state._jobs.items()}
    workers = {worker_id: worker.heartbeat for worker_id, worker in state._workers.items()}
    return jobs, workers


def _set_clocks(
    queue: actorq.LocalQueue, clocks: tuple[dict[UUID, float], dict[UUID, float]]
) -> None:
    state = queue._scheduler.state
    jobs, workers = clocks
    for job_id, beat in jobs.items():
        if job_id in state._jobs:
            state._jobs[job_id].heartbeat = beat
    for worker_id, beat in workers.items():
        if worker_id in state._workers:
            state._workers[worker_id].heartbeat = beat


@asynccontextmanager
async def _sqlite_reopen() -> AsyncIterator[ReopeningQueue]:
    async with sqlite_store() as (store, awake), trio.open_nursery() as nursery:
        queue = ReopeningQueue(store, awake)
        await nursery.start(queue.host)
        try:
            yield queue
        finally:
            nursery.cancel_scope.cancel()


KINDS: dict[str, Callable[[], AbstractAsyncContextManager[Any]]] = {
    "sqlite": _sqlite,
    "sqlite-reopen": _sqlite_reopen,
}
