"""The remote protocol, sans I/O: message classes, ``encode`` and ``decode``.

Every message is a JSON object in one websocket text frame, with a ``"kind"``
field naming its class. The classes below are attrs classes, (un)structured by
one cattrs converter (:func:`wire_converter`, derived from
:data:`actorq.converter`) through a tagged union on ``"kind"``. Nothing here
does I/O: the server and the client call :func:`encode` and :func:`decode`,
and map errors with :func:`error_reply` and :func:`exception_from_reply`.

:func:`decode` is strict and total: for any input it returns a
:class:`Message` or raises :class:`ProtocolError` (with a ``reason`` code),
never anything else. See ``docs/protocol.md`` for the whole protocol.
"""

from __future__ import annotations

import json
import re
import types
import typing
import uuid
from datetime import datetime
from functools import partial
from typing import Any, ClassVar, Final, TypeVar, get_args, get_origin
from uuid import UUID

import attrs
import cattrs
import orjson
from cattrs.gen import make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union, include_subclasses

from .._core._errors import ERRORS_BY_CODE, InexactIntegerError, JobQueueError, ProtocolError
from .._core._json import MAX_EXACT_INT, inexact_integer
from .._core._json import converter as app_converter
from .._core._models import DequeuedJob, JobState, JobStatus, JobSummary, QueueStats, WorkerInfo
from .._core._operation import NULL, SINCE_3
from .._core._ops import (
    OPERATIONS,
    InsertWorker,
    JsonText,
    ListJobs,
    ListJobsBefore3,
    Operation,
)

if typing.TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "ProtocolError",
    "decode",
    "encode",
    "error_reply",
    "exception_from_reply",
    "negotiate",
    "structure_value",
    "wire_converter",
]

T = TypeVar("T")

PROTOCOL_VERSION: Final = 3
"""The newest protocol version this actorq speaks.

Version 2 adds job streams (``subscribe``, ``settle``, and the server's
``jobs`` and ``revoked`` pushes) and batch frames (a JSON array of messages
in one frame, both ways). Version 3 adds the job lifecycle: the fields marked
``since 3`` in docs/protocol.md (a failed state, ``cancel_on_failed_dependency``)."""

STREAMS_VERSION: Final = 2
"""The first version with job streams and batch frames."""

LIFECYCLE_VERSION: Final = 3
"""The first version with the job lifecycle's fields and operations."""

SUPPORTED_VERSIONS: Final = (1, 2, 3)
"""Every protocol version this actorq speaks, oldest first."""

DEFAULT_MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024
"""Largest message accepted by default, in characters of a text message."""

MAX_ID: Final = 2**53 - 1  # request ids stay exact in every JSON implementation


# ---------------------------------------------------------------- messages


@attrs.frozen(kw_only=True)
class Message:
    """Base of every message. ``id`` is chosen by the client for each request;
    replies echo it, ``cancel`` names the request to cancel with it."""

    KIND: ClassVar[str] = ""
    id: int


# Requests: client to server. Each gets exactly one reply (ok, dequeued or
# error), unless the client cancels it first.


@attrs.frozen(kw_only=True)
class Hello(Message):
    """First message of a connection. Answered by ``welcome`` or an error and a close."""

    KIND = "hello"
    versions: list[int]
    token: str | None = None
    client: str = ""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE


@attrs.frozen(kw_only=True)
class Request(Message):
    """A request to run ``op``, one of :data:`~actorq._core._ops.OPERATIONS`.

    On the wire it is the operation's fields, with the operation's ``NAME`` as
    ``kind`` and the request's ``id``. Answered by ``ok``, ``dequeued`` (for
    an operation that hands out a job) or ``error``.
    """

    KIND = "request"  # never on the wire: each operation has its own kind
    op: Operation[Any, Any]


@attrs.frozen(kw_only=True)
class Subscribe(Message):
    """Open a job stream (version 2): the server pushes matching jobs as ``jobs``
    messages carrying this request's ``id``, never more than ``credit`` of them
    unsettled. The request stays open: the client ends it with ``cancel`` (no
    reply), the server with an ``error`` reply (the worker was deleted, the
    queue closed)."""

    KIND = "subscribe"
    job_types: list[str]
    channels: list[str] = attrs.field(factory=lambda: [""])
    any_channel: bool = False
    worker_id: UUID | None = None
    credit: int = 1


