"""Queue kinds for the conformance suite contributed by the postgres implementation.

``KINDS`` maps a kind name to a zero-argument factory returning an async
context manager that yields a fresh, empty :class:`actorq.JobQueue`.

Kind ``postgres`` runs a :class:`actorq.PostgresStore` on the session's
throwaway cluster (``pgserver.shared_server``), each queue in a schema of its
own, exactly as in production (commits on worker threads; the product keeps
trio's mock clock still meanwhile). Without PostgreSQL server binaries the
tests of this kind are skipped (failed under ``CI=true``).
"""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import pgserver
import trio

import actorq
from actorq._stores._postgres import PostgresStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


def new_schema() -> str:
    return f"q_{uuid.uuid4().hex[:16]}"


@asynccontextmanager
async def postgres_queue(**kwargs: Any) -> AsyncIterator[actorq.LocalQueue]:
    """A queue on a fresh schema of the session's cluster (skips without PostgreSQL)."""
    server = await trio.to_thread.run_sync(pgserver.require_server)
    store = PostgresStore(server.url(), schema=new_schema())
    async with actorq.open_queue(store, **kwargs) as queue:
        yield queue


KINDS: dict[str, Callable[[], AbstractAsyncContextManager[Any]]] = {
    "postgres": postgres_queue,
}
