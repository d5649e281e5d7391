"""Clients find the live server: silent connections are given up on, and TLS
failures say what went wrong.

A server that is paused (SIGSTOP), hung, or cut off behind a blackholed
network keeps the TCP connection up and sends nothing. The client pings it
after half its keepalive timeout and leaves it once the whole timeout passes
without a byte, for the next URL. Under MockClock over memory streams, and
with a silent listener on real sockets. TLS failures on real sockets with
certificates from trustme.
"""

from __future__ import annotations

import re
import signal
import ssl
import subprocess
import sys
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from click.testing import CliRunner
from trio_websocket import wrap_server_stream

import actorq
from actorq._cli._main import main
from actorq._remote import _wire as w
from actorq._remote._client import connect_stream
from actorq._remote._server import QueueServer
from actorq._remote._transport import accept_websocket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path


async def welcome_then_silence(stream: trio.abc.Stream) -> None:
    """A server that completes the handshake and the hello, then neither reads
    nor writes again: what a client sees of a paused process."""
    ws = await accept_websocket(stream, max_message_size=1 << 20)
    assert ws is not None
    hello = w.decode(await ws.receive())
    welcome = w.Welcome(
        id=hello.id, version=2, server="x", max_message_size=1 << 20, max_in_flight=8
    )
    await ws.send(w.encode(welcome))
    await trio.sleep_forever()


class Factory:
    """Streams for connect_stream: the first to a silent server, the rest to ``server``."""

    def __init__(self, nursery: trio.Nursery, server: QueueServer) -> None:
        self.nursery = nursery
        self.server = server
        self.connections = 0

    async def __call__(self) -> trio.abc.Stream:
        self.connections += 1
        client, server_end = trio.testing.memory_stream_pair()
        handler = welcome_then_silence if self.connections == 1 else self.server.handle_stream
        self.nursery.start_soon(handler, server_end)
        return client


async def test_a_silent_server_is_left_within_the_keepalive_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        job_id = await local.enqueue("t")
        factory = Factory(nursery, QueueServer(local))
        async with connect_stream(factory, heartbeat_interval=None, keepalive_timeout=4) as remote:
            start = trio.current_time()
            # sent to the silent server, never answered; a read is safe to send again
            status = await remote.job_status(job_id)
            waited = trio.current_time() - start
            assert status.state is actorq.JobState.PENDING
            assert remote.reconnects == 1
            assert factory.connections == 2
            # given up on after 4 s of silence, and reconnected at once (first backoff <= 0.1 s)
            assert 4 <= waited <= 4.2
        nursery.cancel_scope.cancel()


async def test_a_quiet_but_live_server_is_kept(autojump_clock: trio.testing.MockClock) -> None:
    # An idle connection to a live server answers the pings: no reconnect
    # however long nothing else happens, and a call after it goes through.
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        server = QueueServer(local)

        async def factory() -> trio.abc.Stream:
            client, server_end = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle_stream, server_end)
            return client

        async with connect_stream(factory, heartbeat_interval=None, keepalive_timeout=2) as remote:
            await trio.sleep(60)
            assert remote.reconnects == 0
            assert (await remote.stats()).pending == 0
        nursery.cancel_scope.cancel()


async def test_pings_are_answered_by_any_websocket_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A server on another websocket library (trio-websocket here) answers the
    # client's pings from its own reader: an idle connection stays up.
    async def welcome_then_idle(stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as inner:
            request = await wrap_server_stream(inner, stream)
            ws = await request.accept()
            hello = w.decode(await ws.get_message())
            welcome = w.Welcome(
                id=hello.id, version=2, server="x", max_message_size=1 << 20, max_in_flight=8
            )
            await ws.send_message(w.encode(welcome))
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        client, server_end = trio.testing.memory_stream_pair()
        nursery.start_soon(welcome_then_idle, server_end)
        async with connect_stream(client, heartbeat_interval=None, keepalive_timeout=2) as remote:
            await trio.sleep(30)
            assert remote.connected
        nursery.cancel_scope.cancel()


@pytest.fixture
def idle_jump_clock() -> trio.testing.MockClock:
    # jumps only once the run is truly idle, so real loopback I/O completes first
    return trio.testing.MockClock(autojump_threshold=0.05)


async def test_connect_leaves_a_silent_server_for_the_next_url(
    idle_jump_clock: trio.testing.MockClock,
) -> None:
    # The first URL answers the handshake and the hello, then falls silent
    # (a SIGSTOPped leader); the reconnect goes to the next URL first, not back.
    silent_connections = 0
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        silent = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]

        async def serve_silently(stream: trio.SocketStream) -> None:
            nonlocal silent_connections
            silent_connections += 1
            await welcome_then_silence(stream)

        nursery.start_soon(trio.serve_listeners, serve_silently, [silent])
        server = await nursery.start(actorq.serve, local, "127.0.0.1", 0)
        urls = [
            f"ws://127.0.0.1:{silent.socket.getsockname()[1]}",
            f"ws://127.0.0.1:{server.port}",
        ]
        async with actorq.connect(urls, heartbeat_interval=None, keepalive_timeout=3) as queue:
            assert (await queue.stats()).jobs == 0
            assert queue.reconnects == 1
        assert silent_connections == 1
        nursery.cancel_scope.cancel()