@attrs.frozen
class Finish:
    """One finish in a ``settle``: job ``job_id``'s run under ``token`` ends with ``result``."""

    job_id: UUID
    token: UUID
    result: JsonText = NULL
    failed: bool = attrs.field(default=False, metadata=SINCE_3)


@attrs.frozen(kw_only=True)
class Settle(Message):
    """Finish runs of jobs that stream ``stream`` pushed and add ``credit`` to it.

    Answered, once the finishes are committed, by ``ok`` whose value lists the
    refused ones (``[{"index", "error", "message"}]``, empty when all took
    effect)."""

    KIND = "settle"
    stream: int
    finishes: list[Finish] = attrs.field(factory=list)
    credit: int = 0


@attrs.frozen
class Refusal:
    """A finish of a ``settle`` the queue refused: its index, error code and message."""

    index: int
    error: str
    message: str = ""


# Control messages: client to server, never answered.


@attrs.frozen(kw_only=True)
class Cancel(Message):
    """Stop working on request ``id``. No reply; the request gets none either."""

    KIND = "cancel"


@attrs.frozen(kw_only=True)
class Release(Message):
    """Give back a job the client received but will not run (its request was cancelled)."""

    KIND = "release"
    job_id: UUID
    token: UUID


# Replies: server to client.


@attrs.frozen(kw_only=True)
class Welcome(Message):
    """Answer to ``hello``: the version chosen and the server's limits."""

    KIND = "welcome"
    version: int
    server: str = ""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_in_flight: int = 1


@attrs.frozen(kw_only=True)
class Ok(Message):
    """Success; ``value`` is the method's return value as JSON (``null`` for none)."""

    KIND = "ok"
    value: Any = None


@attrs.frozen(kw_only=True)
class Dequeued(Message):
    """A job handed to the client by ``dequeue``, ``dequeue_by_id`` or ``finish_and_dequeue``."""

    KIND = "dequeued"
    job: DequeuedJob


@attrs.frozen(kw_only=True)
class Jobs(Message):
    """Jobs pushed to the open stream ``id`` (version 2), oldest first."""

    KIND = "jobs"
    jobs: list[DequeuedJob]


@attrs.frozen
class RevokedRun:
    """A streamed run that ended other than by its stream's finish."""

    job_id: UUID
    token: UUID
    canceled: bool = False


@attrs.frozen(kw_only=True)
class Revoked(Message):
    """Runs of jobs that stream ``id`` was pushed which are over (version 2):
    canceled, or requeued, reaped or released. Their tokens are void."""

    KIND = "revoked"
    runs: list[RevokedRun]


@attrs.frozen(kw_only=True)
class Error(Message):
    """Failure. ``error`` is a code; ``id`` is ``null`` when the request could not be read."""

    KIND = "error"
    id: int | None  # type: ignore[assignment]
    error: str
    message: str = ""
    reason: str | None = None


REQUEST_TYPES: Final[tuple[type[Message], ...]] = (Hello, Request, Subscribe, Settle)
CONTROL_TYPES: Final[tuple[type[Message], ...]] = (Cancel, Release)
REPLY_TYPES: Final[tuple[type[Message], ...]] = (Welcome, Ok, Dequeued, Error)
PUSH_TYPES: Final[tuple[type[Message], ...]] = (Jobs, Revoked)

_MESSAGE_TYPES: Final[tuple[type[Message], ...]] = (
    Hello,
    Subscribe,
    Settle,
    *CONTROL_TYPES,
    *REPLY_TYPES,
    *PUSH_TYPES,
)
KINDS: Final[dict[str, type[Message] | type[Operation[Any, Any]]]] = {
    **{cls.KIND: cls for cls in _MESSAGE_TYPES},
    **OPERATIONS,
}
"""Every kind on the wire: the messages' own, and one per operation."""

REQUEST_KINDS: Final = frozenset(("hello", "subscribe", "settle", *OPERATIONS))
CLIENT_KINDS: Final = REQUEST_KINDS | frozenset(cls.KIND for cls in CONTROL_TYPES)
SERVER_KINDS: Final = frozenset(cls.KIND for cls in (*REPLY_TYPES, *PUSH_TYPES))


# --------------------------------------------------------------- converter


class _BadUUID(ValueError):
    pass


