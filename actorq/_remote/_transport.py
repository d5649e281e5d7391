"""The websocket transport: wsproto driven from the connection's own task.

wsproto is sans-io: it turns bytes into events and events into bytes. Here a
:class:`WebSocket` reads from its trio stream into wsproto only when its owner
asks for the next message (:meth:`WebSocket.receive`), and writes the frames
of many messages with one ``send_all`` (:meth:`WebSocket.send_many`). There
is no reader task, no channel per message and no lock: a connection has one
reading task and one writing task at a time, which is how both ends of
actorq use it. A ping is answered from the reading task; if the writing task
is busy meanwhile, the pong joins its write. Frames that carry a whole data
message, nearly all of them, are written and read by :mod:`._frames` instead
of wsproto's general machinery, which takes over at the first other frame.

The handshakes (:func:`accept_websocket` on the server, :func:`open_websocket`
on the client) are wsproto's h11-based ones, with RFC 6455 framing, close
codes and ping/pong as any websocket peer expects; TLS is the stream's
business (a :class:`trio.SSLStream`).
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import TYPE_CHECKING, Final

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from ._common import (
    MAX_HANDSHAKE_SIZE,
    RECEIVE_SIZE,
    ClientHandshake,
    HandshakeError,
    _looks_like_tls,
    _wsproto_idle,
)
from ._frames import decode, encode

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from wsproto.typing import Headers

__all__ = [
    "ConnectionClosed",
    "HandshakeError",
    "WebSocket",
    "accept_websocket",
    "open_websocket",
]

log = logging.getLogger("actorq.transport")

#: Close code of a connection that ended without a close frame (RFC 6455, 7.1.5).
ABNORMAL_CLOSURE: Final = 1006
#: Close code for a message larger than the receiver accepts.
MESSAGE_TOO_BIG: Final = 1009


class ConnectionClosed(Exception):  # the name websocket libraries use
    """The websocket is closed: ``code`` and ``reason`` are the peer's (or
    ours), 1006 when the connection ended without a close frame."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"websocket closed with code {self.code}" + (
            f" ({self.reason})" if self.reason else ""
        )


def _read_now(fd: int) -> bytes:
    """Bytes from the socket ``fd`` without blocking; :class:`BlockingIOError` if none."""
    if fd < 0:
        raise trio.ClosedResourceError("the socket was closed")
    try:
        return os.read(fd, RECEIVE_SIZE)
    except BlockingIOError:
        raise
    except OSError as exc:  # a reset, and the like
        raise trio.BrokenResourceError(f"the socket failed: {exc}") from exc


