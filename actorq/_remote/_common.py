"""What the trio client, the blocking client and the transport share, without trio.

URLs and the messages for failed TLS handshakes, the option checks, which
requests are sent again after a lost connection and which close codes are
worth reconnecting after, the reading of a reply, and the two looks at bytes
and at wsproto's state that the frame hot path needs. Nothing here imports
trio: a program that only uses :func:`actorq.connect_blocking` never loads it.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import RemoteProtocolError

from .._core import _validate as v
from .._core._errors import QueueClosedError
from .._core._ops import (
    AllRootJobIds,
    Dequeue,
    GetHeartbeats,
    GetJob,
    GetJobStatus,
    GetStats,
    GetWorkers,
    IdFromToken,
    InsertWorker,
    ListJobs,
    ListSchedules,
    RefreshHeartbeat,
    RefreshHeartbeats,
    Schedule,
    UpdateWorkerStatus,
    WaitForJob,
)
from . import _session as ss
from . import _wire as w

if TYPE_CHECKING:
    from wsproto.typing import Headers

    from .._core._operation import Operation


_Reply = w.Message | QueueClosedError


def _reply_value(reply: _Reply) -> w.Message:
    # a reply as a caller gets it: the error it carries raised
    if isinstance(reply, QueueClosedError):
        raise QueueClosedError(reply.message) from reply.__cause__
    if type(reply) is w.Error:
        raise w.exception_from_reply(reply)
    return reply


#: Seconds of silence after which a connection is given up on (``connect(keepalive_timeout=...)``).
DEFAULT_KEEPALIVE_TIMEOUT = 10.0

LOST_MESSAGE = "the connection was lost; the request may or may not have taken effect"

# Close codes after which the same server (or the next one) may well take us
# back: a restart, a shutdown, an overload, an abnormal close. Everything in the
# protocol's own range (a refused token, a version, a broken message) is final,
# and so are the codes that say this client sent something wrong.
_FINAL_CLOSES = frozenset({1002, 1003, 1007, 1009, 1010})
_RETRY_CLOSES_4XXX = frozenset({ss.CLOSE_HELLO_TIMEOUT})


# Operations that may be sent again after a connection was lost with their
# reply outstanding: they read, refresh, or wait for a job (a job handed to a
# lost dequeue goes back when the connection drops, or when its heartbeat
# lapses), or register a worker (a registration that did land is never
# updated, so it goes stale and is removed as any stale worker is), or define
# a schedule (defining one again exactly as it is changes nothing). Everything
# else raises rather than risk applying twice.
_RESENDABLE: frozenset[type[Operation[Any, Any]]] = frozenset(
    {
        Dequeue,
        GetJobStatus,
        WaitForJob,
        GetJob,
        AllRootJobIds,
        ListJobs,
        GetStats,
        IdFromToken,
        GetHeartbeats,
        RefreshHeartbeat,
        RefreshHeartbeats,
        UpdateWorkerStatus,
        GetWorkers,
        InsertWorker,
        Schedule,
        ListSchedules,
    }
)


def _retryable_close(code: int | None) -> bool:
    if code is None:
        return True
    if code >= 4000:
        return code in _RETRY_CLOSES_4XXX
    return code not in _FINAL_CLOSES


def _check_options(
    heartbeat_interval: float | None, max_message_size: int, token: str | None
) -> None:
    if token is not None:
        v.check_str(token, "token")
    if heartbeat_interval is not None:
        seconds = v.check_seconds(heartbeat_interval, "heartbeat_interval")
        if seconds == 0:
            raise ValueError("heartbeat_interval must be > 0 (or None to turn refreshes off)")
    if isinstance(max_message_size, bool) or not isinstance(max_message_size, int):
        raise TypeError("max_message_size must be an int")
    if max_message_size < 1024:
        raise ValueError("max_message_size must be at least 1024")


def _parse_url(url: str) -> tuple[str, int, str, bool]:
    """``(host, port, resource, tls)`` of a ``ws://`` or ``wss://`` URL."""
    if not isinstance(url, str):
        raise TypeError(f"a server URL must be a str, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, resource, tls


def _tls_failure(cause: BaseException | None) -> str:
    """One sentence for a failed TLS handshake, from the error under it."""
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_code in (62, 64):
        # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        return (
            "the TLS handshake failed: the server's certificate is not valid for the"
            f" host in the URL ({cause.verify_message})"
        )
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            "the TLS handshake failed: the server's certificate did not verify against"
            f" the trusted CA certificates ({cause.verify_message}); give the CA that"
            " signed it (connect(ssl_context=...), actorq --ca-file)"
        )
    if isinstance(cause, ssl.SSLEOFError) or cause is None:
        return (
            "the TLS handshake failed: the server closed the connection"
            " (if it serves plain websockets, use a ws:// URL)"
        )
    if isinstance(cause, ssl.SSLError) and cause.reason in (
        "WRONG_VERSION_NUMBER",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LAYER_FAILURE",
        "HTTP_REQUEST",
    ):
        return (
            "the TLS handshake failed: the server does not answer in TLS"
            " (if it serves plain websockets, use a ws:// URL)"
        )
    return f"the TLS handshake failed: {cause}"