def _structure_str(value: object, _: object) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, not {_json_type(value)}")
    return value


def _structure_int(value: object, _: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, not {_json_type(value)}")
    return value


def _structure_float(value: object, _: object) -> float:
    if type(value) is not float and type(value) is not int:
        raise TypeError(f"expected a number, not {_json_type(value)}")
    return float(value)


def _structure_bool(value: object, _: object) -> bool:
    if type(value) is not bool:
        raise TypeError(f"expected true or false, not {_json_type(value)}")
    return value


_CANONICAL_UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


_canonical_uuid = _CANONICAL_UUID.fullmatch
_SAFE_UNKNOWN: Final = uuid.SafeUUID.unknown


def _uuid_of(value: str) -> UUID:
    """The UUID of ``value``, a string :data:`_CANONICAL_UUID` matched.

    The same object ``UUID(value)`` makes, without its parsing of other forms
    (already ruled out): decoding pushes and settles turns two or three UUIDs
    per job.
    """
    made = object.__new__(UUID)
    object.__setattr__(made, "int", int(value.replace("-", ""), 16))
    object.__setattr__(made, "is_safe", _SAFE_UNKNOWN)
    return made


def _structure_uuid(value: object, _: object) -> UUID:
    # Only the 8-4-4-4-12 form of docs/protocol.md: uuid.UUID would also take
    # braces, "urn:uuid:", bare hex and non-ASCII digits.
    if type(value) is not str:
        raise _BadUUID(f"expected a UUID string, not {_json_type(value)}")
    if _canonical_uuid(value) is None:
        raise _BadUUID(f"{value[:64]!r} is not a UUID in 8-4-4-4-12 form")
    return _uuid_of(value)


def _fast_hooks(conv: cattrs.Converter) -> None:
    """Hand-written structure hooks for the hottest items: a pushed job, a finish.

    Each takes the common case (exactly the fields, of exactly the types, the
    cattrs hook accepts) in one pass and hands anything else to that hook, so
    every message it accepts or refuses, and every error's text, is the
    cattrs hook's. A hook registered on :data:`actorq.converter` for either
    class is kept as it is.
    """
    job_hook = conv.get_structure_hook(DequeuedJob)
    if getattr(job_hook, "__name__", "") == "structure_DequeuedJob":

        def structure_job(value: Any, cls: Any) -> DequeuedJob:
            if type(value) is dict and len(value) == 6:
                job_id = value.get("id")
                token = value.get("token")
                deps = value.get("dependencies")
                job_type = value.get("type")
                channel = value.get("channel")
                if (
                    type(job_id) is str
                    and type(token) is str
                    and type(deps) is list
                    and type(job_type) is str
                    and type(channel) is str
                    and "args" in value
                    and _canonical_uuid(job_id) is not None
                    and _canonical_uuid(token) is not None
                    and all(type(d) is str and _canonical_uuid(d) is not None for d in deps)
                ):
                    return DequeuedJob(
                        _uuid_of(job_id),
                        _uuid_of(token),
                        [_uuid_of(d) for d in deps],
                        job_type,
                        value["args"],
                        channel,
                    )
            return job_hook(value, cls)  # type: ignore[no-any-return]

        conv.register_structure_hook(DequeuedJob, structure_job)

    finish_hook = conv.get_structure_hook(Finish)
    if getattr(finish_hook, "__name__", "") == "structure_Finish":

        def structure_finish(value: Any, cls: Any) -> Finish:
            if type(value) is dict:
                job_id = value.get("job_id")
                token = value.get("token")
                if (
                    type(job_id) is str
                    and type(token) is str
                    and _canonical_uuid(job_id) is not None
                    and _canonical_uuid(token) is not None
                ):
                    fields = 2
                    result = NULL
                    if "result" in value:
                        fields += 1
                        raw = value["result"]
                        result = NULL if raw is None else _structure_json_text(raw, JsonText)
                    failed = value.get("failed", False)
                    if "failed" in value:
                        fields += 1
                    if type(failed) is bool and len(value) == fields:
                        return Finish(_uuid_of(job_id), _uuid_of(token), result, failed)
            return finish_hook(value, cls)  # type: ignore[no-any-return]

        conv.register_structure_hook(Finish, structure_finish)


def _structure_datetime(value: object, _: object) -> datetime:
    if type(value) is not str:
        raise TypeError(f"expected an ISO 8601 string, not {_json_type(value)}")
    return datetime.fromisoformat(value)


def _structure_any(value: object, _: object) -> Any:
    return value


def _structure_json_text(value: object, _: object) -> JsonText:
    # Values decoded from a frame are plain JSON values: orjson writes them back
    # as they were (it rejects only nesting deeper than it writes).
    try:
        return JsonText(orjson.dumps(value).decode())
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"value cannot be stored as JSON: {exc}") from None


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", int: "integer", float: "number"}
    if value is None:
        return "null"
    if type(value) is bool:
        return "a boolean"
    return names.get(type(value), type(value).__name__)


