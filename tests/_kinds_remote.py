"""Queue kinds for the conformance suite contributed by the remote implementation.

``KINDS`` maps a kind name to a zero-argument factory returning an async
context manager that yields a fresh, empty :class:`actorq.JobQueue`.

``remote`` serves an in-memory queue over an in-memory byte stream
(:func:`trio.testing.memory_stream_pair`), with the real websocket framing,
server and client on top: the whole protocol, no sockets, so MockClock
autojump stays deterministic (trio-websocket issue 94). Heartbeat refreshes
are off, since the suite checks heartbeat ages itself.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

import actorq
from actorq._remote._client import connect_stream
from actorq._remote._server import QueueServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


@asynccontextmanager
async def remote_pair(
    *,
    auth: str | None = None,
    tenants: dict[str, list[str]] | None = None,
    token: str | None = None,
    heartbeat_interval: float | None = None,
    client_max_message_size: int = 4 * 1024 * 1024,
    **server_options: Any,
) -> AsyncIterator[tuple[actorq.RemoteQueue, actorq.LocalQueue, QueueServer]]:
    """A served in-memory queue and a remote client connected to it in memory."""
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        server = QueueServer(local, auth=auth, tenants=tenants, **server_options)
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(server.handle_stream, server_stream)
        try:
            async with connect_stream(
                client_stream,
                token=token,
                heartbeat_interval=heartbeat_interval,
                max_message_size=client_max_message_size,
            ) as remote:
                yield remote, local, server
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _remote() -> AsyncIterator[actorq.RemoteQueue]:
    async with remote_pair() as (remote, _, _):
        yield remote


KINDS: dict[str, Callable[[], AbstractAsyncContextManager[Any]]] = {"remote": _remote}
