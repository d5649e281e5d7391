"""The websocket front end: serve a queue to remote workers and clients.

One task per connection, one task per request, so a blocked ``dequeue`` never
holds up the rest of its connection. Every reply leaves through one writer task
per connection; a reply that carries a job and cannot be sent, or whose request
was cancelled first, gives the job back (:meth:`LocalQueue.release`), so no job
is lost between the queue and the socket. Nothing that happens on one
connection can escape into the server's nursery.

The connection rules (hello, limits, ids, cancel, close codes) are
:class:`actorq._remote._session.ServerSession`'s: a connection here is a thin
loop that reads a frame, feeds the session and does what its event says. The
protocol is described in ``docs/protocol.md``; the codec is
:mod:`actorq._remote._wire`.
"""

from __future__ import annotations

import hmac
import logging
import math
import ssl
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from .._core import _validate as v
from .._core._errors import JobQueueError
from .._core._models import DequeuedJob
from .._core._unwrap import ErrorPolicy
from . import _session as ss
from . import _wire as w

if TYPE_CHECKING:
    from uuid import UUID

    from .._core._ops import Operation, Scope

__all__ = ["QueueServer", "ServableQueue", "serve"]

log = logging.getLogger("actorq.server")

R = TypeVar("R")

DEFAULT_MAX_IN_FLIGHT = 1024


@attrs.frozen
class _Grant:
    """What a connection's token may see: ``channels``, or every channel (``None``)."""

    channels: frozenset[str] | None


class ServableQueue(Protocol):
    """What the server needs from a queue: running an operation for a caller
    limited to some channels (:meth:`LocalQueue.execute`) and giving back a job
    whose hand-over failed (:meth:`LocalQueue.release`). Every queue made by
    :func:`actorq.open_queue` qualifies, whatever its store."""

    async def execute(self, op: Operation[R, Any], *, scope: Scope = None) -> R: ...

    def release(self, job: DequeuedJob, *, scope: Scope = None) -> None: ...


def _handle(job_id: UUID, token: UUID) -> DequeuedJob:
    # release() needs only the id and the token
    return DequeuedJob(id=job_id, token=token, dependencies=[], type="", args=None, channel="")