def _is_optional(tp: Any) -> bool:
    args = get_args(tp)
    return (
        get_origin(tp) in (types.UnionType, typing.Union) and len(args) == 2 and type(None) in args
    )


def _is_sequence(tp: Any) -> bool:
    return get_origin(tp) in (list, tuple)


def _kind_of(cls: Any) -> str:
    kind: str = cls.KIND
    return kind


def _make_converter(*, fast_hooks: bool = True) -> cattrs.Converter:
    # fast_hooks=False: cattrs' own hooks throughout, the reference the fast ones are held to
    conv = app_converter.copy(forbid_extra_keys=True)
    # JSON gives exactly these types; cattrs would otherwise coerce ("5" -> 5,
    # 5 -> "5", "ab" -> ["a", "b"]), accepting wrongly typed fields.
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(UUID, _structure_uuid)
    conv.register_structure_hook(datetime, _structure_datetime)
    conv.register_structure_hook(Any, _structure_any)
    conv.register_structure_hook(JsonText, _structure_json_text)
    conv.register_unstructure_hook(JsonText, orjson.Fragment)

    def optional_hook(tp: Any) -> Callable[[object, object], object]:
        inner = next(a for a in get_args(tp) if a is not type(None))
        hook = conv.get_structure_hook(inner)

        def structure(value: object, _: object) -> object:
            return None if value is None else hook(value, inner)

        return structure

    def sequence_hook(tp: Any) -> Callable[[object, object], object]:
        args = get_args(tp)
        origin = get_origin(tp)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            hooks = [(conv.get_structure_hook(a), a) for a in args]

            def fixed(value: object, _: object) -> object:
                if type(value) is not list or len(value) != len(hooks):
                    raise TypeError(f"expected an array of {len(hooks)} items")
                return tuple(h(v, a) for (h, a), v in zip(hooks, value, strict=True))

            return fixed
        item = args[0] if args else Any
        hook = conv.get_structure_hook(item)

        def homogeneous(value: object, _: object) -> object:
            if type(value) is not list:
                raise TypeError(f"expected an array, not {_json_type(value)}")
            out = [hook(v, item) for v in value]
            return out if origin is list else tuple(out)

        return homogeneous

    conv.register_structure_hook_factory(_is_optional, optional_hook)
    conv.register_structure_hook_factory(_is_sequence, sequence_hook)

    def omitting_hook(cls: Any) -> Callable[[Any], dict[str, Any]]:
        # a field newer than protocol 1 is left out while it has its default,
        # so a peer that predates it reads the message
        overrides = {f.name: override(omit_if_default=True) for f in _since_fields(cls)}
        return make_dict_unstructure_fn(cls, conv, **overrides)  # type: ignore[arg-type]

    conv.register_unstructure_hook_factory(lambda cls: bool(_since_fields(cls)), omitting_hook)
    if fast_hooks:
        _fast_hooks(conv)  # before the messages' hooks are made: they take these
    include_subclasses(
        Message,
        conv,
        subclasses=_MESSAGE_TYPES,
        union_strategy=partial(configure_tagged_union, tag_name="kind", tag_generator=_kind_of),
    )
    return conv


_converter: cattrs.Converter | None = None


def wire_converter() -> cattrs.Converter:
    """The one converter for wire messages: strict (no coercion, no extra keys).

    Derived from :data:`actorq.converter` on first use, not at import: importing
    actorq stays cheap, and hooks a program registers on :data:`actorq.converter`
    before it first talks to a server reach the wire too.
    """
    global _converter
    if _converter is None:
        _converter = _make_converter()
    return _converter


