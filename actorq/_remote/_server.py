"""The websocket front end: serve a queue to remote workers and clients.

One task per connection, one task per request, so a blocked ``dequeue`` never
holds up the rest of its connection. Every reply leaves through one writer task
per connection; a reply that carries a job and cannot be sent, or whose request
was cancelled first, gives the job back (:meth:`LocalQueue.release`), so no job
is lost between the queue and the socket. Nothing that happens on one
connection can escape into the server's nursery.

The protocol is described in ``docs/protocol.md``; the codec is
:mod:`actorq._remote._wire`.
"""

from __future__ import annotations

import hmac
import logging
import math
import ssl
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, TypeVar
from uuid import UUID

import attrs
import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from .._core import _validate as v
from .._core._errors import (
    DequeueTimeoutError,
    JobQueueError,
    NotExistError,
    WorkerNotExistError,
)
from .._core._models import DequeuedJob, JobState
from .._core._protocol import JobQueue
from .._core._records import Assignment
from .._core._state import QueueState
from .._core._unwrap import ErrorPolicy
from . import _wire as w

__all__ = ["QueueServer", "ServableQueue", "serve"]

log = logging.getLogger("actorq.server")

T = TypeVar("T")

DEFAULT_MAX_IN_FLIGHT = 1024

# Close codes (RFC 6455 section 7.4; 4000-4999 are ours, see docs/protocol.md).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_PROTOCOL_ERROR = 4000
CLOSE_UNAUTHORIZED = 4001
CLOSE_UNSUPPORTED_VERSION = 4002
CLOSE_HELLO_TIMEOUT = 4008


class ServableQueue(JobQueue, Protocol):
    """What the server needs from a queue: the protocol, plus running a function
    on the queue state atomically (:meth:`LocalQueue.call`) and giving back a job
    whose hand-over failed (:meth:`LocalQueue.release`). Every queue made by
    :func:`actorq.open_queue` qualifies, whatever its store."""

    async def call(self, fn: Callable[[QueueState], T]) -> T: ...

    def release(self, job: DequeuedJob) -> None: ...


def _handle(job_id: UUID, token: UUID) -> DequeuedJob:
    # release() needs only the id and the token
    return DequeuedJob(id=job_id, token=token, dependencies=[], type="", args=None, channel="")


def _from_assignment(got: Assignment) -> DequeuedJob:
    # The args stay the JSON text the queue stored: embedded, never parsed here.
    return DequeuedJob(
        id=got.id,
        token=got.token,
        dependencies=list(got.dependencies),
        type=got.type,
        args=orjson.Fragment(got.args),
        channel=got.channel,
    )


def _json_text(value: object) -> str:
    # Values decoded from a frame are plain JSON values: orjson writes them back
    # as they were (it rejects only nesting deeper than it writes).
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"value cannot be stored as JSON: {exc}") from None


def _check_token(state: QueueState, job_id: UUID, token: UUID | None) -> None:
    """A token operation touches only the job its token names.

    A job that is no longer running gets the error the plain operation gives
    (not running, canceled...); a job that runs under another token (it was
    requeued or released and handed to someone else) is out of reach.
    """
    if token is None or state.job_state(job_id) is not JobState.RUNNING:
        return
    try:
        owner = state.id_from_token(token)
    except JobQueueError:
        owner = None
    if owner != job_id:
        raise NotExistError("the token does not name this job any more")


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


@attrs.define(eq=False)
class _Request:
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    cancelled: bool = False  # by the client: the reply must not be sent


_Outgoing = tuple[str, DequeuedJob | None]


