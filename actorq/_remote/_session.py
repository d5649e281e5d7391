"""The connection rules of the remote protocol, sans I/O.

:class:`ServerSession` and :class:`ClientSession` are synchronous state
machines in the manner of h11 and wsproto: they take the text frames one side
received and return events for the application and frames for it to send.
They hold the rules of ``docs/protocol.md`` that concern a connection rather
than an operation: hello and welcome, version negotiation, authentication,
frame size limits, request ids, requests in flight, ``cancel``, ``release``
and the close codes. Requests themselves are opaque here: a session reads a
request's ``id`` and class, never its fields. Nothing here imports trio or
does I/O; timers (the hello deadline, send timeouts) belong to the caller,
which tells the session when one fired.

A session never raises on what the peer sends: every frame, however broken,
becomes an event. :class:`SessionError` is raised only for a misuse by the
application (answering a request twice, sending before the hello).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from .._core._errors import QueueClosedError
from . import _wire as w

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from uuid import UUID

# Close codes (RFC 6455 section 7.4; 4000-4999 are the protocol's own).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_BINARY: Final = 1003
CLOSE_NOT_READING: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_PROTOCOL_ERROR: Final = 4000
CLOSE_UNAUTHORIZED: Final = 4001
CLOSE_UNSUPPORTED_VERSION: Final = 4002
CLOSE_HELLO_TIMEOUT: Final = 4008

G = TypeVar("G")
W = TypeVar("W")

_HELLO, _OPEN, _CLOSED = 0, 1, 2

# Bound once, since the receive paths run for every message.
_decode = w.decode
_decode_frame = w.decode_frame
_CLIENT_KINDS = w.CLIENT_KINDS
_SERVER_KINDS = w.SERVER_KINDS
_Cancel, _Release, _Hello, _Request = w.Cancel, w.Release, w.Hello, w.Request
_Welcome, _Dequeued = w.Welcome, w.Dequeued
_Jobs, _Revoked = w.Jobs, w.Revoked
_WAITING, _CANCELLED, _ANSWERED = 0, 1, 2


class SessionError(RuntimeError):
    """The application used a session against its contract (a bug in the caller)."""


# ------------------------------------------------------------------ events
# Plain slotted classes rather than attrs ones: one is made per message, and a
# bare __init__ is the cheapest way to make it.


class Send:
    """Send ``frame`` to the peer; nothing else to do."""

    __slots__ = ("frame",)

    def __init__(self, frame: str) -> None:
        self.frame = frame


class Close:
    """Send ``frame`` (an error reply) if it is not ``None``, then close with ``code``.

    The session reads nothing more: :meth:`ServerSession.receive` ignores
    whatever arrives after it.
    """

    __slots__ = ("code", "frame", "reason")

    def __init__(self, code: int, reason: str, frame: str | None) -> None:
        self.code = code
        self.reason = reason
        self.frame = frame


class Greeted(Generic[G]):
    """The hello was accepted: send ``frame`` (the welcome). ``grant`` is what the
    ``authenticate`` callable returned for the client's token."""

    __slots__ = ("frame", "grant", "version")

    def __init__(self, frame: str, version: int, grant: G) -> None:
        self.frame = frame
        self.version = version
        self.grant = grant


class Request:
    """A request accepted into a slot: serve it, then pass the reply to
    :meth:`ServerSession.reply` (exactly once, even when it was cancelled).

    ``context`` belongs to the application, which keeps there whatever it needs
    to stop serving the request (the server keeps a cancel scope).
    """

    __slots__ = ("context", "id", "message", "state")

    def __init__(self, request_id: int, message: w.Message) -> None:
        self.id = request_id
        self.message = message
        self.state = _WAITING
        self.context: Any = None

    @property
    def cancelled(self) -> bool:
        """True once the client cancelled this request: it gets no reply."""
        return self.state == _CANCELLED


class Cancelled:
    """The client cancelled ``request``: stop serving it. Its slot is free already,
    and :meth:`ServerSession.reply` will send nothing for it."""

    __slots__ = ("request",)

    def __init__(self, request: Request) -> None:
        self.request = request


