"""An exception raised inside ``async with actorq.connect(...)`` reaches the caller."""

from __future__ import annotations

import uuid

import pytest
import trio
import trio.testing

import actorq


@pytest.mark.parametrize("make_error", [lambda: ValueError("x"), lambda: actorq.CanceledError()])
async def test_errors_in_the_body_propagate(make_error: object) -> None:
    async with actorq.open_queue() as queue, trio.open_nursery() as nursery:
        server = await nursery.start(actorq.serve, queue, "127.0.0.1", 0)
        error = make_error()  # type: ignore[operator]
        with pytest.raises(type(error)):
            async with actorq.connect(f"ws://127.0.0.1:{server.port}", heartbeat_interval=None):
                raise error
        with pytest.raises(actorq.NotExistError):
            async with actorq.connect(
                f"ws://127.0.0.1:{server.port}", heartbeat_interval=None
            ) as remote:
                await remote.job_status(uuid.uuid4())
        server.close()


@pytest.fixture
def idle_jump_clock() -> trio.testing.MockClock:
    # jumps only once the run is truly idle, so real loopback I/O completes first
    return trio.testing.MockClock(autojump_threshold=0.05)


async def test_a_server_that_never_completes_the_handshake_is_passed_over(
    idle_jump_clock: trio.testing.MockClock,
) -> None:
    # A paused server's kernel still accepts TCP connections; the websocket
    # handshake then never completes. connect() moves on to the next URL.
    held: list[trio.SocketStream] = []
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        silent = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        silent_port = silent.socket.getsockname()[1]

        accepting = trio.CancelScope()

        async def accept_and_hold() -> None:
            with accepting:
                while True:
                    held.append(await silent.accept())

        nursery.start_soon(accept_and_hold)
        server = await nursery.start(actorq.serve, local, "127.0.0.1", 0)
        urls = [f"ws://127.0.0.1:{silent_port}", f"ws://127.0.0.1:{server.port}"]
        start = trio.current_time()
        async with actorq.connect(urls, connect_timeout=5, heartbeat_interval=None) as queue:
            assert (await queue.stats()).jobs == 0
        assert 5 <= trio.current_time() - start < 10  # one handshake timeout, then on
        assert held  # the silent server did take the connection
        with pytest.raises(actorq.QueueClosedError, match="handshake"):
            async with actorq.connect(urls[:1], connect_timeout=5):
                pass
        accepting.cancel()
        for stream in held:
            await stream.aclose()
        await silent.aclose()
        server.close()