class WebSocket:
    """One open websocket over a trio stream (made by :func:`accept_websocket`
    or :func:`open_websocket`).

    One task may :meth:`receive` at a time and one may send at a time
    (:meth:`send`, :meth:`send_many`); the two may run together. Messages
    longer than ``max_message_size`` (characters of a text message, bytes of
    a binary one) close the connection with 1009. :meth:`aclose` runs the
    close handshake. Every method raises :class:`ConnectionClosed` once the
    connection is closed, whichever side closed it; errors of the stream
    (a reset, a TLS failure) become :class:`ConnectionClosed` with code 1006.
    A cancelled send leaves the stream in an unknown state: callers shield
    sends, or close the stream after one is cancelled.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: Connection,
        *,
        max_message_size: int,
        path: str = "/",
        subprotocol: str | None = None,
    ) -> None:
        self.stream = stream
        # A plain TCP socket on POSIX is read and written directly (_read,
        # send_many_nowait); any other stream (TLS, in memory) through its API.
        self._socket = (
            stream.socket if type(stream) is trio.SocketStream and os.name == "posix" else None
        )
        self._drained = False  # the last read took less than it asked for
        self.max_message_size = max_message_size
        #: The request target (the server's view of the URL path and query).
        self.path = path
        self.subprotocol = subprotocol
        #: ``trio.current_time()`` when bytes last arrived (keepalive checks read it).
        self.last_received = trio.current_time()
        self._connection = connection
        self._client = connection.client  # a client masks what it sends; a server, what it reads
        self._events: Iterator[Event | str | bytes] | None = connection.events()
        self._inbox = bytearray()  # the start of a frame the hot path reads once complete
        self._parts: list[str | bytes] = []
        self._part_size = 0
        self._sending = False
        self._backlog = bytearray()  # control frames that wait for the current write
        self._receiving = False
        self._closed: ConnectionClosed | None = None
        self._closed_event = trio.Event()

    # ------------------------------------------------------------ state

    @property
    def closed(self) -> ConnectionClosed | None:
        """Why the connection closed, once it has (``None`` while open)."""
        return self._closed

    @property
    def is_open(self) -> bool:
        return self._closed is None and self._connection.state is ConnectionState.OPEN

    def _finish(self, code: int, reason: str) -> ConnectionClosed:
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason)
            self._closed_event.set()
        return self._closed

    # ------------------------------------------------------------ receiving

    async def receive(self) -> str | bytes:
        """The next whole message: ``str`` for a text message, ``bytes`` for binary.

        Answers pings and the peer's close frame on the way. Raises
        :class:`ConnectionClosed` once the connection is closed.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this websocket")
        self._receiving = True
        try:
            return await self._receive()
        finally:
            self._receiving = False

    async def _receive(self) -> str | bytes:
        connection = self._connection
        if self._closed is not None:
            raise self._closed
        while True:
            events = self._events
            if events is not None:
                for event in events:
                    data: str | bytes
                    if type(event) is str or type(event) is bytes:
                        # whole, from the hot path, which takes no payload over
                        # max_message_size bytes (a text has no more characters)
                        return event
                    if isinstance(event, TextMessage):
                        data = event.data
                    elif isinstance(event, BytesMessage):
                        data = bytes(event.data)
                    elif isinstance(event, Ping):
                        if connection.state is ConnectionState.OPEN:
                            await self._write_quietly(connection.send(event.response()))
                        continue
                    elif isinstance(event, CloseConnection):
                        await self._peer_closed(event)
                        continue
                    else:
                        continue  # a pong: its arrival already counted in last_received
                    if event.message_finished and not self._parts:  # the common case
                        if len(data) > self.max_message_size:
                            await self._too_big()
                        return data
                    self._parts.append(data)
                    self._part_size += len(data)
                    if self._part_size > self.max_message_size:
                        await self._too_big()
                    if event.message_finished:
                        parts, self._parts, self._part_size = self._parts, [], 0
                        if isinstance(data, str):
                            return "".join(parts)  # type: ignore[arg-type]
                        return b"".join(parts)  # type: ignore[arg-type]
                self._events = None
            try:
                received = await self._read()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._fail(exc)
                raise self._finish(ABNORMAL_CLOSURE, "the connection was lost") from exc
            self.last_received = trio.current_time()
            if received and (self._inbox or _wsproto_idle(connection)):
                self._events = self._take_frames(received)
                continue
            # b"" (the peer closed the stream) makes a CloseConnection(1006) event
            connection.receive_data(bytes(received) or None)
            self._events = connection.events()

    def _take_frames(self, received: bytes | bytearray) -> Iterator[Event | str | bytes]:
        # Whole data messages are read here (_frames.decode); from the first
        # frame that is anything else, wsproto reads the rest, as it reads
        # everything while it holds part of a frame or message.
        inbox = self._inbox
        if inbox:
            inbox += received
            buffer: bytes | bytearray = inbox
        else:
            buffer = received
        messages, used, stopped = decode(
            buffer, masked=not self._client, max_size=self.max_message_size
        )
        if stopped:
            self._inbox = bytearray()
            self._connection.receive_data(bytes(buffer[used:]))
            return itertools.chain(messages, self._connection.events())
        if used < len(buffer):
            self._inbox = bytearray(buffer[used:])
        elif inbox:
            self._inbox = bytearray()
        return iter(messages)

    async def _read(self) -> bytes | bytearray:
        # What trio's SocketStream.receive_some does, with one schedule point
        # per call rather than two: after waiting for the socket to become
        # readable (a schedule point), the bytes are returned at once, as
        # trio's own channels return an item after parking; only bytes that
        # were there already pay a cancel-shielded checkpoint. An idle
        # connection woken by a message thus costs one scheduler pass fewer.
        #
        # A read that took less than it asked for has most likely emptied the
        # socket: the next one waits first rather than try a read that fails.
        # Bytes that came meanwhile cost a scheduler pass either way.
        sock = self._socket
        if sock is None:
            return await self.stream.receive_some(RECEIVE_SIZE)
        if not self._drained:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data = _read_now(sock.fileno())
            except BlockingIOError:
                pass
            else:
                self._drained = len(data) < RECEIVE_SIZE
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = _read_now(sock.fileno())
            except BlockingIOError:
                continue  # woken without bytes after all: wait again
            self._drained = len(data) < RECEIVE_SIZE
            return data

    async def _peer_closed(self, event: CloseConnection) -> None:
        connection = self._connection
        reason = event.reason or ""
        if connection.state is ConnectionState.REMOTE_CLOSING:
            # the peer began closing: answer with the same code, then it is over
            await self._write_quietly(connection.send(event.response()))
        elif connection.state is ConnectionState.OPEN:
            # wsproto could not parse what came (a protocol violation, bad UTF-8):
            # the event carries the code to close with, and we close
            await self._write_quietly(connection.send(CloseConnection(event.code, reason)))
        # else: LOCAL_CLOSING became CLOSED, the answer to our close; or 1006
        raise self._finish(event.code, reason)

    async def _too_big(self) -> None:
        reason = f"message larger than {self.max_message_size}"
        if self._connection.state is ConnectionState.OPEN:
            await self._write_quietly(
                self._connection.send(CloseConnection(MESSAGE_TOO_BIG, reason))
            )
        raise self._finish(MESSAGE_TOO_BIG, reason)

    def _fail(self, exc: BaseException) -> None:
        log.debug("websocket stream failed: %r", exc)

    # ------------------------------------------------------------ sending

    async def send(self, message: str | bytes) -> None:
        """Send one message (text for ``str``, binary for ``bytes``)."""
        await self.send_many((message,))

    async def send_many(self, messages: Sequence[str | bytes]) -> None:
        """Send ``messages`` in order, with one write to the stream.

        Raises :class:`ConnectionClosed` if the connection is closed or closing.
        """
        connection = self._connection
        if self._closed is not None or connection.state is not ConnectionState.OPEN:
            raise self._closed or ConnectionClosed(ABNORMAL_CLOSURE, "the connection is closing")
        mask = self._client
        if len(messages) == 1:
            data = encode(messages[0], mask=mask)
        else:
            data = b"".join([encode(message, mask=mask) for message in messages])
        try:
            await self._write(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(exc)
            raise self._finish(ABNORMAL_CLOSURE, "the connection was lost") from exc

    def send_many_nowait(self, messages: Sequence[str | bytes]) -> bool:
        """Send ``messages`` now, from the calling task, if the socket takes them.

        For the server's actor, which answers from its own task: a plain TCP
        socket with room in its send buffer (the common case) takes the bytes
        at once, with no hop to a writer task, as an asyncio transport's
        ``write()`` does. Returns False, having sent nothing, while another
        send runs, over TLS, or once the connection is closing or failed: the
        caller sends them with :meth:`send_many` instead. Returns True once the
        bytes are the stream's: whatever the socket did not take now waits in
        the connection (:attr:`unsent`) and goes out first with the next write
        (:meth:`flush` sends it alone).
        """
        sock = self._socket
        if sock is None or self._sending or self._backlog or self._closed is not None:
            return False
        connection = self._connection
        fd = sock.fileno()
        if connection.state is not ConnectionState.OPEN or fd < 0:
            return False
        mask = self._client
        data = b"".join([encode(message, mask=mask) for message in messages])
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False  # a reset or the like: send_many reports it the usual way
        if sent < len(data):
            self._backlog += data[sent:]
        return True

    @property
    def unsent(self) -> bool:
        """True while bytes accepted by :meth:`send_many_nowait` wait for :meth:`flush`."""
        return bool(self._backlog) and not self._sending

    async def flush(self) -> None:
        """Send what :meth:`send_many_nowait` accepted but the socket did not take yet."""
        try:
            await self._write(b"")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(exc)
            raise self._finish(ABNORMAL_CLOSURE, "the connection was lost") from exc

    async def ping(self, payload: bytes = b"") -> None:
        """Send a ping; the pong (or anything else) updates :attr:`last_received`."""
        connection = self._connection
        if connection.state is ConnectionState.OPEN:
            await self._write_quietly(connection.send(Ping(payload)))

    async def _write(self, data: bytes) -> None:
        # One writer at a time, without a lock: a second writer (the reader
        # answering a ping while a send runs) leaves its bytes to the first,
        # which writes them right after its own.
        if self._sending:
            self._backlog += data
            return
        self._sending = True
        try:
            if self._backlog:  # the tail of an earlier send_many_nowait goes first
                data, self._backlog = bytes(self._backlog) + data, bytearray()
            if data:
                await self.stream.send_all(data)
            while self._backlog:
                data, self._backlog = bytes(self._backlog), bytearray()
                await self.stream.send_all(data)
        finally:
            self._sending = False

    async def _write_quietly(self, data: bytes) -> None:
        # Control frames: if the stream is gone, the reader learns it next.
        try:
            await self._write(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(exc)

    # ------------------------------------------------------------ closing

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Run the close handshake with ``code``, then close the stream.

        Waits for the peer's close frame (through the task receiving, if one
        is, else by reading and dropping messages): bound it with a timeout.
        If cancelled, the stream is closed at once. Never raises
        :class:`ConnectionClosed`.
        """
        try:
            connection = self._connection
            if self._closed is None and connection.state is ConnectionState.OPEN:
                await self._write_quietly(connection.send(CloseConnection(code, reason)))
            if self._closed is None:
                if self._receiving:
                    await self._closed_event.wait()
                else:
                    try:
                        while True:
                            await self.receive()
                    except ConnectionClosed:
                        pass
            self._finish(code, reason)
            await self.stream.aclose()
        finally:
            await trio.aclose_forcefully(self.stream)


# ---------------------------------------------------------------- handshakes


async def accept_websocket(
    stream: trio.abc.Stream,
    *,
    max_message_size: int,
    subprotocols: Sequence[str] = (),
) -> WebSocket | None:
    """The server's side of the handshake over ``stream``: read the client's
    upgrade request and accept it.

    Picks the first of the client's subprotocols found in ``subprotocols``
    (none if there is none in common). Returns ``None`` (after answering with
    an HTTP error where one can be sent) if the peer sends something that is
    not a websocket upgrade request, speaks TLS to a plain port, or leaves.
    Stream errors propagate; bound it with a timeout.
    """
    ws = WSConnection(ConnectionType.SERVER)
    received = 0
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return None
        if received == 0 and _looks_like_tls(data):
            log.debug("a TLS client on a plain websocket port")
            return None  # closing at once makes its TLS handshake fail fast
        received += len(data)
        try:
            ws.receive_data(bytes(data))
        except RemoteProtocolError as exc:
            log.debug("bad websocket upgrade request: %s", exc)
            hint = exc.event_hint
            if isinstance(hint, RejectConnection):
                await _reject(stream, ws, hint)
            return None
        for event in ws.events():
            if isinstance(event, Request):
                chosen = next((p for p in event.subprotocols if p in subprotocols), None)
                await stream.send_all(ws.send(AcceptConnection(subprotocol=chosen)))
                assert ws.connection is not None
                return WebSocket(
                    stream,
                    ws.connection,
                    max_message_size=max_message_size,
                    path=event.target,
                    subprotocol=chosen,
                )
        if received > MAX_HANDSHAKE_SIZE:
            await _reject(stream, ws, RejectConnection(status_code=431))
            return None


async def _reject(stream: trio.abc.Stream, ws: WSConnection, event: RejectConnection) -> None:
    try:
        await stream.send_all(ws.send(event))
    except Exception as exc:  # a refusal that cannot be sent changes nothing
        log.debug("could not send the handshake refusal: %r", exc)


async def open_websocket(
    stream: trio.abc.Stream,
    host: str,
    resource: str,
    *,
    max_message_size: int,
    subprotocols: Sequence[str] = (),
    extra_headers: Headers | None = None,
) -> WebSocket:
    """The client's side of the handshake over ``stream`` (``host`` is the
    ``Host`` header, ``resource`` the request target).

    Raises :class:`HandshakeError`, saying why in one sentence, if the server
    refuses the upgrade, answers with something that is not HTTP (TLS on a
    ``ws://`` URL, say), or closes the connection first. Stream errors
    propagate; bound it with a timeout.
    """
    handshake = ClientHandshake(
        host, resource, subprotocols=subprotocols, extra_headers=extra_headers
    )
    await stream.send_all(handshake.request)
    while True:
        connection = handshake.receive(await stream.receive_some(RECEIVE_SIZE))
        if connection is not None:
            return WebSocket(
                stream,
                connection,
                max_message_size=max_message_size,
                path=resource,
                subprotocol=handshake.subprotocol,
            )