class JobReleased:
    """The client gives back a job it received and will not run (a ``release``)."""

    __slots__ = ("job_id", "token")

    def __init__(self, job_id: UUID, token: UUID) -> None:
        self.job_id = job_id
        self.token = token


ServerEvent = Request | Send | Cancelled | JobReleased | Greeted[G] | Close | None


# ------------------------------------------------------------------ server


class ServerSession(Generic[G]):
    """The server's side of one connection.

    ``authenticate(token)`` decides whether the hello's token (``None`` when
    it gave none) may connect: it returns a grant (anything the application
    wants to know later, such as the channels open to that token) or ``None``
    to refuse. ``max_message_size`` bounds the frames the server accepts, in
    characters; ``max_in_flight`` the requests one connection may have open.

    Feed every received frame to :meth:`receive` and act on the event it
    returns; pass every request's reply to :meth:`reply`.
    """

    __slots__ = (
        "_authenticate",
        "_greeted",
        "_in_flight",
        "_server",
        "_state",
        "_versions",
        "close_code",
        "close_reason",
        "max_in_flight",
        "max_message_size",
        "peer_max_message_size",
        "version",
    )

    def __init__(
        self,
        authenticate: Callable[[str | None], G | None],
        *,
        max_message_size: int = w.DEFAULT_MAX_MESSAGE_SIZE,
        max_in_flight: int = 1024,
        versions: Iterable[int] = w.SUPPORTED_VERSIONS,
        server: str = "actorq",
    ) -> None:
        if not callable(authenticate):
            raise TypeError("authenticate must be callable")
        for name, value, least in (
            ("max_message_size", max_message_size, 1024),
            ("max_in_flight", max_in_flight, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int")
            if value < least:
                raise ValueError(f"{name} must be at least {least}")
        self._authenticate = authenticate
        self._versions = tuple(versions)
        #: The protocol version agreed in the handshake (0 before it).
        self.version = 0
        self._server = server
        self._state = _HELLO
        self._greeted = False
        self._in_flight: dict[int, Request] = {}
        self.max_message_size = max_message_size
        self.max_in_flight = max_in_flight
        #: The largest frame the client accepts (from its hello).
        self.peer_max_message_size = w.DEFAULT_MAX_MESSAGE_SIZE
        #: How the connection is to be closed: 1000 until a rule says otherwise.
        self.close_code = CLOSE_NORMAL
        self.close_reason: str | None = None

    @property
    def in_flight(self) -> int:
        """Requests accepted and neither answered nor cancelled."""
        return len(self._in_flight)

    @property
    def greeted(self) -> bool:
        """True once a hello was accepted (even if the connection closed since)."""
        return self._greeted

    @property
    def closed(self) -> bool:
        """True once a close was decided; :meth:`receive` then ignores every frame."""
        return self._state == _CLOSED

    def close(self, code: int, reason: str) -> Close:
        """Decide to close with ``code`` (the server going away, a client that
        does not read). The first close decided wins; later ones change nothing."""
        if self._state != _CLOSED:
            self._state = _CLOSED
            self.close_code = code
            self.close_reason = reason[:120]  # a close reason must fit a control frame
        return Close(self.close_code, self.close_reason or "", None)

    def hello_timed_out(self) -> Close:
        """The caller's hello deadline passed: close with 4008 (if still waiting for it)."""
        if self._state == _HELLO:
            return self.close(CLOSE_HELLO_TIMEOUT, "no hello in time")
        return Close(self.close_code, self.close_reason or "", None)

    def receive(self, frame: str | bytes) -> ServerEvent[G]:
        """The event for one received frame (text, or bytes for a binary frame).

        Raises nothing but what ``authenticate`` raises. ``None`` means there
        is nothing to do (a cancel for a request no longer open, or a frame
        that arrived after a close).
        """
        if self._state != _OPEN:
            if self._state == _HELLO:
                return self._hello(frame)
            return None
        try:
            message = _decode(frame, max_size=self.max_message_size, kinds=_CLIENT_KINDS)
        except w.ProtocolError as exc:
            return self._refuse(exc)
        return self._event(message)

    def receive_frame(self, frame: str | bytes) -> list[ServerEvent[G]]:
        """The events for one received frame, which may be a batch frame
        (protocol 2): one event per message, in order, as :meth:`receive`
        gives them. A message that breaks the rules spoils only itself,
        unless its event closes the connection; then the rest is ignored."""
        if self._state != _OPEN:
            return [self.receive(frame)]
        try:
            items = _decode_frame(frame, max_size=self.max_message_size, kinds=_CLIENT_KINDS)
        except w.ProtocolError as exc:
            return [self._refuse(exc)]
        if len(items) == 1:
            item = items[0]
            return [self._refuse(item) if isinstance(item, w.ProtocolError) else self._event(item)]
        events: list[ServerEvent[G]] = []
        for item in items:
            if self._state != _OPEN:
                break
            if isinstance(item, w.ProtocolError):
                events.append(self._refuse(item))
            else:
                events.append(self._event(item))
        return events

    def _event(self, message: w.Message) -> ServerEvent[G]:
        cls = type(message)
        request_id = message.id
        if cls is _Cancel:
            request = self._in_flight.pop(request_id, None)
            if request is None:
                return None
            request.state = _CANCELLED
            return Cancelled(request)
        if cls is _Release:
            assert isinstance(message, w.Release)
            return JobReleased(message.job_id, message.token)
        if cls is _Hello:
            return self._error(request_id, "already greeted", "unexpected_kind")
        in_flight = self._in_flight
        if request_id in in_flight:
            return self._error(request_id, "a request with this id is open", "duplicate_id")
        if len(in_flight) >= self.max_in_flight:
            return self._error(
                request_id,
                f"more than {self.max_in_flight} requests in flight",
                "too_many_requests",
            )
        if self.version < w.LIFECYCLE_VERSION and cls is _Request:
            # what a request of protocol 1 or 2 means in this queue's terms
            message = w.request_before_3(message)
        request = Request(request_id, message)
        in_flight[request_id] = request
        return request

    def reply(self, request: Request, text: str) -> str | None:
        """Account for the reply to ``request`` (an encoded ``ok``, ``dequeued`` or
        ``error``) and return the frame to send.

        Returns ``None`` if the client cancelled the request (it expects no
        reply); ``text`` itself if it may go; or, when ``text`` is longer than
        the client accepts, an ``oversize`` error in its place. Whenever the
        result is not ``text`` itself, a job the reply carried does not reach
        the client and must be given back. Raises :class:`SessionError` for a
        request answered before.
        """
        state = request.state
        if state != _WAITING:
            if state == _CANCELLED:
                request.state = _ANSWERED
                return None
            raise SessionError(f"request {request.id} was answered already")
        request.state = _ANSWERED
        del self._in_flight[request.id]
        if len(text) > self.peer_max_message_size:
            return w.encode(
                w.Error(
                    id=request.id,
                    error=w.ProtocolError.code,
                    message="the reply is larger than the client accepts",
                    reason="oversize",
                )
            )
        return text

    def _hello(self, frame: str | bytes) -> ServerEvent[G]:
        try:
            hello = w.decode(frame, max_size=self.max_message_size, kinds=("hello",))
        except w.ProtocolError as exc:
            if exc.reason in ("binary", "oversize"):
                return self._refuse(exc)
            if exc.reason == "unexpected_kind":
                exc = w.ProtocolError(
                    "the first message must be hello", "hello_expected", exc.request_id
                )
            return self._close_with(CLOSE_PROTOCOL_ERROR, exc.request_id, exc)
        assert isinstance(hello, w.Hello)
        try:
            version = w.negotiate(hello.versions, self._versions)
        except w.ProtocolError as exc:
            return self._close_with(CLOSE_UNSUPPORTED_VERSION, hello.id, exc)
        grant = self._authenticate(hello.token)
        if grant is None:
            message = "invalid token" if hello.token else "this server requires a token"
            error = w.ProtocolError(message, "unauthorized")
            return self._close_with(CLOSE_UNAUTHORIZED, hello.id, error)
        self._state = _OPEN
        self._greeted = True
        self.version = version
        self.peer_max_message_size = max(1024, hello.max_message_size)
        welcome = w.Welcome(
            id=hello.id,
            version=version,
            server=self._server,
            max_message_size=self.max_message_size,
            max_in_flight=self.max_in_flight,
        )
        return Greeted(w.encode(welcome), version, grant)

    def _refuse(self, exc: w.ProtocolError) -> Send | Close:
        if exc.reason == "binary":
            return self.close(CLOSE_BINARY, "binary frames are not supported")
        if exc.reason == "oversize":
            return self._close_with(CLOSE_TOO_BIG, exc.request_id, exc)
        return Send(w.encode(w.error_reply(exc.request_id, exc)))

    def _error(self, request_id: int, message: str, reason: str) -> Send:
        error = w.ProtocolError(message, reason, request_id)
        return Send(w.encode(w.error_reply(request_id, error)))

    def _close_with(self, code: int, request_id: int | None, exc: w.ProtocolError) -> Close:
        close = self.close(code, exc.reason)
        close.frame = w.encode(w.error_reply(request_id, exc))
        return close


# ------------------------------------------------------------------ client


class Reply(Generic[W]):
    """``message`` (an ``ok``, ``dequeued``, ``error`` or the ``welcome``) answers
    the request that ``waiter`` waits for."""

    __slots__ = ("message", "waiter")

    def __init__(self, waiter: W, message: w.Message) -> None:
        self.waiter = waiter
        self.message = message


class Stray:
    """A reply nobody waits for any more (its request was cancelled), or an error
    about no request (``id`` null): nothing to do but perhaps log it."""

    __slots__ = ("message",)

    def __init__(self, message: w.Message) -> None:
        self.message = message


class Pushed:
    """``message`` (``jobs`` or ``revoked``) was pushed to the stream that the open
    request ``message.id`` (a ``subscribe``) opened."""

    __slots__ = ("message",)

    def __init__(self, message: w.Message) -> None:
        self.message = message


class Broken:
    """The server broke the protocol: the connection is over, and ``error`` is
    what every request still waiting on it fails with."""

    __slots__ = ("error",)

    def __init__(self, error: QueueClosedError) -> None:
        self.error = error


ClientEvent = Reply[W] | Pushed | Send | Stray | Broken | None


class ClientSession(Generic[W]):
    """The client's side of one connection.

    ``W`` is whatever the application waits on for a reply (the remote queue
    uses a memory channel). Send :meth:`hello` first; once its reply arrives
    (as a :class:`Reply` of a ``welcome``), :meth:`prepare` and :meth:`wait`
    each request. Feed every received frame to :meth:`receive`.

    ``max_message_size`` bounds the frames this client accepts, in characters.
    """

    __slots__ = (
        "_hello_id",
        "_next_id",
        "_offered",
        "_pending",
        "_state",
        "error",
        "max_in_flight",
        "max_message_size",
        "server_max_message_size",
        "version",
    )

    def __init__(self, *, max_message_size: int = w.DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if isinstance(max_message_size, bool) or not isinstance(max_message_size, int):
            raise TypeError("max_message_size must be an int")
        if max_message_size < 1024:
            raise ValueError("max_message_size must be at least 1024")
        self.max_message_size = max_message_size
        self._state = _HELLO
        self._next_id = 1
        self._hello_id: int | None = None
        self._offered: tuple[int, ...] = ()
        self._pending: dict[int, W] = {}
        #: The error that ended the connection, once one did.
        self.error: QueueClosedError | None = None
        #: The protocol version the server chose (0 before the welcome).
        self.version = 0
        #: The largest frame the server accepts, in characters.
        self.server_max_message_size = w.DEFAULT_MAX_MESSAGE_SIZE
        #: How many requests the server takes at once on this connection.
        self.max_in_flight = 1

    @property
    def in_flight(self) -> int:
        """Requests sent (or about to be) whose reply has not arrived."""
        return len(self._pending)

    @property
    def greeted(self) -> bool:
        """True once the server's welcome was accepted."""
        return self.version != 0

    def hello(
        self,
        waiter: W,
        *,
        token: str | None = None,
        client: str = "",
        versions: Iterable[int] = w.SUPPORTED_VERSIONS,
    ) -> str:
        """The hello frame; its reply goes to ``waiter``. Only once, first."""
        if self._hello_id is not None:
            raise SessionError("hello was sent already")
        hello_id = self._hello_id = self._next_id
        self._next_id += 1
        self._pending[hello_id] = waiter
        self._offered = tuple(versions)
        return w.encode(
            w.Hello(
                id=hello_id,
                versions=list(self._offered),
                token=token,
                client=client,
                max_message_size=self.max_message_size,
            )
        )

    def prepare(self, make: Callable[[int], w.Message]) -> tuple[int, str]:
        """A fresh request id and the frame of ``make(id)``.

        Raises :class:`ProtocolError` (``oversize``) if the frame is larger
        than the server accepts, and :class:`SessionError` before the welcome.
        """
        if self._state == _HELLO:
            raise SessionError("no request before the server's welcome")
        request_id = self._next_id
        self._next_id = request_id + 1
        text = w.encode(w.request_for_server(make(request_id), self.version))
        if len(text) > self.server_max_message_size:
            raise w.ProtocolError(
                f"request of {len(text)} characters exceeds the server's limit of "
                f"{self.server_max_message_size}",
                "oversize",
            )
        return request_id, text

    def wait(self, request_id: int, waiter: W) -> None:
        """Register ``waiter`` for the reply to request ``request_id`` (sent next).

        Raises :class:`SessionError` if that would put more requests in flight
        than the server takes: the caller waits for a slot first.
        """
        pending = self._pending
        if len(pending) >= self.max_in_flight:
            raise SessionError(f"more than {self.max_in_flight} requests in flight")
        pending[request_id] = waiter

    def cancel(self, request_id: int) -> str:
        """Stop waiting for request ``request_id``: the ``cancel`` frame to send.

        A ``dequeued`` reply that crosses the cancel on the wire turns into a
        ``release`` (see :meth:`receive`).
        """
        self._pending.pop(request_id, None)
        return w.encode(w.Cancel(id=request_id))

    def release(self, job_id: UUID, token: UUID) -> str:
        """The ``release`` frame giving back job ``job_id``, held under ``token``."""
        release_id = self._next_id
        self._next_id = release_id + 1
        return w.encode(w.Release(id=release_id, job_id=job_id, token=token))

    def take_waiters(self) -> list[W]:
        """Every waiter still waiting, forgotten: the connection is over."""
        waiters = list(self._pending.values())
        self._pending.clear()
        return waiters

    def receive(self, frame: str | bytes) -> ClientEvent[W]:
        """The event for one received frame. Never raises.

        A reply to a request still waited for is a :class:`Reply`; a
        ``dequeued`` reply to a request cancelled meanwhile is a :class:`Send`
        of the ``release`` that gives its job back; any other reply to a
        cancelled request is a :class:`Stray`. Whatever breaks the protocol
        (a frame that does not decode, a kind or id the client never asked
        for, a welcome that does not fit the hello) is :class:`Broken`, after
        which frames are ignored (``None``).
        """
        if self._state == _CLOSED:
            return None
        try:
            reply = _decode(frame, max_size=self.max_message_size, kinds=_SERVER_KINDS)
        except w.ProtocolError as exc:
            return self._break(f"the server broke the protocol: {exc}")
        return self._event(reply)

    def receive_frame(self, frame: str | bytes) -> list[ClientEvent[W]]:
        """The events for one received frame, which may be a batch frame
        (protocol 2): one per message, in order, as :meth:`receive` gives them.
        Anything in it that breaks the protocol breaks the connection."""
        if self._state == _CLOSED:
            return []
        try:
            items = _decode_frame(frame, max_size=self.max_message_size, kinds=_SERVER_KINDS)
        except w.ProtocolError as exc:
            return [self._break(f"the server broke the protocol: {exc}")]
        events: list[ClientEvent[W]] = []
        for item in items:
            if self._state == _CLOSED:
                break
            if isinstance(item, w.ProtocolError):
                events.append(self._break(f"the server broke the protocol: {item}"))
            else:
                events.append(self._event(item))
        return events

    def _event(self, reply: w.Message) -> ClientEvent[W]:
        request_id = reply.id
        cls = type(reply)
        if cls is _Jobs or cls is _Revoked:
            if request_id in self._pending and self._state == _OPEN:
                return Pushed(reply)
            if request_id is None or request_id >= self._next_id or self._state != _OPEN:
                return self._break(f"the server broke the protocol: a push to {request_id}")
            if cls is _Jobs:  # to a stream we closed: its jobs go back
                assert isinstance(reply, w.Jobs)
                frames = [self.release(job.id, job.token) for job in reply.jobs]
                return Send(w.encode_batch(frames)) if frames else None
            return None
        waiter = self._pending.pop(request_id, None)
        if waiter is not None:
            if self._state == _OPEN:
                if type(reply) is not _Welcome:
                    return Reply(waiter, reply)
                return self._break("the server broke the protocol: a second welcome")
            return self._welcome(waiter, reply)
        if request_id is None or request_id < self._next_id:
            if self._state == _HELLO and request_id is not None:
                return self._break(f"the server broke the protocol: {reply.KIND} before welcome")
            if type(reply) is _Welcome:
                return self._break("the server broke the protocol: a second welcome")
            if type(reply) is _Dequeued:
                return Send(self.release(reply.job.id, reply.job.token))
            return Stray(reply)
        return self._break(f"the server broke the protocol: a reply to request {request_id}")

    def peer_closed(self, code: int | None, reason: str | None) -> QueueClosedError:
        """The error for a connection the server closed with ``code`` (``None``:
        the connection was lost without a close frame)."""
        if self.error is None:
            self._state = _CLOSED
            if code is not None and code not in (CLOSE_NORMAL, CLOSE_GOING_AWAY):
                self.error = QueueClosedError(
                    f"the server closed the connection: {code} {reason or ''}".rstrip()
                )
            else:
                self.error = QueueClosedError("the connection to the queue server was lost")
        return self.error

    def _welcome(self, waiter: W, reply: w.Message) -> ClientEvent[W]:
        if type(reply) is w.Error:
            return Reply(waiter, reply)  # refused: the server closes next
        if type(reply) is not w.Welcome:
            return self._break(f"the server broke the protocol: {reply.KIND} before welcome")
        assert isinstance(reply, w.Welcome)
        if reply.version not in self._offered:
            return self._refused(
                waiter, f"server chose version {reply.version}", "unsupported_version"
            )
        if reply.max_in_flight < 1 or reply.max_message_size < 1:
            return self._refused(waiter, "the welcome names no usable limits", "bad_field")
        self._state = _OPEN
        self.version = reply.version
        self.server_max_message_size = reply.max_message_size
        self.max_in_flight = reply.max_in_flight
        return Reply(waiter, reply)

    def _refused(self, waiter: W, message: str, reason: str) -> Reply[W]:
        # The welcome does not fit the hello: the hello fails with a typed
        # error, as if the server had refused it, and the connection is over.
        self._state = _CLOSED
        self.error = QueueClosedError(message)
        error = w.Error(
            id=self._hello_id, error=w.ProtocolError.code, message=message, reason=reason
        )
        return Reply(waiter, error)

    def _break(self, message: str) -> Broken:
        self._state = _CLOSED
        if self.error is None:
            self.error = QueueClosedError(message)
        return Broken(self.error)
