"""JSON values, and the one cattrs converter that turns classes into them.

Arguments and results cross process boundaries and land in durable stores, so
the queue keeps them as JSON text from the moment they are accepted. That
freezes them (a caller mutating its dict afterwards changes nothing) and
rejects anything that cannot be stored before any state changes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import orjson
from cattrs.preconf.json import make_converter

if TYPE_CHECKING:
    import cattrs

__all__ = [
    "JSON",
    "MAX_EXACT_INT",
    "converter",
    "dumps",
    "inexact_integer",
    "loads",
    "structure",
    "to_json_text",
]

JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None

T = TypeVar("T")

#: The converter used for every argument, result and wire message. Register
#: hooks on it to teach actorq about your own types.
converter: cattrs.Converter = make_converter()

_PLAIN = (dict, list, str, int, float, bool, type(None))
# OPT_STRICT_INTEGER: integers beyond 53 bits are refused (see MAX_EXACT_INT)
_STRICT = (
    orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_STRICT_INTEGER
)

MAX_EXACT_INT = 2**53 - 1
"""The largest integer magnitude a JSON value may hold.

JSON parsers in most languages read every number as an IEEE double, which
holds integers exactly only up to 2**53 - 1: a larger one would reach a
JavaScript or Go peer changed. The queue refuses it, in-process and on the
wire alike, rather than store a value that other readers get wrong.
"""


def inexact_integer(what: str, literal: str) -> str:
    """The message of the :class:`TypeError` for an integer outside ``±MAX_EXACT_INT``."""
    shown = literal if len(literal) <= 40 else literal[:40] + "..."
    return (
        f"{what} holds the integer {shown}, outside -(2**53-1) .. 2**53-1, "
        "which JSON does not carry exactly"
    )


def _inexact(value: object) -> int | None:
    # the first integer out of range, if any (walked on the error path only)
    if type(value) is int:
        return value if abs(value) > MAX_EXACT_INT else None
    items: Any = ()
    if isinstance(value, dict):
        items = value.values()
    elif isinstance(value, list | tuple):
        items = value
    for item in items:
        found = _inexact(item)
        if found is not None:
            return found
    return None


def _check_finite(value: object) -> None:
    # orjson writes NaN and infinities as null; a job queue must not change data silently.
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{value!r} is not a JSON number")
    elif isinstance(value, dict):
        for item in value.values():
            _check_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_finite(item)


def to_json_text(value: object, what: str = "value") -> str:
    """Return ``value`` as JSON text, or raise :class:`TypeError`.

    Plain JSON values are encoded as they are; attrs classes, dataclasses and
    anything else the converter knows are unstructured through
    :data:`converter` first.
    """
    if value is None:  # most results: no handler return value
        return "null"
    try:
        if type(value) in _PLAIN:
            try:
                text = orjson.dumps(value, option=_STRICT)
            except TypeError:
                text = orjson.dumps(converter.unstructure(value), option=_STRICT)
        else:
            text = orjson.dumps(converter.unstructure(value), option=_STRICT)
    except (TypeError, ValueError, RecursionError, orjson.JSONEncodeError) as exc:
        if "Integer exceeds" in str(exc):
            found = _find_inexact(value)
            if found is not None:
                raise TypeError(inexact_integer(what, str(found))) from None
        raise TypeError(f"{what} cannot be encoded as JSON: {exc}") from None
    except Exception as exc:  # a converter hook of the user's failed
        raise TypeError(f"{what} cannot be encoded as JSON: {exc!r}") from None
    if b"null" in text:  # NaN and infinities are written as null
        _check_finite(converter.unstructure(value))
    return text.decode()


def _find_inexact(value: object) -> int | None:
    found = _inexact(value)
    if found is None and type(value) not in _PLAIN:
        try:
            found = _inexact(converter.unstructure(value))
        except Exception:  # the converter failed already, so orjson's words stand
            return None
    return found


def dumps(value: object) -> str:
    """Encode a JSON value (no conversion, no checks beyond orjson's)."""
    return orjson.dumps(value).decode()


def loads(text: str | bytes) -> Any:
    """Decode JSON text."""
    return orjson.loads(text)


def structure(value: object, cls: type[T]) -> T:
    """Turn a JSON value (a job's args or result) back into ``cls`` through :data:`converter`."""
    return converter.structure(value, cls)
