"""The websocket front end: serve a queue to remote workers and clients.

Per connection, one task reads (the websocket transport,
:mod:`actorq._remote._transport`, is driven from it) and one writes. A
request that does not wait is answered from the scheduler's callback, with no
task of its own; a waiting ``dequeue`` gets a task, so it never holds up the
rest of its connection. Every reply leaves through the connection's writer;
a reply that carries a job and cannot be sent, or whose request was cancelled
first, gives the job back (:meth:`LocalQueue.release`), so no job is lost
between the queue and the socket. Nothing that happens on one
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
import ssl
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import attrs
import outcome
import trio

from .._actor._scheduler import Callback, Subscription
from .._core import _validate as v
from .._core._errors import DequeueTimeoutError, JobQueueError
from .._core._models import DequeuedJob
from .._core._operation import WaitingOperation, dequeued_for_wire
from .._core._ops import Dequeue, FinishJob, WaitForJob
from .._core._unwrap import ErrorPolicy
from . import _session as ss
from . import _wire as w
from ._transport import ConnectionClosed, WebSocket, accept_websocket

if TYPE_CHECKING:
    from uuid import UUID

    from .._actor._scheduler import Target
    from .._core._ops import Operation, Scope
    from .._core._records import Assignment

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
    limited to some channels, waiting (:meth:`LocalQueue.execute`) or not
    (:meth:`LocalQueue.submit`); giving back a job whose hand-over failed
    (:meth:`LocalQueue.release`); and feeding streams
    (:meth:`LocalQueue.subscribe`, ``settle``, ``unsubscribe``). Every queue
    made by :func:`actorq.open_queue` qualifies, whatever its store."""

    async def execute(self, op: Operation[R, Any], *, scope: Scope = None) -> R: ...

    def submit(self, op: Operation[Any, Any], target: Target, *, scope: Scope = None) -> None: ...

    def release(self, job: DequeuedJob, *, scope: Scope = None) -> None: ...

    def subscribe(self, subscription: Subscription, target: Target) -> None: ...

    def settle(
        self,
        subscription: Subscription,
        finishes: Sequence[FinishJob],
        credit: int,
        target: Target | None,
    ) -> None: ...

    def unsubscribe(self, subscription: Subscription) -> None: ...


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
            ws: WebSocket | None = None
            with trio.move_on_after(self.handshake_timeout) as handshake:
                if self.closed:
                    handshake.cancel()
                self._handshakes.add(handshake)
                try:
                    ws = await accept_websocket(stream, max_message_size=self.max_message_size)
                finally:
                    self._handshakes.discard(handshake)
            if ws is not None:
                self.connections += 1
                try:
                    await _Connection(self, ws, stream).run()
                finally:
                    self.connections -= 1
        except* Exception as group:
            # Anything at all: a broken stream, a TLS error, a bug. It ends this
            # connection and nothing else.
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


_Outgoing = tuple[str, "list[DequeuedJob] | None"]

#: Credit one stream may ask for: each unit is a waiter the scheduler keeps.
MAX_STREAM_CREDIT = 10_000
#: Streams a connection remembers after they closed, so that finishes of jobs
#: they handed out can still be settled through them.
_CLOSED_STREAMS_KEPT = 64


def _no_job() -> NoReturn:
    raise DequeueTimeoutError()


class _NoTask:
    """The context of a request answered without a task: there is nothing to cancel."""

    __slots__ = ()

    def cancel(self) -> None:
        pass


_NO_TASK = _NoTask()


