"""A blocking client, for programs that do not run trio.

A web view, a script, a cron job or a thread pool enqueues jobs and reads
their state through :func:`connect_blocking`: a :class:`BlockingQueue` over
one websocket, each call a round trip that blocks the calling thread.

It speaks the same protocol as the trio client, through the same sans-io
session (``_session.ClientSession``: hello, limits, request ids, the rules of
``docs/protocol.md``) and the same operations (``_core._api.QueueAPI``, so a
call takes exactly the arguments of :class:`actorq.JobQueue`'s method of the
same name and raises the same errors). Only the transport differs: a plain
socket that the calling thread writes a request to and then reads until its
reply is there, answering pings on the way. There is no task, no thread and
no event loop: a request costs one ``send`` and, usually, one ``recv``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import ssl
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from .._core import _validate as v
from .._core._api import QueueAPI
from .._core._errors import ProtocolError, QueueClosedError
from .._core._protocol import JobQueue
from . import _session as ss
from . import _wire as w
from ._common import (
    _RESENDABLE,
    DEFAULT_KEEPALIVE_TIMEOUT,
    LOST_MESSAGE,
    RECEIVE_SIZE,
    ClientHandshake,
    HandshakeError,
    _check_keepalive,
    _check_options,
    _check_reconnect_timeout,
    _parse_url,
    _reply_value,
    _retryable_close,
    _tls_failure,
    _wsproto_idle,
    check_urls,
    structure_reply,
)
from ._frames import decode as decode_frames
from ._frames import encode as encode_frame

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence
    from types import TracebackType
    from typing import Self

    from .._core._operation import Operation

__all__ = ["BlockingQueue", "connect_blocking"]

log = logging.getLogger("actorq.client")

P = ParamSpec("P")
R = TypeVar("R")

_INITIAL_DELAY = 0.1  # reconnect backoff: jittered, doubling up to _MAX_DELAY
_MAX_DELAY = 5.0


class _Gone(Exception):
    """The connection is over; ``retryable`` if another one is worth opening,
    ``silent`` if its server stopped answering (the next URL is tried first)."""

    def __init__(self, message: str, *, retryable: bool = True, silent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.silent = silent


class _Slot:
    """Where the session puts the reply this thread waits for."""

    __slots__ = ("reply",)

    def __init__(self) -> None:
        self.reply: w.Message | None = None


class _Link:
    """One open websocket on a blocking socket, with its session."""

    def __init__(
        self,
        sock: socket.socket,
        ws: Connection,
        *,
        max_message_size: int,
        send_timeout: float,
        name: str,
    ) -> None:
        self.sock = sock
        self.ws = ws
        self.send_timeout = send_timeout
        self.session = ss.ClientSession[_Slot](max_message_size=max_message_size)
        self.max_message_size = max_message_size
        self.name = name
        self.inbox = bytearray()  # the start of a frame the hot path reads once whole
        self.parts: list[str | bytes] = []  # a message wsproto hands over in fragments
        self.part_size = 0
        # the close frame that ended it, told once the messages before it are read
        self.closed_with: CloseConnection | None = None

    def send(self, text: str) -> None:
        """Send one message; :class:`_Gone` if it did not go (whole or at all)."""
        self._send_raw(encode_frame(text, mask=True))

    def close(self, code: int = 1000) -> None:
        try:
            if self.ws.state is ConnectionState.OPEN:
                self.sock.settimeout(1.0)
                self.sock.sendall(self.ws.send(CloseConnection(code=code)))
        except (OSError, RemoteProtocolError):
            pass
        finally:
            self.sock.close()

    def read(self, timeout: float | None) -> list[str | bytes]:
        """The messages one read completes (maybe none); raises :class:`_Gone`
        once the connection is over, :class:`TimeoutError` if nothing arrives
        within ``timeout`` seconds (:class:`BlockingIOError` for 0)."""
        if self.closed_with is not None:
            raise self._gone()
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except (TimeoutError, BlockingIOError):
            raise
        except ssl.SSLWantReadError:  # TLS, nothing whole to read yet
            raise BlockingIOError from None
        except OSError as exc:  # a reset, and the like
            raise _Gone(f"the connection was lost: {exc}") from None
        if not data:
            raise _Gone("the server closed the connection")
        # whole data frames by the hot path, as the trio transport reads them;
        # from the first frame it does not take, wsproto reads the rest
        if self.inbox or _wsproto_idle(self.ws):
            buffer = self.inbox + data if self.inbox else data
            messages, used, stopped = decode_frames(
                buffer, masked=False, max_size=self.max_message_size
            )
            if not stopped:
                self.inbox = bytearray(buffer[used:])
                return messages
            self.inbox = bytearray()
            self.ws.receive_data(bytes(buffer[used:]))
        else:
            messages = []
            self.ws.receive_data(data)
        messages += self._events()
        if self.closed_with is not None and not messages:
            raise self._gone()
        return messages

    def _gone(self) -> _Gone:
        assert self.closed_with is not None
        code, reason = self.closed_with.code, self.closed_with.reason
        error = self.session.peer_closed(code, reason or None)
        return _Gone(error.message, retryable=_retryable_close(code))

    def _events(self) -> list[str | bytes]:
        messages: list[str | bytes] = []
        for event in self.ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                # a binary message goes to the session, which refuses it
                self.parts.append(
                    event.data if isinstance(event, TextMessage) else bytes(event.data)
                )
                self.part_size += len(event.data)
                if self.part_size > self.max_message_size:
                    self.close(ss.CLOSE_TOO_BIG)
                    raise _Gone("the server sent a message over the limit", retryable=False)
                if event.message_finished:
                    parts, self.parts, self.part_size = self.parts, [], 0
                    if isinstance(event, TextMessage):
                        messages.append("".join(parts))  # type: ignore[arg-type]
                    else:
                        messages.append(b"".join(parts))  # type: ignore[arg-type]
            elif isinstance(event, Ping):
                self._send_raw(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                # the messages before it are read first: a refused hello's
                # error reply, say, comes just before its close
                with contextlib.suppress(_Gone, RemoteProtocolError):
                    self._send_raw(self.ws.send(event.response()))
                self.sock.close()
                self.closed_with = event
                break
        return messages

    def _send_raw(self, data: bytes) -> None:
        try:
            self.sock.settimeout(self.send_timeout)  # a server that does not read
            self.sock.sendall(data)
        except OSError as exc:
            raise _Gone(f"the connection was lost: {exc}") from None


class _Operations(QueueAPI):
    """The :class:`~actorq.JobQueue` methods over a blocking call: their
    coroutines never suspend, so :func:`_run_now` drives one to its end."""

    __slots__ = ("_call",)

    def __init__(self, call: Callable[[Operation[Any, Any]], Any]) -> None:
        self._call = call

    async def _run(self, op: Operation[Any, R]) -> R:
        result: R = self._call(op)
        return result


def _run_now(coroutine: Coroutine[Any, Any, R]) -> R:
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: R = done.value
        return result
    coroutine.close()  # cannot happen: _Operations._run never awaits
    raise RuntimeError("a blocking call suspended")


class _Blocking(Generic[P, R]):
    """A :class:`QueueAPI` method as a blocking method of :class:`BlockingQueue`:
    the same arguments, the same contract, the result instead of a coroutine."""

    def __init__(self, method: Callable[Concatenate[QueueAPI, P], Coroutine[Any, Any, R]]):
        self._method = method
        self.__doc__ = method.__doc__

    def __set_name__(self, owner: type[BlockingQueue], name: str) -> None:
        # the contract is written once, on the protocol
        self.__doc__ = getattr(JobQueue, name).__doc__ or self.__doc__

    @overload
    def __get__(self, queue: None, owner: type[BlockingQueue]) -> Self: ...
    @overload
    def __get__(self, queue: BlockingQueue, owner: type[BlockingQueue]) -> Callable[P, R]: ...
    def __get__(
        self, queue: BlockingQueue | None, owner: type[BlockingQueue]
    ) -> Self | Callable[P, R]:
        if queue is None:
            return self
        method, operations = self._method, queue._operations

        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return _run_now(method(operations, *args, **kwargs))

        call.__doc__ = self.__doc__
        return call


class BlockingQueue:
    """A connection to an actorq server whose calls block: :func:`connect_blocking`.

    For code that enqueues jobs and reads their state without running trio.
    Each method takes the arguments of the :class:`actorq.JobQueue` method of
    the same name, keeps its contract, raises the same errors, and returns
    its result: ``queue.enqueue("build", {"ref": "v1"})`` returns the new
    job's id once the server has acknowledged it (and, on a durable store,
    committed it).

    The operations are the producer's and the operator's: enqueueing
    (``enqueue``, ``enqueue_many``, ``schedule``, ``unschedule``), reading
    (``job_status``, ``job``, ``wait``, ``list_jobs``, ``all_root_job_ids``,
    ``stats``, ``schedules``, ``workers``) and steering (``cancel_job``,
    ``retry_job``, ``fail_job``, ``delete_job``, ``delete_worker``).
    Running jobs (dequeue, heartbeats, finish) needs a task that refreshes
    heartbeats while the handler runs: that is :class:`actorq.Worker`'s job,
    on the trio client.

    One call at a time goes over the connection: threads that share a
    :class:`BlockingQueue` take turns (a lock), so a thread pool that
    enqueues in parallel gives each thread its own. A process forked from
    one that holds a client (a pre-forking web server) leaves the parent's
    connection alone and opens its own at its first call.

    A connection found closed before a call (a server restarted or failed
    over while this one sat idle) is replaced before the request is sent,
    to the next URL of the list, with jittered exponential backoff for up
    to ``reconnect_timeout`` seconds. A connection lost after the request
    went out leaves its outcome unknown: a read-only request (and the other
    kinds ``docs/protocol.md`` lists as sent again) is sent again on a new
    connection; any other raises :class:`actorq.QueueClosedError` saying
    the request may or may not have taken effect, exactly as the trio
    client does (``enqueue`` with a ``unique_key`` is safe to call again).
    """

    enqueue = _Blocking(QueueAPI.enqueue)
    enqueue_many = _Blocking(QueueAPI.enqueue_many)
    cancel_job = _Blocking(QueueAPI.cancel_job)
    retry_job = _Blocking(QueueAPI.retry_job)
    fail_job = _Blocking(QueueAPI.fail_job)
    delete_job = _Blocking(QueueAPI.delete_job)
    job_status = _Blocking(QueueAPI.job_status)
    job = _Blocking(QueueAPI.job)
    wait = _Blocking(QueueAPI.wait)
    list_jobs = _Blocking(QueueAPI.list_jobs)
    all_root_job_ids = _Blocking(QueueAPI.all_root_job_ids)
    stats = _Blocking(QueueAPI.stats)
    schedule = _Blocking(QueueAPI.schedule)
    unschedule = _Blocking(QueueAPI.unschedule)
    schedules = _Blocking(QueueAPI.schedules)
    workers = _Blocking(QueueAPI.workers)
    delete_worker = _Blocking(QueueAPI.delete_worker)

    def __init__(
        self,
        urls: Sequence[str],
        *,
        token: str | None,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        send_timeout: float,
        max_message_size: int,
        reconnect_timeout: float | None,
        keepalive_timeout: float | None,
    ) -> None:
        self._urls = list(urls)
        self._send_timeout = send_timeout
        self._token = token
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._max_message_size = max_message_size
        self._reconnect_timeout = reconnect_timeout
        self._keepalive_timeout = keepalive_timeout
        self._lock = threading.Lock()
        self._link: _Link | None = None
        self._url_index = 0
        self._closed = False
        self._operations = _Operations(self._call)
        _CLIENTS.add(self)

    def _forked(self) -> None:
        # In a child process (a pre-forking web server forks after the app
        # made its client): the connection is the parent's, to go on using
        # and to close. Let go of this process's descriptor, with no close
        # frame, and connect anew at the next call. The lock may have been
        # held by a thread that does not exist here.
        self._lock = threading.Lock()
        link, self._link = self._link, None
        if link is not None:
            link.sock.close()

    # ------------------------------------------------------------ lifetime

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def url(self) -> str | None:
        """The server this client is connected to now (``host:port/path``), if any."""
        link = self._link
        return None if link is None else link.name

    def close(self) -> None:
        """Close the connection (close code 1000). Later calls raise
        :class:`actorq.QueueClosedError`. Closing twice does nothing."""
        self._closed = True
        if self._lock.acquire(blocking=False):
            try:
                link, self._link = self._link, None
                if link is not None:
                    link.close()
            finally:
                self._lock.release()
            return
        # another thread is in a call: end its connection under it, and it
        # raises QueueClosedError
        link = self._link
        if link is not None:
            with contextlib.suppress(OSError):
                link.sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ calls

    def _call(self, op: Operation[Any, Any]) -> Any:
        op = op.checked()  # a bad argument fails here, before anything is sent
        resend = type(op) in _RESENDABLE
        with self._lock:
            while True:
                link = self._current()
                request_id, text = link.session.prepare(lambda i: w.Request(id=i, op=op))
                slot = _Slot()
                link.session.wait(request_id, slot)
                try:
                    link.send(text)
                    reply = self._receive(link, slot)
                except _Gone as exc:
                    self._drop(link, next_url=exc.silent)
                    if self._closed:  # close() from another thread
                        raise QueueClosedError("the queue connection was closed") from None
                    if not exc.retryable:  # never retried: the queue closes for good
                        self._closed = True
                        raise QueueClosedError(exc.message) from None
                    if resend:
                        continue
                    raise QueueClosedError(LOST_MESSAGE) from None
                except BaseException:
                    # interrupted (KeyboardInterrupt, a timeout signal): the
                    # reply may still come, on a connection nobody reads
                    self._drop(link)
                    raise
                break
        return structure_reply(_reply_value(reply), op.RESULT)

    def _receive(self, link: _Link, slot: _Slot) -> w.Message:
        """Read until ``slot`` holds its reply, keeping the connection alive."""
        keepalive = self._keepalive_timeout
        quiet_since = time.monotonic()
        pinged = False
        while slot.reply is None:
            if keepalive is None:
                wait = None
            else:
                # ping after half the keepalive timeout of silence; give up after all of it
                due = quiet_since + (keepalive if pinged else keepalive / 2)
                wait = max(0.0, due - time.monotonic())
            try:
                texts = link.read(wait)
            except TimeoutError:
                if pinged:
                    raise _Gone(
                        f"the server did not answer for {keepalive:g} s (keepalive_timeout)",
                        silent=True,
                    ) from None
                link._send_raw(link.ws.send(Ping(b"actorq")))
                pinged = True
                continue
            quiet_since, pinged = time.monotonic(), False
            for text in texts:
                self._dispatch(link, text)
        return slot.reply

    def _dispatch(self, link: _Link, text: str | bytes) -> None:
        for event in link.session.receive_frame(text):
            if type(event) is ss.Reply:
                event.waiter.reply = event.message
            elif type(event) is ss.Send:
                link.send(event.frame)
            elif type(event) is ss.Stray:
                stray = event.message
                if type(stray) is w.Error:
                    log.warning("error from server: %s %s", stray.error, stray.message)
            elif type(event) is ss.Broken:
                link.close(ss.CLOSE_PROTOCOL_ERROR)
                raise _Gone(event.error.message, retryable=False)

    def _drop(self, link: _Link, *, next_url: bool = False) -> None:
        # The next connection goes to the same URL first (a restart), unless
        # its server stopped answering; failed attempts move on round the list.
        if self._link is link:
            self._link = None
            if next_url:
                self._url_index += 1
        link.close()

    # ------------------------------------------------------------ connections

    def _current(self) -> _Link:
        """The open connection, made anew if there is none or it has ended."""
        if self._closed:
            raise QueueClosedError("the queue connection was closed")
        link = self._link
        if link is not None:
            try:
                self._drain(link)
            except _Gone as exc:
                self._drop(link)
                if not exc.retryable:
                    self._closed = True
                    raise QueueClosedError(exc.message) from None
                log.info("reconnecting: %s", exc.message)
            else:
                return link
        self._link = self._reconnect()
        return self._link

    def _drain(self, link: _Link) -> None:
        # What came while nobody read: pings to answer, or the close frame
        # (or end of stream) of a server that restarted or is shutting down.
        while True:
            try:
                texts = link.read(0.0)
            except (TimeoutError, BlockingIOError):
                return
            for text in texts:
                self._dispatch(link, text)

    def _reconnect(self) -> _Link:
        timeout = self._reconnect_timeout
        give_up = None if timeout is None else time.monotonic() + timeout
        delay = _INITIAL_DELAY
        while True:
            try:
                return self._connect_round()
            except QueueClosedError as exc:
                pause = random.uniform(delay / 2, delay)
                if give_up is not None and time.monotonic() + pause > give_up:
                    raise
                log.warning("%s; trying again in %.1f s", exc.message, pause)
            time.sleep(pause)
            delay = min(delay * 2, _MAX_DELAY)

    def _connect_round(self) -> _Link:
        """A connection to the first URL that answers, each tried once from the
        current one; :class:`QueueClosedError` saying why each failed, or the
        server's refusal (the client then closes for good)."""
        failures: list[str] = []
        for _ in range(len(self._urls)):
            url = self._urls[self._url_index % len(self._urls)]
            try:
                return self._dial(url)
            except _Refused as exc:
                self._closed = True
                raise exc.error from None
            except QueueClosedError as exc:
                failures.append(f"{url}: {exc.message}")
                self._url_index += 1
        raise QueueClosedError("cannot connect to the queue server: " + "; ".join(failures))

    def _dial(self, url: str) -> _Link:
        """A connection to ``url``, greeted; :class:`QueueClosedError` if it cannot
        be made, :class:`_Refused` if the server refuses this client."""
        host, port, resource, tls = _parse_url(url)
        deadline = time.monotonic() + self._connect_timeout
        try:
            sock = socket.create_connection((host, port), timeout=self._connect_timeout)
        except OSError as exc:
            raise QueueClosedError(f"cannot connect to {host}:{port}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                context = self._ssl_context or ssl.create_default_context()
                try:
                    sock = context.wrap_socket(sock, server_hostname=host)
                except ssl.SSLError as exc:
                    raise QueueClosedError(_tls_failure(exc)) from None
                except OSError as exc:
                    raise QueueClosedError(_tls_failure(None)) from exc
            header_host = host if port == (443 if tls else 80) else f"{host}:{port}"
            ws = _handshake(sock, header_host, resource, deadline)
            link = _Link(
                sock,
                ws,
                max_message_size=self._max_message_size,
                send_timeout=self._send_timeout,
                name=f"{host}:{port}{resource}",
            )
            self._greet(link, deadline)
        except BaseException:
            sock.close()
            raise
        return link

    def _greet(self, link: _Link, deadline: float) -> None:
        slot = _Slot()
        try:
            link.send(link.session.hello(slot, token=self._token, client="actorq-python-blocking"))
            while slot.reply is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueClosedError("the server did not answer the hello in time")
                for text in link.read(remaining):
                    self._dispatch(link, text)
        except TimeoutError:
            raise QueueClosedError("the server did not answer the hello in time") from None
        except _Gone as exc:
            if not exc.retryable:  # closed with a code not worth retrying (4001, say)
                raise _Refused(ProtocolError(exc.message)) from None
            raise QueueClosedError(exc.message) from None
        if type(slot.reply) is w.Error:
            raise _Refused(w.exception_from_reply(slot.reply))


_CLIENTS: weakref.WeakSet[BlockingQueue] = weakref.WeakSet()


def _after_fork() -> None:
    for client in list(_CLIENTS):
        client._forked()


os.register_at_fork(after_in_child=_after_fork)


class _Refused(Exception):
    """The server refused this client (a token, a version): trying again cannot help."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _handshake(sock: socket.socket, host: str, resource: str, deadline: float) -> Connection:
    """The client's side of the websocket handshake on a blocking socket."""
    handshake = ClientHandshake(host, resource)
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(handshake.request)
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            connection = handshake.receive(sock.recv(RECEIVE_SIZE))
            if connection is not None:
                return connection
    except HandshakeError as exc:
        raise QueueClosedError(f"the websocket handshake failed: {exc}") from None
    except TimeoutError:
        raise QueueClosedError(
            "the websocket handshake failed: the server did not answer in time"
        ) from None
    except OSError as exc:
        raise QueueClosedError(f"the websocket handshake failed: {exc}") from None


def connect_blocking(
    url: str | Sequence[str],
    *,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
    send_timeout: float = 10.0,
    max_message_size: int = w.DEFAULT_MAX_MESSAGE_SIZE,
    reconnect_timeout: float | None = 60.0,
    keepalive_timeout: float | None = DEFAULT_KEEPALIVE_TIMEOUT,
) -> BlockingQueue:
    """Connect to an actorq server from code that does not run trio; a :class:`BlockingQueue`.

    The arguments mean what they mean for :func:`actorq.connect`: ``url`` is
    ``ws://host:port`` or ``wss://host:port`` (TLS, verified with
    ``ssl_context`` or the system's defaults) or a list of them, tried in
    order; ``token`` is the server's bearer token; a frame the server does
    not take within ``send_timeout`` seconds ends the connection;
    ``max_message_size`` bounds the frames this client accepts.

    ``connect_timeout`` bounds each attempt to connect (TCP, TLS, the
    websocket handshake and the hello). A connection that ends later is
    replaced at the next call, round the URL list with jittered exponential
    backoff from 0.1 s doubling to 5 s, for up to ``reconnect_timeout``
    seconds (``None``: forever); meanwhile that call blocks. While a call
    waits for its reply, a server silent for half of ``keepalive_timeout``
    seconds is pinged, and one silent for all of it is given up on
    (``None`` turns the check off: a call then waits as long as its reply
    takes).

    Connects before returning: raises :class:`actorq.QueueClosedError` if no
    server answers (every URL once), :class:`actorq.ProtocolError` if the
    server refuses the connection (``unauthorized``,
    ``unsupported_version``). Use it as a context manager, or call
    :meth:`BlockingQueue.close`.
    """
    _check_options(None, max_message_size, token)
    urls = check_urls(url, ssl_context)
    queue = BlockingQueue(
        urls,
        token=token,
        ssl_context=ssl_context,
        connect_timeout=v.check_seconds(connect_timeout, "connect_timeout"),
        send_timeout=v.check_seconds(send_timeout, "send_timeout"),
        max_message_size=max_message_size,
        reconnect_timeout=_check_reconnect_timeout(reconnect_timeout),
        keepalive_timeout=_check_keepalive(keepalive_timeout),
    )
    # the first connection: each URL once, no waiting (as connect() without retry_on_start)
    queue._link = queue._connect_round()
    return queue
