"""The websocket transport (actorq/_remote/_transport.py), over memory streams.

Both ends are checked against trio-websocket, an independent implementation,
and against raw wsproto and raw bytes where a peer must do something
trio-websocket does not (fragments, a bare HTTP request, a refusal).
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
from functools import partial
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed as OtherClosed
from trio_websocket import wrap_client_stream, wrap_server_stream
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Pong, Request, TextMessage

from actorq._remote import _common, _transport
from actorq._remote._transport import (
    ConnectionClosed,
    HandshakeError,
    WebSocket,
    accept_websocket,
    open_websocket,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


async def test_our_server_with_another_client() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        closed: list[ConnectionClosed] = []

        async def server() -> None:
            ws = await accept_websocket(server_end, max_message_size=1000)
            assert ws is not None
            assert ws.path == "/queue?x=1"
            try:
                while True:
                    message = await ws.receive()
                    await ws.send_many([message, message])
            except ConnectionClosed as exc:
                closed.append(exc)
            await ws.aclose()

        nursery.start_soon(server)
        other = await wrap_client_stream(
            nursery,
            client_end,  # type: ignore[arg-type]
            "localhost",
            "/queue?x=1",
        )
        await other.send_message("text")
        assert [await other.get_message(), await other.get_message()] == ["text", "text"]
        await other.send_message(b"\x00bytes")
        assert await other.get_message() == b"\x00bytes"
        await other.ping(b"are you there")  # returns once the pong came
        await other.aclose(4321, "done here")
    assert closed[0].code == 4321
    assert closed[0].reason == "done here"


async def test_our_client_with_another_server() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def server() -> None:
            request = await wrap_server_stream(nursery, server_end)
            other = await request.accept()
            message = await other.get_message()
            await other.send_message(message * 2)
            await other.ping(b"ping")  # answered by our receive, while it waits
            await other.aclose(1001, "going away")

        nursery.start_soon(server)
        ws = await open_websocket(client_end, "localhost", "/", max_message_size=1000)
        await ws.send("ab")
        assert await ws.receive() == "abab"
        with pytest.raises(ConnectionClosed) as info:
            await ws.receive()
        assert (info.value.code, info.value.reason) == (1001, "going away")
        # closed stays closed: every call raises the same
        with pytest.raises(ConnectionClosed):
            await ws.send("more")
        with pytest.raises(ConnectionClosed):
            await ws.receive()
        await ws.aclose()  # never raises once closed


async def test_a_message_too_large_closes_with_1009_on_both_sides() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        seen: list[ConnectionClosed] = []

        async def server() -> None:
            ws = await accept_websocket(server_end, max_message_size=100)
            assert ws is not None
            try:
                await ws.receive()
            except ConnectionClosed as exc:
                seen.append(exc)
            await ws.aclose()

        nursery.start_soon(server)
        other = await wrap_client_stream(nursery, client_end, "localhost", "/")  # type: ignore[arg-type]
        await other.send_message("x" * 101)
        with pytest.raises(OtherClosed) as info:
            await other.get_message()
        assert info.value.reason is not None
        assert info.value.reason.code == 1009
    assert seen[0].code == 1009


async def test_fragments_are_joined_and_pings_between_them_answered() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        got: list[str | bytes] = []

        async def server() -> None:
            ws = await accept_websocket(server_end, max_message_size=1000)
            assert ws is not None
            got.append(await ws.receive())

        nursery.start_soon(server)
        raw = WSConnection(ConnectionType.CLIENT)
        await client_end.send_all(raw.send(Request(host="localhost", target="/")))
        while True:
            raw.receive_data(bytes(await client_end.receive_some()))
            if any(isinstance(e, AcceptConnection) for e in raw.events()):
                break
        data = raw.send(TextMessage(data="hel", message_finished=False))
        data += raw.send(Ping(b"p"))
        data += raw.send(TextMessage(data="lo", message_finished=True))
        await client_end.send_all(data)
        await trio.testing.wait_all_tasks_blocked()
        raw.receive_data(bytes(await client_end.receive_some()))
        assert [e for e in raw.events() if isinstance(e, Pong)] == [Pong(payload=b"p")]
    assert got == ["hello"]


async def test_a_request_that_is_not_an_upgrade_gets_an_http_error() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    await client_end.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    with trio.fail_after(5):
        assert await accept_websocket(server_end, max_message_size=1000) is None
    answer = await client_end.receive_some()
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 426"))


async def test_a_tls_hello_on_a_plain_port_is_dropped_at_once() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    await client_end.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    with trio.fail_after(5):
        assert await accept_websocket(server_end, max_message_size=1000) is None


@pytest.mark.parametrize(
    ("answer", "sentence"),
    [
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno",
            "the server refused the websocket upgrade with HTTP status 403",
        ),
        (b"\x15\x03\x03\x00\x02\x02\x46", "the server answered in TLS: use a wss:// URL"),
        (b"", "the server closed the connection during the websocket handshake"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "the server's answer is not a websocket handshake"),
    ],
)
async def test_a_failed_client_handshake_says_why(answer: bytes, sentence: str) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()

    async def server() -> None:
        await server_end.receive_some()
        if answer:
            await server_end.send_all(answer)
        await server_end.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        with pytest.raises(HandshakeError) as info:
            await open_websocket(client_end, "localhost", "/", max_message_size=1000)
    assert str(info.value).startswith(sentence)


async def test_a_dropped_stream_is_1006() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def server() -> None:
            ws = await accept_websocket(server_end, max_message_size=1000)
            assert ws is not None
            await trio.aclose_forcefully(server_end)  # no close frame

        nursery.start_soon(server)
        ws = await open_websocket(client_end, "localhost", "/", max_message_size=1000)
        with pytest.raises(ConnectionClosed) as info:
            await ws.receive()
        assert info.value.code == 1006


async def test_a_pong_waits_for_the_write_in_progress() -> None:
    # One writer at a time without a lock: a pong due while a send is under
    # way goes out right after it, whole, and the peer reads both intact.
    client_end, server_end = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:

        async def server() -> None:
            ws = await accept_websocket(server_end, max_message_size=1 << 20)
            assert ws is not None
            nursery.start_soon(ws.receive)  # answers pings while the send below blocks
            await ws.send("x" * 100_000)  # blocks: the client does not read yet

        nursery.start_soon(server)
        raw = WSConnection(ConnectionType.CLIENT)
        await client_end.send_all(raw.send(Request(host="localhost", target="/")))
        events: list[object] = []
        while not any(isinstance(e, AcceptConnection) for e in events):
            raw.receive_data(bytes(await client_end.receive_some()))
            events.extend(raw.events())
        await trio.testing.wait_all_tasks_blocked()
        await client_end.send_all(raw.send(Ping(b"mid-send")))
        await trio.testing.wait_all_tasks_blocked()
        received: list[object] = []
        while not any(isinstance(e, Pong) for e in received):
            raw.receive_data(bytes(await client_end.receive_some()))
            received.extend(raw.events())
        texts = "".join(e.data for e in received if isinstance(e, TextMessage))
        assert texts == "x" * 100_000
        assert received[-1] == Pong(payload=b"mid-send")
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _tcp_pair() -> AsyncIterator[tuple[WebSocket, WebSocket]]:
    """A server and a client websocket over a real loopback TCP connection."""
    accepted: list[WebSocket] = []
    ready = trio.Event()

    async def handle(stream: trio.SocketStream) -> None:
        ws = await accept_websocket(stream, max_message_size=1 << 22)
        assert ws is not None
        accepted.append(ws)
        ready.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            client = await open_websocket(stream, "127.0.0.1", "/", max_message_size=1 << 22)
            await ready.wait()
            async with accepted[0].stream:
                yield accepted[0], client
        nursery.cancel_scope.cancel()


async def test_send_many_nowait_writes_at_once_on_a_tcp_socket() -> None:
    async with _tcp_pair() as (server, client):
        assert server.send_many_nowait(["one", "two"])
        assert not server.unsent
        assert [await client.receive(), await client.receive()] == ["one", "two"]


async def test_what_a_full_socket_does_not_take_goes_first_with_the_next_write() -> None:
    # The client reads nothing until the server has written more than the
    # socket buffers hold: the tail waits in the websocket, and every message
    # arrives whole and in order, the one sent the usual way after them.
    big = [f"{i:06d}" + "x" * 60_000 for i in range(1000)]
    async with _tcp_pair() as (server, client):
        taken = 0
        while not server.unsent:
            assert server.send_many_nowait([big[taken]])
            taken += 1
        assert taken < len(big)
        assert not server.send_many_nowait(["refused while a tail waits"])
        got: list[str | bytes] = []

        async def read_all() -> None:
            got.extend([await client.receive() for _ in range(taken + 1)])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await server.flush()
            assert not server.unsent
            await server.send("after")
        assert got == [*big[:taken], "after"]


async def test_send_many_nowait_declines_where_it_cannot_write_at_once() -> None:
    # Not a TCP socket (a TLS stream, or here a memory stream): the caller
    # sends the usual way, and nothing was written.
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            ws = await accept_websocket(server_end, max_message_size=1000)
            assert ws is not None
            assert not ws.send_many_nowait(["no"])
            await ws.send("yes")

        nursery.start_soon(serve)
        client = await open_websocket(client_end, "localhost", "/", max_message_size=1000)
        assert await client.receive() == "yes"
    # a connection that is over: declined too
    async with _tcp_pair() as (server, client):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.aclose)
            with pytest.raises(ConnectionClosed):
                await server.receive()
        assert not server.send_many_nowait(["closed"])


async def test_a_reset_tcp_connection_is_1006_for_the_reader() -> None:
    # The read path of a TCP socket is our own (one schedule point per read):
    # a reset from the peer is ConnectionClosed(1006), as a dropped stream is.
    async with _tcp_pair() as (server, client):
        assert isinstance(client.stream, trio.SocketStream)
        client.stream.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                with pytest.raises(ConnectionClosed) as caught:
                    await server.receive()
                assert caught.value.code == 1006

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            client.stream.socket.close()  # with linger 0: an RST, not a FIN
        assert not server.send_many_nowait(["gone"])


async def test_after_a_short_read_the_reader_waits_instead_of_reading_in_vain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A read that took less than it asked for emptied the socket: the next
    # receive waits for bytes rather than first try a read that fails. A
    # message larger than one read still arrives whole, and so does one that
    # arrives while the reader already waits.
    reads: list[int] = []  # bytes each read returned; -1 for one that found none
    real = _transport._read_now

    def counted(fd: int) -> bytes:
        try:
            data = real(fd)
        except BlockingIOError:
            reads.append(-1)
            raise
        reads.append(len(data))
        return data

    monkeypatch.setattr(_transport, "_read_now", counted)
    big = "y" * (3 * _common.RECEIVE_SIZE)
    async with _tcp_pair() as (server, client):
        for message in ("one", "two", big, "three"):
            async with trio.open_nursery() as nursery:
                got: list[str | bytes] = []

                async def receive(into: list[str | bytes] = got) -> None:
                    into.append(await server.receive())

                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                await client.send(message)
            assert got == [message]
    # the first receive had read nothing yet: one read in vain at most, and
    # none after a short read
    assert reads.count(-1) <= 1
    for before, after in itertools.pairwise(reads):
        if 0 <= before < _common.RECEIVE_SIZE:
            assert after != -1
