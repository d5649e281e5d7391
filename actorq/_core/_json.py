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

__all__ = ["JSON", "converter", "dumps", "loads", "structure", "to_json_text"]

JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None

T = TypeVar("T")

#: The converter used for every argument, result and wire message. Register
#: hooks on it to teach actorq about your own types.
converter: cattrs.Converter = make_converter()

_PLAIN = (dict, list, str, int, float, bool, type(None))
_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


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
    try:
        if type(value) in _PLAIN:
            try:
                text = orjson.dumps(value, option=_STRICT)
            except TypeError:
                text = orjson.dumps(converter.unstructure(value), option=_STRICT)
        else:
            text = orjson.dumps(converter.unstructure(value), option=_STRICT)
    except (TypeError, ValueError, RecursionError, orjson.JSONEncodeError) as exc:
        raise TypeError(f"{what} cannot be encoded as JSON: {exc}") from None
    except Exception as exc:  # a converter hook of the user's failed
        raise TypeError(f"{what} cannot be encoded as JSON: {exc!r}") from None
    if b"null" in text:  # NaN and infinities are written as null
        _check_finite(converter.unstructure(value))
    return text.decode()


def dumps(value: object) -> str:
    """Encode a JSON value (no conversion, no checks beyond orjson's)."""
    return orjson.dumps(value).decode()


def loads(text: str | bytes) -> Any:
    """Decode JSON text."""
    return orjson.loads(text)


def structure(value: object, cls: type[T]) -> T:
    """Turn a JSON value (a job's args or result) back into ``cls`` through :data:`converter`."""
    return converter.structure(value, cls)
