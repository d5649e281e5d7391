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

The store runs as in production: its work goes to worker threads, and the
product keeps trio's mock clock still meanwhile (``actorq._stores._threads``).

Heartbeat and worker-status clocks are not durable by design: they restart at
recovery (``docs/durability.md``; ``test_sqlite.py`` checks it). The reopening
queue carries them over from the queue it closed, so the suite's age
assertions still describe one queue that never stopped.
"""

from __future__ import annotations

import collections
import os
import tempfile
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

import actorq

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from uuid import UUID

_TMPFS = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@asynccontextmanager
async def sqlite_store() -> AsyncIterator[actorq.SqliteStore]:
    """A store on a fresh temporary file.

    The file goes on a tmpfs where there is one: these kinds test the store's
    records and recovery, not the disk, and an fsync there costs nothing, which
    keeps the suite fast. ``test_crash.py`` kills real processes on a real disk.
    """
    with tempfile.TemporaryDirectory(prefix="actorq-", dir=_TMPFS) as directory:
        yield actorq.SqliteStore(os.path.join(directory, "queue.db"))


@asynccontextmanager
async def _sqlite() -> AsyncIterator[actorq.LocalQueue]:
    async with sqlite_store() as store, actorq.open_queue(store) as queue:
        yield queue


class ReopeningQueue:
    """A :class:`actorq.JobQueue` that reopens its queue from disk before each call.

    A host task owns the open queue (trio wants a nursery exited by the task
    that entered it, and calls come from any task); a call that starts while
    nothing is in flight asks the host to close the queue and open a new one
    on the same store, then waits for it.

    Calls that wait for a reopen reach the new queue in the order they
    arrived, as they would reach a queue that never closed: each one is let
    through only after the one before it has posted its request (a
    :class:`actorq.LocalQueue` call posts before it first yields).
    """

    def __init__(self, store: actorq.SqliteStore) -> None:
        self._store = store
        self._queue: actorq.LocalQueue | None = None
        self._ready = False
        self._line: collections.deque[trio.Event] = collections.deque()
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
                self._ready = True
                self._pass_on()
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

    async def _call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        reopen = self._in_flight == 0
        self._in_flight += 1
        try:
            if reopen:
                self._ready = False
                self._cycle.set()
            if not self._ready or self._line:
                turn = trio.Event()
                self._line.append(turn)
                try:
                    await turn.wait()
                except BaseException:
                    if turn.is_set():
                        self._pass_on()
                    else:
                        self._line.remove(turn)
                    raise
            # Wake the next in line: it runs only once this task yields, and
            # this call posts its request before it first yields.
            self._pass_on()
            assert self._queue is not None
            return await getattr(self._queue, name)(*args, **kwargs)
        finally:
            self._in_flight -= 1

    def _pass_on(self) -> None:
        if self._ready and self._line:
            self._line.popleft().set()

    async def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("enqueue", *args, **kwargs)

    async def enqueue_many(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("enqueue_many", *args, **kwargs)

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

    async def retry_job(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("retry_job", *args, **kwargs)

    async def job_status(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("job_status", *args, **kwargs)

    async def job(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("job", *args, **kwargs)

    async def wait(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("wait", *args, **kwargs)

    async def schedule(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("schedule", *args, **kwargs)

    async def unschedule(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("unschedule", *args, **kwargs)

    async def schedules(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("schedules", *args, **kwargs)

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
    async with sqlite_store() as store, trio.open_nursery() as nursery:
        queue = ReopeningQueue(store)
        await nursery.start(queue.host)
        try:
            yield queue
        finally:
            nursery.cancel_scope.cancel()


KINDS: dict[str, Callable[[], AbstractAsyncContextManager[Any]]] = {
    "sqlite": _sqlite,
    "sqlite-reopen": _sqlite_reopen,
}