# ------------------------------------------------------------------ codec


def encode(message: Message) -> str:
    """Return ``message`` as one JSON text frame.

    ``Any`` fields (args, results, values) may hold :class:`orjson.Fragment`
    objects: JSON text embedded as it is, so the queue's stored JSON is never
    parsed just to be written again. Raises :class:`TypeError` for a value
    that JSON cannot carry (a bug in the caller: values are checked before).
    """
    try:
        if type(message) is Request:
            op = message.op
            body = wire_converter().unstructure(op, type(op))
            return orjson.dumps({"kind": op.NAME, "id": message.id, **body}).decode()
        return orjson.dumps(wire_converter().unstructure(message, Message)).decode()
    except (orjson.JSONEncodeError, TypeError, ValueError) as exc:
        raise TypeError(f"cannot encode {message.KIND} message: {exc}") from None


def decode(
    text: str | bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    kinds: Iterable[str] | None = None,
) -> Message:
    """Parse one frame into a :class:`Message`, or raise :class:`ProtocolError`.

    ``kinds`` restricts the accepted kinds (a server accepts only requests and
    control messages); others raise with reason ``unexpected_kind``. Total:
    every failure (bad JSON, a non-object, an unknown kind, missing, extra or
    wrongly typed fields, a bad UUID, more than ``max_size`` characters, a
    binary frame) raises :class:`ProtocolError`, and nothing else escapes.
    A batch frame (a JSON array) is refused here: see :func:`decode_frame`.
    """
    obj, marked = _load(text, max_size)
    return _message(obj, kinds, marked)


def decode_frame(
    text: str | bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    kinds: Iterable[str] | None = None,
) -> list[Message | ProtocolError]:
    """Parse a frame that holds one message or, from version 2, a batch of them.

    A batch frame is a JSON array of message objects, in the order they were
    written. Returns one entry per message: the message, or the
    :class:`ProtocolError` that message alone earned (a bad message in a
    batch does not spoil the others). Raises :class:`ProtocolError` for a
    frame that is not JSON at all, too large or binary.
    """
    obj, marked = _load(text, max_size)
    if type(obj) is not list:
        try:
            return [_message(obj, kinds, marked)]
        except ProtocolError as exc:
            return [exc]
    out: list[Message | ProtocolError] = []
    for item in obj:
        try:
            out.append(_message(item, kinds, marked))
        except ProtocolError as exc:
            out.append(exc)
    return out


def encode_batch(texts: list[str]) -> str:
    """One batch frame holding the encoded messages ``texts`` (version 2)."""
    if len(texts) == 1:
        return texts[0]
    return "[" + ",".join(texts) + "]"


def _load(text: str | bytes | bytearray | memoryview, max_size: int) -> tuple[Any, bool]:
    if not isinstance(text, str):
        raise ProtocolError("binary frames are not part of the protocol", "binary")
    if len(text) > max_size:
        raise ProtocolError(f"message exceeds {max_size} characters", "oversize")
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}", "bad_json") from None
    except RecursionError:
        raise ProtocolError("JSON nested too deeply", "bad_json") from None
    if _has_digit_run(text) and _LONG_DIGITS.search(text) is not None:
        return _reread(text, obj)
    return obj, False


def _message(obj: Any, kinds: Iterable[str] | None, marked: bool = False) -> Message:
    if type(obj) is not dict:
        raise ProtocolError(f"a message is a JSON object, not {_json_type(obj)}", "not_object")
    raw_id = obj.get("id")
    request_id = raw_id if type(raw_id) is int and 0 <= raw_id <= MAX_ID else None
    kind = obj.get("kind")
    if kind is None:
        raise ProtocolError("message has no kind", "missing_kind", request_id)
    if type(kind) is not str or kind not in KINDS:
        raise ProtocolError(f"unknown kind {str(kind)[:64]!r}", "unknown_kind", request_id)
    if kinds is not None and kind not in kinds:
        raise ProtocolError(f"{kind} is not expected here", "unexpected_kind", request_id)
    if raw_id is not None and request_id is None:
        raise ProtocolError(f"id must be an integer in 0..{MAX_ID}", "bad_field")
    if marked:
        _refuse_inexact(obj, request_id)
    operation = OPERATIONS.get(kind)
    structured: Any
    try:
        if operation is not None:
            del obj["kind"]
            obj.pop("id", None)
            structured = wire_converter().structure(obj, operation)
        else:
            structured = wire_converter().structure(obj, Message)
    except Exception as exc:
        reason = "bad_uuid" if _contains(exc, _BadUUID) else "bad_field"
        raise ProtocolError(f"bad {kind} message: {_describe(exc)}", reason, request_id) from None
    if request_id is None:
        if type(structured) is not Error:
            raise ProtocolError("message has no id", "bad_field")
        return structured
    message: Message = structured if operation is None else Request(id=request_id, op=structured)
    return message