class _Stream(Subscription):
    """A job stream a client opened with ``subscribe``, fed by the scheduler."""

    def __init__(
        self, connection: _Connection, request: ss.Request, op: Dequeue, credit: int
    ) -> None:
        super().__init__(op, credit, connection.allowed)
        self.connection = connection
        self.sink = connection
        self.request = request
        self.open = True  # False once cancelled by the client or ended by the queue

    # ------------------------------------------------------------ actor side

    def push(self, jobs: list[Assignment]) -> bool:
        if not self.open or self.request.cancelled:
            return False
        connection = self.connection
        unsent = connection._post_jobs(self.request.id, [dequeued_for_wire(got) for got in jobs])
        if len(unsent) == len(jobs):
            return False  # nothing went: the scheduler gives them all back
        if unsent:
            for job in unsent:
                connection.queue.release(job)
            if connection._accepting:
                # a job larger than the client accepts can never reach it: the
                # stream ends with the reason, rather than take it again and again
                self.end(w.ProtocolError("a job is larger than the client accepts", "oversize"))
                connection.queue.unsubscribe(self)
        return True

    def revoke(self, runs: list[tuple[UUID, UUID, bool]]) -> None:
        if self.open:
            message = w.Revoked(
                id=self.request.id, runs=[w.RevokedRun(j, t, c) for j, t, c in runs]
            )
            self.connection._post(w.encode(message), deferred=True)

    def end(self, error: JobQueueError) -> None:
        self.open = False
        self.connection._answer(self.request, w.encode(w.error_reply(self.request.id, error)))

    def opened(self, got: outcome.Outcome[Any]) -> bool:
        # the reply to Subscribe: None, or the error that refused the stream
        if isinstance(got, outcome.Error):
            self.open = False
            error = got.error
            if not isinstance(error, JobQueueError | TypeError | ValueError):
                log.error("subscribe failed: %r", error)
            self.connection._answer(self.request, w.encode(w.error_reply(self.request.id, error)))
        return True

    # ------------------------------------------------------------ connection side

    def cancel(self) -> None:
        """The client cancelled the subscribe: stop feeding (finishes still settle)."""
        if self.open:
            self.open = False
            self.connection.queue.unsubscribe(self)


