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


async def _free_port() -> int:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port: int = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now: a connect is refused
    return port


async def test_retry_on_start_waits_for_a_server_that_comes_up_later(
    idle_jump_clock: trio.testing.MockClock,
) -> None:
    port = await _free_port()
    url = f"ws://127.0.0.1:{port}"
    with pytest.raises(actorq.QueueClosedError, match="cannot connect"):
        async with actorq.connect(url, heartbeat_interval=None):
            pass  # without retry_on_start the first connection is tried once
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        connected = trio.Event()

        async def worker_side() -> None:
            async with actorq.connect(
                url, heartbeat_interval=None, retry_on_start=True, reconnect_timeout=60
            ) as queue:
                assert (await queue.stats()).jobs == 1
                connected.set()

        start = trio.current_time()
        nursery.start_soon(worker_side)
        await trio.sleep(3)  # several refused rounds meanwhile
        assert not connected.is_set()
        await local.enqueue("t")
        server = await nursery.start(actorq.serve, local, "127.0.0.1", port)
        with trio.fail_after(10):
            await connected.wait()
        assert trio.current_time() - start < 3 + 5 + 1  # at most one backoff (5 s cap) late
        server.close()


async def test_retry_on_start_gives_up_after_the_reconnect_timeout(
    idle_jump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"ws://127.0.0.1:{await _free_port()}"
    start = trio.current_time()
    with pytest.raises(actorq.QueueClosedError, match="cannot connect"):
        async with actorq.connect(url, retry_on_start=True, reconnect_timeout=20):
            pass
    assert 15 <= trio.current_time() - start <= 20
    assert any("trying again" in r.getMessage() for r in caplog.records)
    with pytest.raises(TypeError, match="retry_on_start"):
        async with actorq.connect(url, retry_on_start=1):  # type: ignore[arg-type]
            pass