@contextmanager
def serve_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``actorq serve`` on the memory store in a process of its own, and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "actorq", "--store", "memory://", "serve", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        match = re.search(r"on (ws://\S+)", proc.stderr.readline())
        assert match
        yield proc, match.group(1)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
        proc.stderr.close()


async def test_a_sigstopped_server_is_left_for_the_next_url() -> None:
    # Real processes, real time: the client is connected to A when A is
    # paused; a call then waits, and is answered by B once the connection to
    # A has been silent for keepalive_timeout. (Each server has its own
    # memory store, so which one answered shows in the job counts.)
    with serve_process() as (a, url_a), serve_process() as (_, url_b):
        async with actorq.connect(
            [url_a, url_b], heartbeat_interval=None, keepalive_timeout=1
        ) as queue:
            await queue.enqueue("t")
            assert (await queue.stats()).jobs == 1  # on A
            a.send_signal(signal.SIGSTOP)
            with trio.fail_after(30):  # a hang fails the test; the bound is keepalive_timeout
                stats = await queue.stats()
            assert stats.jobs == 0  # on B
            assert queue.reconnects == 1


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def ca() -> object:
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@asynccontextmanager
async def tls_server(ca: object) -> AsyncIterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)  # type: ignore[attr-defined]
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        server = await nursery.start(actorq.serve, local, "127.0.0.1", 0)
        tls = await nursery.start(
            lambda task_status: actorq.serve(
                local, "127.0.0.1", 0, ssl_context=context, task_status=task_status
            )
        )
        yield tls.port
        server.close()
        tls.close()


async def failure(url: str, **options: object) -> str:
    with pytest.raises(actorq.QueueClosedError) as info:
        async with actorq.connect(url, reconnect=False, connect_timeout=60, **options):  # type: ignore[arg-type]
            pass
    return str(info.value)


async def test_a_certificate_that_does_not_verify_is_named(ca: object) -> None:
    async with tls_server(ca) as port:
        # the system's CAs do not know trustme's
        message = await failure(f"wss://127.0.0.1:{port}")
    assert "the server's certificate did not verify against the trusted CA certificates" in message
    assert "--ca-file" in message


async def test_ws_to_a_tls_port_fails_at_once_saying_so(ca: object) -> None:
    async with tls_server(ca) as port:
        with trio.fail_after(30):  # far below connect_timeout: no waiting for a timeout
            message = await failure(f"ws://127.0.0.1:{port}")
    assert "wss://" in message


async def test_wss_to_a_plain_port_fails_at_once_saying_so() -> None:
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        server = await nursery.start(actorq.serve, local, "127.0.0.1", 0)
        context = ssl.create_default_context()
        with trio.fail_after(30):
            message = await failure(f"wss://127.0.0.1:{server.port}", ssl_context=context)
        server.close()
    assert "ws://" in message
    assert "TLS handshake failed" in message


async def test_the_cli_takes_a_ca_file(ca: object, tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(pem)  # type: ignore[attr-defined]
    async with tls_server(ca) as port:
        url = f"wss://127.0.0.1:{port}"

        def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
            result = CliRunner().invoke(main, [*args, "--url", url, "jobs"], env=env)
            return result.exit_code, result.output

        by_option = await trio.to_thread.run_sync(run, "--ca-file", str(pem))
        by_env = await trio.to_thread.run_sync(lambda: run(env={"ACTORQ_CA_FILE": str(pem)}))
        unverified = await trio.to_thread.run_sync(run)
    assert by_option[0] == 0, by_option[1]
    assert by_env[0] == 0, by_env[1]
    assert unverified[0] == 1
    assert "did not verify against the trusted CA certificates" in unverified[1]


def test_the_cli_names_a_ca_file_that_is_not_pem(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM\n")
    result = CliRunner().invoke(
        main, ["--ca-file", str(junk), "--url", "wss://127.0.0.1:1", "jobs"]
    )
    assert result.exit_code == 1
    assert result.output.startswith(f"actorq: the CA file {junk} cannot be read")


async def test_a_certificate_for_another_host_is_named(ca: object) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)  # type: ignore[attr-defined]
    async with tls_server(ca) as port:
        # the certificate names 127.0.0.1, not localhost
        message = await failure(f"wss://localhost:{port}", ssl_context=context)
    assert "the server's certificate is not valid for the host in the URL" in message