class _Connection:
    """One client connection: a reader loop and a writer task.

    The reader loop feeds every frame to the connection's
    :class:`~actorq._remote._session.ServerSession` and acts on each event
    it returns. A request that does not wait (nearly all of them) is posted
    to the scheduler with a :class:`Callback` that encodes its reply in the
    actor's task after the commit: no task per request. A waiting dequeue
    gets a task, whose cancel scope a client ``cancel`` cancels. Streams
    (``subscribe``) are fed by the scheduler directly.

    Every outgoing message goes through :meth:`_post` to the writer, which
    sends whatever has piled up since its last send as one batch frame
    (protocol 2), so replies, pushed jobs and news of ended runs that are
    ready together travel together. A job that is not sent goes back.
    """

    def __init__(self, server: QueueServer, ws: WebSocket, stream: trio.abc.Stream) -> None:
        self.server = server
        self.queue = server.queue
        self.ws = ws
        self.stream = stream
        # Messages queued for the writer beyond what a client that reads its
        # replies can have outstanding: past it, the client is flooding
        # without reading, and the connection is closed.
        self.max_backlog = 2 * server.max_in_flight + 1024
        self.allowed: frozenset[str] | None = None  # None: every channel
        self.session = ss.ServerSession(
            server._grant,
            max_message_size=server.max_message_size,
            max_in_flight=server.max_in_flight,
        )
        self.batching = False  # protocol 2: several messages per frame
        self.version = 0  # the protocol version agreed in the handshake
        self._pending: list[_Outgoing] = []
        self._accepting = True  # False once the connection is ending: posts fail
        self._wake = trio.lowlevel.ParkingLot()
        self._writing = False  # the writer task is sending
        self._streams: dict[int, _Stream] = {}

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
                    self._stop_streams()
                    self._accepting = False  # the writer sends what is queued, then ends
                    self._wake.unpark_all()
                    nursery.cancel_scope.deadline = trio.current_time() + self.server.close_timeout
        except BaseException:
            # Cancelled from outside: no task is left to read the peer's close
            # frame, so no close handshake can complete; the stream is simply closed.
            graceful = False
            raise
        finally:
            self._accepting = False
            self._release_pending()
            if graceful:
                with trio.move_on_after(self.server.close_timeout) as scope:
                    scope.shield = True
                    await self.ws.aclose(self.session.close_code, self.session.close_reason or "")

    async def _close_when_server_closes(self) -> None:
        await self.server._closing.wait()
        close = self.session.close(ss.CLOSE_GOING_AWAY, "server shutting down")
        # The read loop sees the connection close and tears the rest down.
        with trio.move_on_after(self.server.close_timeout):
            await self.ws.aclose(close.code, close.reason)

    def _stop_streams(self) -> None:
        for stream in self._streams.values():
            stream.cancel()
        self._streams.clear()

    # ------------------------------------------------------------ sending

    def _post(
        self, text: str, jobs: list[DequeuedJob] | None = None, *, deferred: bool = False
    ) -> bool:
        """Queue a message for the writer; never blocks. False if it cannot go
        (the connection is ending): a job it carries is then the caller's to give back.

        ``deferred``: posted in the actor's task, during a round of
        deliveries, which ends with :meth:`flush`; the writer is not woken.
        """
        if not self._accepting:
            return False
        pending = self._pending
        if len(pending) >= self.max_backlog:
            self.session.close(ss.CLOSE_NOT_READING, "client does not read its replies")
            self._accepting = False
            self._wake.unpark_all()
            return False
        pending.append((text, jobs))
        if len(pending) == 1 and not deferred:
            self._wake.unpark_all()
        return True

    def flush(self) -> None:
        """Send what the actor's round queued, from the actor's task (a :class:`Sink`).

        If the socket takes the bytes now, the writer task never wakes: a
        reply or a push costs no task switch. While the writer is sending, or
        if the socket will not take them (TLS, a full buffer), the writer
        sends them, as any other message.
        """
        pending = self._pending
        if not pending or self._writing:
            return  # the writer takes them as soon as its send is done
        if self.ws.send_many_nowait([frame for frame, _ in self._frames(pending)]):
            self._pending = []
            for _, sent in pending:
                if sent is not None:
                    sent.clear()  # the stream's now, as after the writer's send
            if not self.ws.unsent:
                return
        self._wake.unpark_all()

    def _post_jobs(self, stream_id: int, jobs: list[DequeuedJob]) -> list[DequeuedJob]:
        """Queue a push of ``jobs`` (in the actor's round); return those that could not go.

        A push larger than the client accepts is split; a single job that is
        too large cannot go at all.
        """
        text = w.encode(w.Jobs(id=stream_id, jobs=jobs))
        if len(text) <= self.session.peer_max_message_size:
            return [] if self._post(text, list(jobs), deferred=True) else jobs
        if len(jobs) == 1:
            return jobs
        half = len(jobs) // 2
        return self._post_jobs(stream_id, jobs[:half]) + self._post_jobs(stream_id, jobs[half:])

    def _answer(
        self,
        request: ss.Request,
        text: str,
        job: DequeuedJob | None = None,
        *,
        deferred: bool = False,
    ) -> bool:
        """Send the reply ``text`` to ``request``. False if a job it carries did not go.

        ``deferred`` as for :meth:`_post`.
        """
        frame = self.session.reply(request, text)
        if frame is None:
            return job is None  # cancelled by the client: it expects no reply
        if frame is not text:
            self._post(frame, deferred=deferred)  # too large for the client: an error instead
            return job is None
        return self._post(frame, None if job is None else [job], deferred=deferred)

    async def _writer(self) -> None:
        # The only task that sends: whatever piled up since the last send goes
        # out together, one frame per batch that fits the client's limit.
        try:
            while True:
                while not self._pending:
                    if self.ws.unsent:  # what the socket did not take from flush()
                        if not await self._send([]):
                            self._accepting = False
                            return
                        continue
                    if not self._accepting:
                        return
                    await self._wake.park()
                batch, self._pending = self._pending, []
                # every frame of the batch in one write to the stream
                if not await self._send([frame for frame, _ in self._frames(batch)]):
                    for _, lost in batch:
                        self._release(lost)
                    self._accepting = False
                    return
                for _, sent in batch:
                    if sent is not None:
                        sent.clear()  # delivered: a later failure must not give these back
        finally:
            self._accepting = False
            self._release_pending()

    def _frames(self, batch: list[_Outgoing]) -> list[tuple[str, list[_Outgoing]]]:
        if not self.batching or len(batch) == 1:
            return [(text, [item]) for item in batch for text in (item[0],)]
        limit = self.session.peer_max_message_size - 2
        frames: list[tuple[str, list[_Outgoing]]] = []
        texts: list[str] = []
        items: list[_Outgoing] = []
        size = 0
        for item in batch:
            length = len(item[0]) + 1
            if texts and size + length > limit:
                frames.append((w.encode_batch(texts), items))
                texts, items, size = [], [], 0
            texts.append(item[0])
            items.append(item)
            size += length
        frames.append((w.encode_batch(texts), items))
        return frames

    async def _send(self, frames: list[str]) -> bool:
        """Send ``frames`` in one write; False if they did not go (the connection is over).

        Shielded, because a cancelled write would leave half a frame on the
        stream; bounded by the server's send timeout, past which the peer is
        not reading and the connection is aborted.
        """
        self._writing = True  # flush() leaves what is queued meanwhile to the writer
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.server.send_timeout
            try:
                if frames:
                    await self.ws.send_many(frames)
                else:
                    await self.ws.flush()
            except ConnectionClosed:
                return False
            except Exception:  # a bug below us: the reply is lost, its jobs must not be
                log.exception("sending a reply failed")
                return False
            else:
                return True
            finally:
                self._writing = False
        # the deadline passed
        self.session.close(ss.CLOSE_NOT_READING, "client does not read its replies")
        await trio.aclose_forcefully(self.stream)
        return False

    def _release(self, jobs: list[DequeuedJob] | None) -> None:
        if jobs:
            for job in jobs:
                self.queue.release(job)
            jobs.clear()

    def _release_pending(self) -> None:
        pending, self._pending = self._pending, []
        for _, jobs in pending:
            self._release(jobs)

    # ------------------------------------------------------------ receiving

    async def _handshake(self) -> bool:
        frame: str | bytes | None = None
        with trio.move_on_after(self.server.handshake_timeout):
            try:
                frame = await self.ws.receive()
            except ConnectionClosed:
                return False
        if frame is None:
            self.session.hello_timed_out()
            return False
        event = self.session.receive(frame)
        if isinstance(event, ss.Greeted):
            self.allowed = event.grant.channels
            self.batching = event.version >= w.STREAMS_VERSION
            self.version = event.version
            self._post(event.frame)
            return True
        if isinstance(event, ss.Close) and event.frame is not None:
            self._post(event.frame)
        return False

    async def _read_loop(self, requests: trio.Nursery) -> None:
        session = self.session
        receive = session.receive_frame
        receive_message = self.ws.receive
        Request, Cancelled, Send = ss.Request, ss.Cancelled, ss.Send  # bound once: per frame
        Op, Settle_ = w.Request, w.Settle
        while not session.closed:
            try:
                frame = await receive_message()
            except ConnectionClosed:
                return
            for event in receive(frame):
                # most frequent first: a request, then a cancel
                if type(event) is Request:
                    message = event.message
                    if type(message) is Op:
                        op = message.op
                        if isinstance(op, WaitingOperation) and op.timeout != 0:
                            event.context = trio.CancelScope()
                            requests.start_soon(self._serve_waiting, event, op)
                        elif type(op) is WaitForJob and op.timeout != 0:
                            event.context = trio.CancelScope()
                            requests.start_soon(self._serve_wait, event, op)
                        else:
                            self._submit(event, op)
                    elif type(message) is Settle_:
                        self._settle(event, message)
                    else:
                        self._subscribe(event, message)
                elif type(event) is Cancelled:
                    event.request.context.cancel()
                elif type(event) is Send:
                    self._post(event.frame)
                elif type(event) is ss.JobReleased:
                    self.queue.release(_handle(event.job_id, event.token), scope=self.allowed)
                elif type(event) is ss.Close:
                    if event.frame is not None:
                        self._post(event.frame)
                    return

    # ------------------------------------------------------------ requests

    def _submit(self, request: ss.Request, op: Operation[Any, Any]) -> None:
        request.context = _NO_TASK
        request_id = request.id
        waiting = isinstance(op, WaitingOperation)

        def answer(got: outcome.Outcome[Any]) -> bool:
            # In the actor's task, after the commit. No checkpoint: a job in
            # hand is either queued for sending or refused back to the actor.
            job: DequeuedJob | None = None
            try:
                raw = got.unwrap()
                if raw is None and waiting:  # a dequeue with timeout 0 found nothing
                    _no_job()
                value = op.to_wire(raw)
                if isinstance(value, DequeuedJob):
                    job = value
                    text = w.encode(w.Dequeued(id=request_id, job=job))
                else:
                    value = w.unstructure_value(value, self.version)
                    text = w.encode(w.Ok(id=request_id, value=value))
            except Exception as exc:
                if not isinstance(exc, JobQueueError | TypeError | ValueError):
                    log.exception("request %s failed", op.NAME)
                text = w.encode(w.error_reply(request_id, exc))
            return self._answer(request, text, job, deferred=True)

        try:
            self.queue.submit(op, Callback(answer, self), scope=self.allowed)
        except Exception as exc:  # bad arguments, or the queue closed
            if not isinstance(exc, JobQueueError | TypeError | ValueError):
                log.exception("request %s failed", op.NAME)
            self._answer(request, w.encode(w.error_reply(request_id, exc)))

    async def _serve_waiting(self, request: ss.Request, op: WaitingOperation) -> None:
        message_id = request.id
        job: DequeuedJob | None = None
        text = ""
        try:
            with request.context:
                raw = await self.queue.execute(op, scope=self.allowed)
                # No checkpoint from here on: a job in hand is either queued for
                # sending or given back, never dropped.
                value = op.to_wire(raw)
                assert isinstance(value, DequeuedJob)
                job = value
                text = w.encode(w.Dequeued(id=message_id, job=job))
        except Exception as exc:
            if not isinstance(exc, JobQueueError | TypeError | ValueError):
                log.exception("request %s failed", op.NAME)
            text = w.encode(w.error_reply(message_id, exc))
        if not text:  # cancelled by the client before a job came: it expects no reply
            self.session.reply(request, text)
            return
        if not self._answer(request, text, job) and job is not None:
            self.queue.release(job)

    async def _serve_wait(self, request: ss.Request, op: WaitForJob) -> None:
        # One task per wait: the client's cancel, or the connection ending,
        # cancels it, and the queue then forgets the wait (nothing stays behind).
        text = ""
        try:
            with request.context:
                raw = await self.queue.execute(op, scope=self.allowed)
                value = w.unstructure_value(op.to_wire(raw), self.version)
                text = w.encode(w.Ok(id=request.id, value=value))
        except Exception as exc:
            if not isinstance(exc, JobQueueError | TypeError | ValueError):
                log.exception("request %s failed", op.NAME)
            text = w.encode(w.error_reply(request.id, exc))
        if not text:  # cancelled by the client: it expects no reply
            self.session.reply(request, text)
            return
        self._answer(request, text)

    def _subscribe(self, request: ss.Request, message: w.Message) -> None:
        assert isinstance(message, w.Subscribe)
        request.context = _NO_TASK
        try:
            op, credit = self._stream_request(message)
            stream = _Stream(self, request, op, credit)
            self.queue.subscribe(stream, Callback(stream.opened))
        except Exception as exc:
            if not isinstance(exc, JobQueueError | TypeError | ValueError):
                log.exception("subscribe failed")
            self._answer(request, w.encode(w.error_reply(request.id, exc)))
            return
        request.context = stream
        self._streams[request.id] = stream
        closed = [sid for sid, s in self._streams.items() if not s.open]
        for sid in closed[: max(0, len(closed) - _CLOSED_STREAMS_KEPT)]:
            del self._streams[sid]

    def _stream_request(self, message: w.Subscribe) -> tuple[Dequeue, int]:
        if not self.batching:
            raise w.ProtocolError("subscribe needs protocol version 2", "unexpected_kind")
        credit = v.check_int(message.credit, "credit", minimum=1)
        if credit > MAX_STREAM_CREDIT:
            raise ValueError(f"credit must be at most {MAX_STREAM_CREDIT}, not {credit}")
        op = Dequeue(
            job_types=tuple(message.job_types),
            channels=() if message.any_channel else tuple(message.channels),
            any_channel=message.any_channel,
            worker_id=message.worker_id,
        ).checked()
        return op, credit

    def _open_stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise ValueError(f"no stream {stream_id} on this connection")
        return stream

    def _settle(self, request: ss.Request, message: w.Settle) -> None:
        request.context = _NO_TASK
        request_id = request.id
        try:
            stream = self._open_stream(message.stream)
            credit = v.check_int(message.credit, "credit", minimum=0)
            finishes = [
                FinishJob(job_id=f.job_id, token=f.token, result=f.result, failed=f.failed)
                for f in message.finishes
            ]
        except Exception as exc:
            self._answer(request, w.encode(w.error_reply(request_id, exc)))
            return

        def answer(got: outcome.Outcome[Any]) -> bool:
            try:
                refused: list[tuple[int, JobQueueError]] = got.unwrap()
                value = [w.Refusal(i, e.code, e.message) for i, e in refused]
                text = w.encode(w.Ok(id=request_id, value=w.unstructure_value(value)))
            except Exception as exc:
                text = w.encode(w.error_reply(request_id, exc))
            return self._answer(request, text, deferred=True)

        try:
            self.queue.settle(stream, finishes, credit, Callback(answer, self))
        except JobQueueError as exc:
            self._answer(request, w.encode(w.error_reply(request_id, exc)))