class QueueServer:
    """Serves one queue over websockets. Made and run by :func:`serve`.

    :meth:`handle_stream` serves one connection over any trio stream (the
    tests use in-memory streams); :meth:`close` stops the server, closing every
    connection with code 1001 and giving back jobs whose replies were not sent.
    """

    def __init__(
        self,
        queue: ServableQueue,
        *,
        auth: str | None = None,
        tenants: Mapping[str, Collection[str]] | None = None,
        max_message_size: int = w.DEFAULT_MAX_MESSAGE_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        handshake_timeout: float = 10.0,
        close_timeout: float = 2.0,
        send_timeout: float = 10.0,
    ) -> None:
        if auth is not None and not isinstance(auth, str):
            raise TypeError("auth must be a token string or None")
        if auth == "":
            raise ValueError("auth token must not be empty")
        if isinstance(max_message_size, bool) or not isinstance(max_message_size, int):
            raise TypeError("max_message_size must be an int")
        if max_message_size < 1024:
            raise ValueError("max_message_size must be at least 1024")
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError("max_in_flight must be an int")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.queue = queue
        self._auth = None if auth is None else auth.encode()
        self._tenants: list[tuple[bytes, frozenset[str]]] = []
        if tenants is not None and not isinstance(tenants, Mapping):
            raise TypeError(f"tenants must be a mapping, not {type(tenants).__name__}")
        for token, channels in (tenants or {}).items():
            if not isinstance(token, str):
                raise TypeError(f"tenant tokens must be str, not {type(token).__name__}")
            if not token:
                raise ValueError("tenant tokens must be non-empty strings")
            names = v.check_strings(channels, "tenant channels", allow_empty_items=True)
            self._tenants.append((token.encode(), frozenset(names)))
        self.max_message_size = max_message_size
        self.max_in_flight = max_in_flight
        self.handshake_timeout = v.check_seconds(handshake_timeout, "handshake_timeout")
        self.close_timeout = v.check_seconds(close_timeout, "close_timeout")
        self.send_timeout = v.check_seconds(send_timeout, "send_timeout")
        self._listeners: list[trio.SocketListener | trio.SSLListener[trio.SocketStream]] = []
        self._scope = trio.CancelScope()
        self._closing = trio.Event()
        self._handshakes: set[trio.CancelScope] = set()
        #: Connections currently open (past the websocket handshake).
        self.connections = 0

    # ------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The port of the first listener (the one bound when ``port=0`` was asked for)."""
        if not self._listeners:
            raise RuntimeError("the server is not listening")
        return self.ports[0]

    @property
    def ports(self) -> list[int]:
        out = []
        for listener in self._listeners:
            inner = (
                listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
            )
            assert isinstance(inner, trio.SocketListener)
            out.append(inner.socket.getsockname()[1])
        return out

    def close(self) -> None:
        """Stop listening and close every connection; :func:`serve` then returns.

        Synchronous. Connections get a close frame (1001) and ``close_timeout``
        seconds to finish it; in-flight requests are cancelled, so their jobs
        go back, and whatever is left after that is cut.
        """
        self._closing.set()

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    async def run(
        self,
        listeners: Sequence[trio.SocketListener | trio.SSLListener[trio.SocketStream]],
        *,
        task_status: trio.TaskStatus[QueueServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve connections from ``listeners`` until :meth:`close` or cancellation."""
        self._listeners = list(listeners)
        listening = trio.CancelScope()
        with self._scope:
            async with trio.open_nursery() as nursery:

                async def listen(*, task_status: trio.TaskStatus[object]) -> None:
                    with listening:
                        await trio.serve_listeners(
                            self.handle_stream,
                            self._listeners,
                            handler_nursery=nursery,
                            task_status=task_status,
                        )

                await nursery.start(listen)
                task_status.started(self)
                await self._closing.wait()
                listening.cancel()
                for scope in self._handshakes:
                    scope.cancel()  # connections not yet open are simply dropped
                # Connections close themselves on _closing; cut what is left after.
                nursery.cancel_scope.deadline = trio.current_time() + self.close_timeout + 1

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection on ``stream`` until either side closes it.

        Never raises (except :class:`trio.Cancelled`): whatever goes wrong on
        this connection is logged and ends this connection only.
        """
        try:
            async with trio.open_nursery() as nursery:
                ws: WebSocketConnection | None = None
                with trio.move_on_after(self.handshake_timeout) as handshake:
                    if self.closed:
                        handshake.cancel()
                    self._handshakes.add(handshake)
                    try:
                        request = await wrap_server_stream(
                            nursery,
                            stream,
                            message_queue_size=4,
                            max_message_size=self.max_message_size,
                            receive_buffer_size=65536,
                        )
                        ws = await request.accept()
                    finally:
                        self._handshakes.discard(handshake)
                if ws is not None:
                    self.connections += 1
                    try:
                        await _Connection(self, ws, stream).run()
                    finally:
                        self.connections -= 1
                nursery.cancel_scope.cancel()
        except* Exception as group:
            # Anything at all: a broken stream, a TLS error, a bug. It ends this
            # connection and nothing else (trio-websocket issues 96 and 134).
            log.debug("connection ended with an error", exc_info=group)
        finally:
            await trio.aclose_forcefully(stream)

    def authenticate(self, token: str | None) -> frozenset[str] | None:
        """The channels ``token`` may use (``None``: every channel), or raise
        :class:`ProtocolError` (``unauthorized``). Constant-time comparisons."""
        if self._auth is None and not self._tenants:
            return None
        if not isinstance(token, str) or not token:
            raise w.ProtocolError("this server requires a token", "unauthorized")
        given = token.encode()
        full = self._auth is not None and hmac.compare_digest(given, self._auth)
        allowed: frozenset[str] | None = None
        for tenant_token, channels in self._tenants:  # no early exit: constant time
            if hmac.compare_digest(given, tenant_token):
                allowed = channels
        if full:
            return None
        if allowed is not None:
            return allowed
        raise w.ProtocolError("invalid token", "unauthorized")

    def _grant(self, token: str | None) -> _Grant | None:
        # ServerSession's authenticate: a grant, or None to refuse the token
        try:
            return _Grant(self.authenticate(token))
        except w.ProtocolError:
            return None


async def serve(
    queue: ServableQueue,
    host: str | None,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    auth: str | None = None,
    tenants: Mapping[str, Collection[str]] | None = None,
    max_message_size: int = w.DEFAULT_MAX_MESSAGE_SIZE,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    handshake_timeout: float = 10.0,
    task_status: trio.TaskStatus[QueueServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``queue`` over websockets on ``host:port`` until closed or cancelled.

    Use as ``server = await nursery.start(actorq.serve, queue, host, port)``;
    ``server.port`` is the bound port (``port=0`` picks a free one; give a
    numeric ``host`` then, since a name may bind several addresses) and
    ``server.close()`` stops it.

    ``ssl_context`` serves TLS (``wss://``). ``auth`` is a shared-secret bearer
    token every client must present (compared in constant time); ``None`` and
    no ``tenants`` accept every client, for development on loopback only.
    ``tenants`` maps further tokens to the channels their connections may
    enqueue to, dequeue from and see jobs of. ``max_message_size`` (characters)
    bounds every frame both ways; ``max_in_flight`` bounds the requests one
    connection may have open (more get a ``too_many_requests`` error).

    Errors (``docs/errors.md``): no request, client or :class:`Exception`
    raised by ``queue`` stops the server; each ends one request or one
    connection. A failure to bind raises :class:`OSError` before serving
    starts. A failure of the server's own tasks (a listener, a bug) comes out
    as a :class:`JobQueueError` (untyped ones as a :class:`QueueClosedError`
    whose ``__cause__`` is the original), never in an exception group; a
    :class:`BaseException` that is not an :class:`Exception` (``SystemExit``
    raised by ``queue``, say) comes out as itself.
    """
    if host is not None:
        v.check_str(host, "host")
    port = v.check_int(port, "port", minimum=0)
    if port > 65535:
        raise ValueError(f"port must be <= 65535, not {port}")
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}")
    server = QueueServer(
        queue,
        auth=auth,
        tenants=tenants,
        max_message_size=max_message_size,
        max_in_flight=max_in_flight,
        handshake_timeout=handshake_timeout,
    )
    listeners: Sequence[trio.SocketListener | trio.SSLListener[trio.SocketStream]]
    if ssl_context is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    else:
        listeners = await trio.open_ssl_over_tcp_listeners(
            port, ssl_context, host=host, https_compatible=True
        )
    with ErrorPolicy("the server"):
        await server.run(listeners, task_status=task_status)


_Outgoing = tuple[str, DequeuedJob | None]


class _Connection:
    """One client connection: a reader loop, a writer task and a task per request.

    The reader loop feeds every frame to the connection's
    :class:`~actorq._remote._session.ServerSession` and acts on its event:
    a request gets a task (and a cancel scope the session hands back if the
    client cancels it), a frame to send goes to the writer, a release goes to
    the queue, a close ends the loop.
    """

    def __init__(
        self, server: QueueServer, ws: WebSocketConnection, stream: trio.abc.Stream
    ) -> None:
        self.server = server
        self.queue = server.queue
        self.ws = ws
        self.stream = stream
        # Frames the reader loop queues (welcome, errors) beyond what a client
        # that reads its replies can have outstanding: past it, the client is
        # flooding without reading, and the connection is closed.
        self.max_backlog = server.max_in_flight + 256
        self.allowed: frozenset[str] | None = None  # None: every channel
        self.session = ss.ServerSession(
            server._grant,
            max_message_size=server.max_message_size,
            max_in_flight=server.max_in_flight,
        )
        self.outbox, self._outbox_receive = trio.open_memory_channel[_Outgoing](math.inf)

    # ------------------------------------------------------------ plumbing

    async def run(self) -> None:
        graceful = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                try:
                    if await self._handshake():
                        async with trio.open_nursery() as requests:
                            requests.start_soon(self._close_when_server_closes)
                            await self._read_loop(requests)
                            # the peer left or broke the protocol: its waits are withdrawn
                            requests.cancel_scope.cancel()
                finally:
                    self.outbox.close()  # the writer sends what is queued, then ends
                    nursery.cancel_scope.deadline = trio.current_time() + self.server.close_timeout
        except BaseException:
            # Cancelled from outside: the websocket's own reader is cancelled too,
            # so no close handshake can complete; the stream is simply closed.
            graceful = False
            raise
        finally:
            if graceful:
                with trio.move_on_after(self.server.close_timeout) as scope:
                    scope.shield = True
                    await self.ws.aclose(self.session.close_code, self.session.close_reason)

    async def _close_when_server_closes(self) -> None:
        await self.server._closing.wait()
        close = self.session.close(ss.CLOSE_GOING_AWAY, "server shutting down")
        # The read loop sees the connection close and tears the rest down.
        with trio.move_on_after(self.server.close_timeout):
            await self.ws.aclose(close.code, close.reason)

    async def _send_now(self, text: str, job: DequeuedJob | None) -> None:
        """Send one reply from a request's task, giving its job back if that fails.

        Shielded, because a cancelled send_message would leave half a frame on
        the stream; bounded by the server's send timeout, past which the peer
        is not reading and the connection is aborted. (Sending here rather than
        through the writer task saves a scheduler pass per request.)
        """
        sent = False
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.server.send_timeout
            try:
                await self.ws.send_message(text)
                sent = True
            except ConnectionClosed:
                pass
            except Exception:  # a bug below us: the reply is lost, its job must not be
                log.exception("sending a reply failed")
        if not sent and job is not None:
            self.queue.release(job)
        if scope.cancelled_caught:
            self.session.close(ss.CLOSE_NOT_READING, "client does not read its replies")
            await trio.aclose_forcefully(self.stream)

    async def _writer(self) -> None:
        # Sends what the reader loop queues, which must never wait on the socket.
        try:
            async for text, job in self._outbox_receive:
                try:
                    await self.ws.send_message(text)
                except BaseException:
                    if job is not None:
                        self.queue.release(job)
                    raise
        except ConnectionClosed:
            pass
        finally:
            # Whatever is still queued was never sent: its jobs go back.
            while True:
                try:
                    _, job = self._outbox_receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if job is not None:
                    self.queue.release(job)
            self._outbox_receive.close()

    def _send(self, text: str, job: DequeuedJob | None = None) -> None:
        """Queue a frame for the writer; never blocks. A job that cannot be queued goes back."""
        if self.outbox.statistics().current_buffer_used >= self.max_backlog:
            self.session.close(ss.CLOSE_NOT_READING, "client does not read its replies")
            self.outbox.close()  # the reader loop sees it and ends the connection
        try:
            self.outbox.send_nowait((text, job))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if job is not None:
                self.queue.release(job)

    async def _handshake(self) -> bool:
        frame: str | bytes | None = None
        with trio.move_on_after(self.server.handshake_timeout):
            try:
                frame = await self.ws.get_message()
            except ConnectionClosed:
                return False
        if frame is None:
            self.session.hello_timed_out()
            return False
        event = self.session.receive(frame)
        if isinstance(event, ss.Greeted):
            self.allowed = event.grant.channels
            self._send(event.frame)
            return True
        if isinstance(event, ss.Close) and event.frame is not None:
            self._send(event.frame)
        return False

    async def _read_loop(self, requests: trio.Nursery) -> None:
        session = self.session
        receive = session.receive
        get_message = self.ws.get_message
        Request, Cancelled, Send = ss.Request, ss.Cancelled, ss.Send  # bound once: per frame
        while not session.closed:
            try:
                frame = await get_message()
            except ConnectionClosed:
                return
            event = receive(frame)
            # most frequent first: a request, then a cancel
            if type(event) is Request:
                event.context = trio.CancelScope()
                requests.start_soon(self._serve_request, event)
            elif type(event) is Cancelled:
                event.request.context.cancel()
            elif type(event) is Send:
                self._send(event.frame)
            elif type(event) is ss.JobReleased:
                self.queue.release(_handle(event.job_id, event.token), scope=self.allowed)
            elif type(event) is ss.Close:
                if event.frame is not None:
                    self._send(event.frame)
                return

    async def _serve_request(self, request: ss.Request) -> None:
        message = request.message
        assert isinstance(message, w.Request)
        job: DequeuedJob | None = None
        text = ""  # stays empty only if the client cancelled the request
        op = message.op
        try:
            with request.context:
                raw = await self.queue.execute(op, scope=self.allowed)
                # No checkpoint from here on: a job in hand is either queued for
                # sending or given back, never dropped.
                value = op.to_wire(raw)
                if isinstance(value, DequeuedJob):
                    job = value
                    text = w.encode(w.Dequeued(id=message.id, job=job))
                else:
                    text = w.encode(w.Ok(id=message.id, value=w.unstructure_value(value)))
        except Exception as exc:
            if not isinstance(exc, JobQueueError | TypeError | ValueError):
                log.exception("request %s failed", op.NAME)
            text = w.encode(w.error_reply(message.id, exc))
        frame = self.session.reply(request, text)
        if frame is not text:
            # Cancelled by the client (it expects no reply), or too large for it
            # (it gets an oversize error instead): a job in the reply goes back.
            if job is not None:
                self.queue.release(job)
                job = None
            if frame is None:
                return
        await self._send_now(frame, job)