def _check_reconnect_timeout(value: object) -> float | None:
    return None if value is None else v.check_seconds(value, "reconnect_timeout")


def _check_keepalive(value: object) -> float | None:
    if value is None:
        return None
    seconds = v.check_seconds(value, "keepalive_timeout")
    if seconds == 0:
        raise ValueError("keepalive_timeout must be > 0 (or None to turn the check off)")
    return seconds


def structure_reply(reply: w.Message, cls: Any) -> Any:
    """The value of an ``ok`` reply, as the in-process API returns it."""
    if type(reply) is not w.Ok:
        raise w.ProtocolError(f"unexpected {reply.KIND} reply", "unexpected_kind")
    return w.structure_value(reply.value, cls)


#: Bytes asked of the stream per read.
RECEIVE_SIZE: Final = 65536


#: The most bytes a handshake request or response may take before it is refused.
MAX_HANDSHAKE_SIZE: Final = 65536


def _wsproto_idle(connection: Connection) -> bool:
    """True if wsproto holds no part of a frame or message, nor an event not yet
    taken: the next bytes start a frame, and the hot path may read them.

    This looks at wsproto's private state (wsproto 1.2); should that change,
    it answers False and wsproto reads everything, as before the hot path.
    """
    if connection.state is not ConnectionState.OPEN:
        return False
    try:
        proto = connection._proto
        frames = proto._frame_decoder
        return (
            not connection._events
            and frames.header is None
            and not len(frames.buffer)
            and proto._message_decoder.opcode is None
        )
    except AttributeError:
        return False


def _looks_like_tls(data: bytes | bytearray) -> bool:
    # A TLS record: content type 0x14..0x17 (handshake 0x16, alert 0x15), then
    # major version 3. No HTTP message starts with these bytes.
    return len(data) >= 2 and 0x14 <= data[0] <= 0x17 and data[1] == 3


def check_urls(url: str | Sequence[str], ssl_context: object) -> list[str]:
    """The server URLs a client was given, checked: one or a list of ``ws://``
    or ``wss://`` URLs (a malformed one is a bug, not a server that is down)."""
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}")
    if isinstance(url, bytes) or not isinstance(url, str | Sequence):
        raise TypeError(f"url must be a str or a sequence of str, not {type(url).__name__}")
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("url must name at least one server")
    for candidate in urls:
        _parse_url(candidate)
    return urls


class HandshakeError(Exception):
    """The websocket handshake failed; the message says why in one sentence."""


class ClientHandshake:
    """The client's side of the websocket handshake, sans I/O.

    Send :attr:`request`, then feed what the server answers to
    :meth:`receive` (``b""`` once it closed the connection) until it returns
    the open connection. Raises :class:`HandshakeError`, saying why in one
    sentence, if the server refuses the upgrade, answers with something that
    is not HTTP (TLS on a ``ws://`` URL, say), answers at too great a length,
    or closes the connection first. Bytes that came after the answer stay in
    the connection, to be read from it.
    """

    def __init__(
        self,
        host: str,
        resource: str,
        *,
        subprotocols: Sequence[str] = (),
        extra_headers: Headers | None = None,
    ) -> None:
        self._ws = WSConnection(ConnectionType.CLIENT)
        self.request: bytes = self._ws.send(
            Request(
                host=host,
                target=resource,
                subprotocols=list(subprotocols),
                extra_headers=list(extra_headers or []),
            )
        )
        self._received = 0
        self._rejected: RejectConnection | None = None
        #: The subprotocol the server chose, once it accepted.
        self.subprotocol: str | None = None

    def receive(self, data: bytes | bytearray) -> Connection | None:
        """The open connection once the server's answer is whole, else ``None``."""
        if not data:
            if self._rejected is not None:
                raise HandshakeError(_refusal(self._rejected))
            raise HandshakeError(
                "the server closed the connection during the websocket handshake"
                " (if it serves TLS, use a wss:// URL)"
            )
        if self._received == 0 and _looks_like_tls(data):
            raise HandshakeError("the server answered in TLS: use a wss:// URL for it")
        self._received += len(data)
        try:
            self._ws.receive_data(bytes(data))
        except RemoteProtocolError as exc:
            raise HandshakeError(
                f"the server's answer is not a websocket handshake: {exc}"
            ) from None
        for event in self._ws.events():
            if isinstance(event, AcceptConnection):
                assert self._ws.connection is not None
                self.subprotocol = event.subprotocol
                return self._ws.connection
            if isinstance(event, RejectConnection):
                self._rejected = event
                if not event.has_body:
                    raise HandshakeError(_refusal(event))
            elif isinstance(event, RejectData) and event.body_finished:
                assert self._rejected is not None
                raise HandshakeError(_refusal(self._rejected))
        if self._received > MAX_HANDSHAKE_SIZE:
            raise HandshakeError("the server's handshake answer is too long")
        return None


def _refusal(event: RejectConnection) -> str:
    return f"the server refused the websocket upgrade with HTTP status {event.status_code}"
