"""Queue kinds for the conformance suite contributed by the postgres implementation.

``KINDS`` maps a kind name to a zero-argument factory returning an async
context manager that yields a fresh, empty :class:`actorq.JobQueue`.

Kind ``postgres`` runs a :class:`actorq.PostgresStore` on the session's
throwaway cluster (``pgserver.shared_server``), each queue in a schema of its
own. Without PostgreSQL server binaries the tests of this kind are skipped
(failed under ``CI=true``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pgserver
import trio
import trio.testing

import actorq
from actorq._core._records import Changes, JobRecord, WorkerRecord
from actorq._stores._postgres import PostgresStore


class ClockSafeStore:
    """A PostgresStore whose commits run inline while trio's clock is a MockClock.

    An autojumping MockClock jumps to the next deadline as soon as every task
    waits, and a task waiting for a commit on a worker thread counts as
    waiting: a dequeue timeout would fire "during" a commit that takes no
    virtual time at all. Running the same SQL without the thread hop keeps
    virtual time still, as it is for the in-memory kinds. With a real clock,
    commits take the ordinary threaded path.
    """

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def load(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        return await self.store.load()

    async def commit(self, changes: Changes) -> None:
        if isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
            self.store.commit_blocking(changes)
        else:
            await self.store.commit(changes)

    async def watch(self) -> None:
        await self.store.watch()

    async def close(self) -> None:
        await self.store.close()


def new_schema() -> str:
    return f"q_{uuid.uuid4().hex[:16]}"


@asynccontextmanager
async def postgres_queue(**kwargs: Any) -> AsyncIterator[actorq.LocalQueue]:
    """A queue on a fresh schema of the session's cluster (skips without PostgreSQL)."""
    server = await trio.to_thread.run_sync(pgserver.require_server)
    store = ClockSafeStore(PostgresStore(server.url(), schema=new_schema()))
    async with actorq.open_queue(store, **kwargs) as queue:
        yield queue


KINDS: dict[str, Callable[[], AbstractAsyncContextManager[Any]]] = {
    "postgres": postgres_queue,
}