class _Connection:
    """One client connection: a reader loop, a writer task and a task per request."""

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
        self.peer_max_message_size = w.DEFAULT_MAX_MESSAGE_SIZE
        self.in_flight: dict[int, _Request] = {}
        self.outbox, self._outbox_receive = trio.open_memory_channel[_Outgoing](math.inf)
        self.close_code = CLOSE_NORMAL
        self.close_reason: str | None = None
        self._handlers: dict[type[w.Message], Callable[[Any], Any]] = {
            w.Enqueue: self._enqueue,
            w.EnqueueMany: self._enqueue_many,
            w.Dequeue: self._dequeue,
            w.DequeueById: self._dequeue_by_id,
            w.FinishJob: self._finish_job,
            w.RequeueOrFinishJob: self._requeue_or_finish_job,
            w.UpdateJobResult: self._update_job_result,
            w.FailJob: self._fail_job,
            w.CancelJob: self._cancel_job,
            w.GetJobStatus: self._job_status,
            w.GetJob: self._job,
            w.IdFromToken: self._id_from_token,
            w.GetHeartbeats: self._heartbeats,
            w.RefreshHeartbeat: self._refresh_heartbeat,
            w.RefreshHeartbeats: self._refresh_heartbeats,
            w.AllRootJobIds: self._all_root_job_ids,
            w.DeleteJob: self._delete_job,
            w.InsertWorker: self._insert_worker,
            w.UpdateWorkerStatus: self._update_worker_status,
            w.GetWorkers: self._workers,
            w.DeleteWorker: self._delete_worker,
            w.ListJobs: self._list_jobs,
            w.GetStats: self._stats,
            w.FinishAndDequeue: self._finish_and_dequeue,
        }

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
                    await self.ws.aclose(self.close_code, self.close_reason)

    async def _close_when_server_closes(self) -> None:
        await self.server._closing.wait()
        self._close(CLOSE_GOING_AWAY, "server shutting down")
        # The read loop sees the connection close and tears the rest down.
        with trio.move_on_after(self.server.close_timeout):
            await self.ws.aclose(self.close_code, self.close_reason)

    def _close(self, code: int, reason: str) -> None:
        if self.close_code == CLOSE_NORMAL:
            self.close_code, self.close_reason = code, reason[:120]  # a close reason is short

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
            self._close(CLOSE_POLICY_VIOLATION, "client does not read its replies")
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
            self._close(CLOSE_POLICY_VIOLATION, "client does not read its replies")
            self.outbox.close()  # the reader loop sees it and ends the connection
        try:
            self.outbox.send_nowait((text, job))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if job is not None:
                self.queue.release(job)

    def _send_error(self, request_id: int | None, exc: BaseException) -> None:
        self._send(w.encode(w.error_reply(request_id, exc)))

    async def _handshake(self) -> bool:
        frame: str | bytes | None = None
        with trio.move_on_after(self.server.handshake_timeout):
            try:
                frame = await self.ws.get_message()
            except ConnectionClosed:
                return False
        if frame is None:
            self._close(CLOSE_HELLO_TIMEOUT, "no hello in time")
            return False
        try:
            hello = w.decode(frame, max_size=self.server.max_message_size, kinds=("hello",))
            assert isinstance(hello, w.Hello)
        except w.ProtocolError as exc:
            if exc.reason == "unexpected_kind":
                exc = w.ProtocolError(
                    "the first message must be hello", "hello_expected", exc.request_id
                )
            self._send_error(exc.request_id, exc)
            self._close(CLOSE_PROTOCOL_ERROR, exc.reason)
            return False
        try:
            version = w.negotiate(hello.versions)
        except w.ProtocolError as exc:
            self._send_error(hello.id, exc)
            self._close(CLOSE_UNSUPPORTED_VERSION, exc.reason)
            return False
        try:
            self.allowed = self.server.authenticate(hello.token)
        except w.ProtocolError as exc:
            self._send_error(hello.id, exc)
            self._close(CLOSE_UNAUTHORIZED, exc.reason)
            return False
        self.peer_max_message_size = max(1024, hello.max_message_size)
        welcome = w.Welcome(
            id=hello.id,
            version=version,
            server="actorq",
            max_message_size=self.server.max_message_size,
            max_in_flight=self.server.max_in_flight,
        )
        self._send(w.encode(welcome))
        return True

    async def _read_loop(self, requests: trio.Nursery) -> None:
        max_size = self.server.max_message_size
        while True:
            if self.close_code != CLOSE_NORMAL:
                return
            try:
                frame = await self.ws.get_message()
            except ConnectionClosed:
                return
            try:
                message = w.decode(frame, max_size=max_size, kinds=w.CLIENT_KINDS)
            except w.ProtocolError as exc:
                if exc.reason == "binary":
                    self._close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
                    return
                self._send_error(exc.request_id, exc)
                continue
            kind = type(message)
            if kind is w.Cancel:
                entry = self.in_flight.pop(message.id, None)
                if entry is not None:
                    entry.cancelled = True
                    entry.scope.cancel()
            elif kind is w.Release:
                assert isinstance(message, w.Release)
                self.queue.release(_handle(message.job_id, message.token))
            elif kind is w.Hello:
                self._send_error(message.id, w.ProtocolError("already greeted", "unexpected_kind"))
            elif message.id in self.in_flight:
                self._send_error(
                    message.id, w.ProtocolError("a request with this id is open", "duplicate_id")
                )
            elif len(self.in_flight) >= self.server.max_in_flight:
                self._send_error(
                    message.id,
                    w.ProtocolError(
                        f"more than {self.server.max_in_flight} requests in flight",
                        "too_many_requests",
                    ),
                )
            else:
                entry = _Request()
                self.in_flight[message.id] = entry
                requests.start_soon(self._serve_request, message, entry)

    async def _serve_request(self, message: w.Message, entry: _Request) -> None:
        job: DequeuedJob | None = None
        text: str | None = None
        try:
            with entry.scope:
                reply = await self._handlers[type(message)](message)
                # No checkpoint from here on: a job in hand is either queued for
                # sending or given back, never dropped.
                if isinstance(reply, DequeuedJob):
                    job = reply
                    text = w.encode(w.Dequeued(id=message.id, job=job))
                else:
                    text = w.encode(w.Ok(id=message.id, value=reply))
        except Exception as exc:
            if not isinstance(exc, JobQueueError | TypeError | ValueError):
                log.exception("request %s failed", message.KIND)
            text = w.encode(w.error_reply(message.id, exc))
        if entry.cancelled:
            # The client cancelled this request: it expects no reply.
            if job is not None:
                self.queue.release(job)
            return
        if self.in_flight.get(message.id) is entry:
            del self.in_flight[message.id]
        assert text is not None
        if len(text) > self.peer_max_message_size:
            if job is not None:
                self.queue.release(job)
            text = w.encode(
                w.error_reply(
                    message.id,
                    w.ProtocolError("the reply is larger than the client accepts", "oversize"),
                )
            )
            job = None
        await self._send_now(text, job)

    # ------------------------------------------------------------ tenancy

    def _check_channel(self, channel: str) -> None:
        if self.allowed is not None and channel not in self.allowed:
            raise w.ProtocolError(f"channel {channel!r} is not open to this token", "forbidden")

    def _guard_job(self, state: QueueState, job_id: UUID) -> None:
        # A job outside the token's channels does not exist, as far as it can tell.
        if self.allowed is not None and state.job(job_id).channel not in self.allowed:
            raise NotExistError(f"job {job_id} does not exist")

    def _guard_worker(self, state: QueueState, worker_id: UUID) -> None:
        if self.allowed is not None:
            for worker in state.workers():
                if worker.id == worker_id and worker.channel in self.allowed:
                    return
            raise WorkerNotExistError(f"worker {worker_id} does not exist")

    def _visible(self, state: QueueState, job_id: UUID) -> bool:
        return self.allowed is None or state.job(job_id).channel in self.allowed

    # ------------------------------------------------------------ requests

    async def _enqueue(self, m: w.Enqueue) -> Any:
        job_type = v.check_job_type(m.job_type)
        channel = v.check_channel(m.channel)
        self._check_channel(channel)
        deps = v.check_uuids(m.dependencies, "dependencies")
        text = _json_text(m.args)
        return await self.queue.call(lambda s: s.enqueue(job_type, text, deps, channel))

    async def _enqueue_many(self, m: w.EnqueueMany) -> Any:
        jobs = []
        for spec in m.jobs:
            channel = v.check_channel(spec.channel)
            self._check_channel(channel)
            deps = v.check_uuids(spec.dependencies, "dependencies")
            jobs.append((v.check_job_type(spec.job_type), _json_text(spec.args), deps, channel))

        def enqueue_all(state: QueueState) -> list[UUID]:
            # All or nothing: check every dependency before adding any job.
            for _, _, deps, _ in jobs:
                for dep in deps:
                    state.job_state(dep)
            return [state.enqueue(t, a, d, c) for t, a, d, c in jobs]

        return await self.queue.call(enqueue_all)

    def _dequeue_params(
        self, job_types: list[str], channels: list[str], any_channel: bool
    ) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        types = v.check_job_types(job_types)
        if any_channel:
            # a tenant's "any channel" is any of its channels
            return types, None if self.allowed is None else tuple(sorted(self.allowed))
        chans = v.check_channels(channels)
        for channel in chans:
            self._check_channel(channel)
        return types, chans

    async def _take(
        self,
        fn: Callable[[QueueState], Assignment | None],
        types: tuple[str, ...],
        chans: tuple[str, ...] | None,
        timeout: float | None,
        worker: UUID | None,
    ) -> DequeuedJob:
        # One quick actor call takes a ready job: shielded, so a job it takes is
        # never lost to a cancellation on the way back (our caller checks for
        # cancellation before sending). Only if none is ready do we wait, through
        # the queue's own dequeue, which puts back a job that arrives too late.
        with trio.CancelScope(shield=True):
            got = await self.queue.call(fn)
        if got is not None:
            return _from_assignment(got)
        if timeout == 0:
            raise DequeueTimeoutError()
        if chans is None:
            return await self.queue.dequeue_any_channel(types, timeout=timeout, worker_id=worker)
        return await self.queue.dequeue(types, chans, timeout=timeout, worker_id=worker)

    async def _dequeue(self, m: w.Dequeue) -> Any:
        types, chans = self._dequeue_params(m.job_types, m.channels, m.any_channel)
        timeout = v.check_timeout(m.timeout)
        worker = m.worker_id
        return await self._take(
            lambda s: s.dequeue(types, chans, worker), types, chans, timeout, worker
        )

    async def _finish_and_dequeue(self, m: w.FinishAndDequeue) -> Any:
        types, chans = self._dequeue_params(m.job_types, m.channels, m.any_channel)
        timeout = v.check_timeout(m.timeout)
        text = _json_text(m.result)
        job_id, token, worker = m.job_id, m.token, m.worker_id

        def finish_then_dequeue(state: QueueState) -> Assignment | None:
            self._guard_job(state, job_id)
            _check_token(state, job_id, token)
            state.finish_job(job_id, text)
            return state.dequeue(types, chans, worker)

        return await self._take(finish_then_dequeue, types, chans, timeout, worker)

    async def _dequeue_by_id(self, m: w.DequeueById) -> Any:
        job_id, worker = m.job_id, m.worker_id

        def take(state: QueueState) -> Assignment:
            self._guard_job(state, job_id)
            return state.dequeue_by_id(job_id, worker)

        return await self._take(take, (), (), 0, worker)

    async def _finish_job(self, m: w.FinishJob) -> Any:
        text = _json_text(m.result)
        job_id, token = m.job_id, m.token

        def finish(state: QueueState) -> None:
            self._guard_job(state, job_id)
            _check_token(state, job_id, token)
            state.finish_job(job_id, text)

        return await self.queue.call(finish)

    async def _requeue_or_finish_job(self, m: w.RequeueOrFinishJob) -> Any:
        retries = v.check_max_retries(m.max_retries)
        text = _json_text(m.result)
        job_id, token = m.job_id, m.token

        def requeue(state: QueueState) -> bool:
            self._guard_job(state, job_id)
            _check_token(state, job_id, token)
            return state.requeue_or_finish_job(job_id, retries, text)

        return await self.queue.call(requeue)

    async def _update_job_result(self, m: w.UpdateJobResult) -> Any:
        text = _json_text(m.result)
        job_id, token = m.job_id, m.token

        def update(state: QueueState) -> None:
            self._guard_job(state, job_id)
            _check_token(state, job_id, token)
            state.update_job_result(job_id, text)

        return await self.queue.call(update)

    async def _fail_job(self, m: w.FailJob) -> Any:
        text = _json_text(m.result)
        job_id = m.job_id

        def fail(state: QueueState) -> None:
            self._guard_job(state, job_id)
            state.fail_job(job_id, text)

        return await self.queue.call(fail)

    async def _cancel_job(self, m: w.CancelJob) -> Any:
        job_id = m.job_id

        def cancel(state: QueueState) -> None:
            self._guard_job(state, job_id)
            state.cancel_job(job_id)

        return await self.queue.call(cancel)

    async def _delete_job(self, m: w.DeleteJob) -> Any:
        job_id = m.job_id

        def delete(state: QueueState) -> None:
            self._guard_job(state, job_id)
            state.delete_job(job_id)

        return await self.queue.call(delete)

    async def _job_status(self, m: w.GetJobStatus) -> Any:
        job_id = m.job_id

        def status(state: QueueState) -> Any:
            self._guard_job(state, job_id)
            return state.job_status(job_id)

        got = await self.queue.call(status)
        result = None if got.result is None else orjson.Fragment(got.result)
        return w.unstructure_value(attrs.evolve(got, result=result))

    async def _job(self, m: w.GetJob) -> Any:
        job_id = m.job_id

        def info(state: QueueState) -> Any:
            self._guard_job(state, job_id)
            return state.job(job_id)

        got = await self.queue.call(info)
        return w.unstructure_value(attrs.evolve(got, args=orjson.Fragment(got.args)))

    async def _id_from_token(self, m: w.IdFromToken) -> Any:
        token = m.token
        return await self.queue.call(lambda s: s.id_from_token(token))

    async def _heartbeats(self, m: w.GetHeartbeats) -> Any:
        seconds = v.check_seconds(m.older_than, "older_than")

        def heartbeats(state: QueueState) -> list[UUID]:
            tokens = state.heartbeats(seconds)
            if self.allowed is None:
                return tokens
            return [t for t in tokens if self._visible(state, state.id_from_token(t))]

        return await self.queue.call(heartbeats)

    async def _refresh_heartbeat(self, m: w.RefreshHeartbeat) -> Any:
        token = m.token
        return await self.queue.call(lambda s: s.refresh_heartbeat(token))

    async def _refresh_heartbeats(self, m: w.RefreshHeartbeats) -> Any:
        tokens = m.tokens

        def refresh(state: QueueState) -> list[UUID]:
            gone = []
            for token in tokens:
                try:
                    state.refresh_heartbeat(token)
                except JobQueueError:
                    gone.append(token)
            return gone

        return await self.queue.call(refresh)

    async def _all_root_job_ids(self, m: w.AllRootJobIds) -> Any:
        def roots(state: QueueState) -> list[UUID]:
            return [j for j in state.all_root_job_ids() if self._visible(state, j)]

        return await self.queue.call(roots)

    async def _insert_worker(self, m: w.InsertWorker) -> Any:
        channel = v.check_channel(m.channel)
        self._check_channel(channel)
        arch = v.check_str(m.arch, "arch")
        return await self.queue.call(lambda s: s.insert_worker(channel, arch))

    async def _update_worker_status(self, m: w.UpdateWorkerStatus) -> Any:
        worker_id = m.worker_id

        def update(state: QueueState) -> None:
            self._guard_worker(state, worker_id)
            state.update_worker_status(worker_id)

        return await self.queue.call(update)

    async def _workers(self, m: w.GetWorkers) -> Any:
        seconds = v.check_seconds(m.older_than, "older_than")

        def workers(state: QueueState) -> Any:
            found = state.workers(older_than=seconds)
            if self.allowed is not None:
                found = [worker for worker in found if worker.channel in self.allowed]
            return found

        return w.unstructure_value(await self.queue.call(workers))

    async def _delete_worker(self, m: w.DeleteWorker) -> Any:
        worker_id = m.worker_id

        def delete(state: QueueState) -> None:
            self._guard_worker(state, worker_id)
            state.delete_worker(worker_id)

        return await self.queue.call(delete)

    async def _list_jobs(self, m: w.ListJobs) -> Any:
        wanted, job_type, channel = m.state, m.job_type, m.channel
        limit = v.check_limit(m.limit)
        if channel is not None:
            self._check_channel(channel)

        def listing(state: QueueState) -> Any:
            if self.allowed is None or channel is not None:
                return state.list_jobs(wanted, job_type, channel, limit)
            allowed = self.allowed
            found = [j for j in state.list_jobs(wanted, job_type) if j.channel in allowed]
            return found if limit is None else found[:limit]

        return w.unstructure_value(await self.queue.call(listing))

    async def _stats(self, m: w.GetStats) -> Any:
        if self.allowed is not None:
            raise w.ProtocolError("queue statistics are not open to tenant tokens", "forbidden")
        return w.unstructure_value(await self.queue.call(QueueState.stats))