# Integers outside +-(2**53-1) are refused, as the in-process API refuses them
# (actorq._core._json.MAX_EXACT_INT); orjson would even read one outside 64
# bits as a float, silently changing it. A frame holding a run of 16 digits
# that does not follow a decimal point (inside a string or not) is parsed
# again to find out: rare, and only then.
_LONG_DIGITS: Final = re.compile(r"(?<![0-9.])[0-9]{16}")
# Every ASCII digit to "0", every other byte to "x": a frame's UTF-8 bytes
# mapped through it hold sixteen "0"s in a row exactly where the frame holds
# sixteen digits in a row (other characters' bytes are all >= 0x80 or not digits).
_DIGITS_TO_ZERO: Final = bytes(0x30 if 0x30 <= i <= 0x39 else 0x78 for i in range(256))
_SIXTEEN_ZEROS: Final = b"0" * 16


def _has_digit_run(text: str) -> bool:
    """Whether ``text`` holds a run of 16 ASCII digits: the cheap first look,
    since :data:`_LONG_DIGITS` matches only where there is one. Three passes
    in C over the frame's bytes take a tenth of the time of that regex, whose
    scan is slow over the many short digit runs of frames full of UUIDs."""
    data = text.encode("utf-8", "surrogatepass").translate(_DIGITS_TO_ZERO)
    return _SIXTEEN_ZEROS in data


class _Inexact:
    """Stands for an integer literal JSON does not carry exactly, in a re-read frame."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _reread(text: str, obj: Any) -> tuple[Any, bool]:
    """``text`` parsed again with every inexact integer marked; True if any was."""
    marked = False

    def marking_int(literal: str) -> int | _Inexact:
        nonlocal marked
        # past 17 characters it is out of range whatever the digits (JSON has
        # no leading zeros), and int() of thousands of digits would itself fail
        if len(literal) > 17 or abs(value := int(literal)) > MAX_EXACT_INT:
            marked = True
            return _Inexact(literal)
        return value

    try:
        reread = json.loads(text, parse_int=marking_int)
    except (ValueError, RecursionError):
        # a frame malformed for json but not for orjson: orjson's reading stands
        return obj, False
    return (reread, True) if marked else (obj, False)


def _find_inexact(value: Any) -> str | None:
    if type(value) is _Inexact:
        return value.literal
    if type(value) is dict:
        value = value.values()
    elif type(value) is not list:
        return None
    for item in value:
        found = _find_inexact(item)
        if found is not None:
            return found
    return None


def _refuse_inexact(obj: Any, request_id: int | None) -> None:
    literal = _find_inexact(obj)
    if literal is not None:
        raise InexactIntegerError(inexact_integer("the request", literal), request_id)


def _contains(exc: BaseException, cls: type[BaseException]) -> bool:
    if isinstance(exc, cls):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_contains(e, cls) for e in exc.exceptions)
    return False


def _describe(exc: BaseException) -> str:
    try:
        return "; ".join(cattrs.transform_error(exc))
    except Exception:
        return repr(exc)


def structure_value(value: object, cls: type[T] | Any) -> T:
    """Structure a reply's ``value`` as ``cls`` strictly, or raise :class:`ProtocolError`."""
    try:
        out: T = wire_converter().structure(value, cls)
    except Exception as exc:
        raise ProtocolError(f"bad reply value: {_describe(exc)}", "bad_field") from None
    return out


def unstructure_value(value: object, version: int = PROTOCOL_VERSION) -> Any:
    """A return value (UUID, model class, list of them...) as a JSON-ready value,
    for a peer speaking ``version`` (see :func:`for_version`)."""
    if version < LIFECYCLE_VERSION:
        value = for_version(value, version)
    return wire_converter().unstructure(value)


def for_version(value: Any, version: int) -> Any:
    """``value`` as a peer speaking ``version`` < 3 knows it: no failed state.

    A failed job reads as finished (its error result is there as before), the
    failure marks and a listing's ``worker_id`` go, and ``stats().finished``
    counts failed jobs again.
    Fields newer than the peer then have their defaults and are left out.
    """
    if version >= LIFECYCLE_VERSION:
        return value
    if isinstance(value, list):
        return [for_version(item, version) for item in value]
    if isinstance(value, JobStatus):
        return attrs.evolve(
            value,
            failed=False,
            failed_dependency=None,
            priority=0,
            not_before=None,
            unique_key=None,
        )
    if isinstance(value, JobSummary):
        failed = value.state is JobState.FAILED
        return attrs.evolve(
            value, state=JobState.FINISHED if failed else value.state, worker_id=None
        )
    if isinstance(value, QueueStats):
        return attrs.evolve(value, finished=value.finished + value.failed, failed=0, delayed=0)
    if isinstance(value, WorkerInfo):
        return attrs.evolve(value, channels=())
    return value


def request_for_server(message: Message, version: int) -> Message:
    """A request as a server speaking ``version`` reads it.

    A server older than 3 knows one channel per worker: ``insert_worker``
    leaves its other channels out (they only inform ``workers()``) rather
    than be refused. Every other request goes as it is.
    """
    if version >= LIFECYCLE_VERSION or type(message) is not Request:
        return message
    op = message.op
    if type(op) is InsertWorker and op.channels:
        return Request(id=message.id, op=attrs.evolve(op, channels=()))
    return message


def request_before_3(message: Message) -> Message:
    """A request of a client of protocol 1 or 2, in this queue's terms.

    Such a client knows no failed state, so its ``list_jobs`` filter
    ``finished`` matches failed jobs too, as its replies show them.
    """
    if type(message) is Request and type(message.op) is ListJobs:
        op = message.op
        before_3 = ListJobsBefore3(
            state=op.state, job_type=op.job_type, channel=op.channel, limit=op.limit
        )
        return Request(id=message.id, op=before_3)
    return message


def _since_fields(cls: Any) -> tuple[Any, ...]:
    if not attrs.has(cls):
        return ()
    return tuple(f for f in attrs.fields(cls) if "since" in f.metadata)


# --------------------------------------------------------------- errors


def error_reply(request_id: int | None, exc: BaseException) -> Error:
    """The ``error`` reply for ``exc``: queue errors by code, bad arguments as
    ``type_error``/``value_error``, anything else as ``internal``."""
    if isinstance(exc, ProtocolError):
        return Error(id=request_id, error=exc.code, message=exc.message, reason=exc.reason)
    if isinstance(exc, JobQueueError):
        return Error(id=request_id, error=exc.code, message=exc.message)
    if isinstance(exc, TypeError):
        return Error(id=request_id, error="type_error", message=str(exc))
    if isinstance(exc, ValueError):
        return Error(id=request_id, error="value_error", message=str(exc))
    return Error(id=request_id, error="internal", message="internal server error")


def exception_from_reply(reply: Error) -> Exception:
    """The exception a client raises for an ``error`` reply: the same class the
    queue raised on the server, or :class:`JobQueueError` for an unknown code."""
    if reply.error == ProtocolError.code:
        return ProtocolError(reply.message or None, reply.reason or "protocol_error", reply.id)
    if reply.error == "type_error":
        return TypeError(reply.message)
    if reply.error == "value_error":
        return ValueError(reply.message)
    cls = ERRORS_BY_CODE.get(reply.error)
    if cls is None:
        return JobQueueError(f"{reply.error}: {reply.message}")
    return cls(reply.message or None)


def negotiate(offered: Iterable[int], supported: Iterable[int] = SUPPORTED_VERSIONS) -> int:
    """The newest version both sides speak, or :class:`ProtocolError` (``unsupported_version``)."""
    common = set(offered) & set(supported)
    if not common:
        raise ProtocolError(
            f"no common protocol version: this side speaks {sorted(set(supported))}",
            "unsupported_version",
        )
    return max(common)


def new_token() -> str:
    """A fresh random bearer token, for configuration and tests."""
    return uuid.uuid4().hex + uuid.uuid4().hex
