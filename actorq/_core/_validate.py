"""Argument checks shared by every front end.

They run in the caller's task, before a request reaches the scheduler, so a bad
argument raises at once and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from ._models import JobState


def check_uuid(value: object, name: str) -> UUID:
    if not isinstance(value, UUID):
        raise TypeError(f"{name} must be a uuid.UUID, not {type(value).__name__}")
    return value


def check_optional_uuid(value: object, name: str) -> UUID | None:
    return None if value is None else check_uuid(value, name)


def check_uuids(values: object, name: str) -> tuple[UUID, ...]:
    if isinstance(values, str | bytes | UUID) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be an iterable of uuid.UUID")
    out: list[UUID] = []
    seen: set[UUID] = set()
    for value in values:
        check_uuid(value, f"each of {name}")
        if value not in seen:
            seen.add(value)
            out.append(value)
    return tuple(out)


def check_storable(value: str, name: str) -> str:
    """Refuse text that a durable store cannot keep as text.

    PostgreSQL's text cannot hold NUL, and no store can encode a lone
    surrogate as UTF-8. Such a name must fail here, before the state changes,
    not at commit time, where it would fail the whole batch and stop the queue.
    """
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be valid Unicode text (no lone surrogates)") from None
    return value


def check_job_type(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"job_type must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError("job_type must not be empty")
    return check_storable(value, "job_type")


def check_channel(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"channel must be a str, not {type(value).__name__}")
    return check_storable(value, "channel")


def check_strings(values: object, name: str, *, allow_empty_items: bool) -> tuple[str, ...]:
    if isinstance(values, str | bytes):
        raise TypeError(f"{name} must be a sequence of str, not a bare string ({values!r})")
    if not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of str, not {type(values).__name__}")
    out: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"each of {name} must be a str, not {type(value).__name__}")
        if not value and not allow_empty_items:
            raise ValueError(f"{name} must not contain an empty string")
        if value not in out:
            out.append(value)
    return tuple(out)


def check_job_types(values: object) -> tuple[str, ...]:
    return check_strings(values, "job_types", allow_empty_items=False)


def check_channels(values: object) -> tuple[str, ...]:
    if values is None:  # upstream accepts a nil slice: it matches nothing
        return ()
    return check_strings(values, "channels", allow_empty_items=True)


def check_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be >= 0, not {value!r}")
    return seconds


def check_timeout(value: object) -> float | None:
    return None if value is None else check_seconds(value, "timeout")


def check_max_retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_retries must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"max_retries must be >= 0, not {value}")
    return value


def check_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return check_storable(value, name)


def check_limit(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"limit must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"limit must be >= 0, not {value}")
    return value


def check_state(value: object) -> JobState | None:
    if value is None or isinstance(value, JobState):
        return value
    if isinstance(value, str):
        try:
            return JobState(value)
        except ValueError:
            names = ", ".join(s.value for s in JobState)
            raise ValueError(f"state must be one of {names}, not {value!r}") from None
    raise TypeError(f"state must be a JobState or str, not {type(value).__name__}")


def check_positive_seconds(value: object, name: str) -> float:
    """A number of seconds > 0 (an interval): TypeError for a non-number, ValueError else."""
    seconds = check_seconds(value, name)
    if seconds == 0:
        raise ValueError(f"{name} must be > 0 seconds, not {value!r}")
    return seconds


def check_optional_positive_seconds(value: object, name: str) -> float | None:
    return None if value is None else check_positive_seconds(value, name)


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """An int (never a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    return value


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


_ID_CHARS = frozenset("0123456789abcdef-")


def check_id_prefix(value: object) -> str:
    """The start of a job id's text: up to 36 hex digits and dashes, folded to lower case."""
    if not isinstance(value, str):
        raise TypeError(f"id_prefix must be a str, not {type(value).__name__}")
    folded = value.lower()
    if len(folded) > 36 or not _ID_CHARS.issuperset(folded):
        raise ValueError(f"id_prefix must be hex digits and dashes (at most 36), not {value!r}")
    return folded


def check_optional_str(value: object, name: str) -> str | None:
    return None if value is None else check_str(value, name)


def check_dependency_refs(values: object, index: int) -> tuple[UUID | int, ...]:
    """The dependencies of job ``index`` of an ``enqueue_many`` call, duplicates dropped.

    Each is a UUID, or the ``int`` index of an earlier job of the call: a
    wrong type is a :class:`TypeError`, an index that is not earlier (a
    forward or self reference, or a negative one) a :class:`ValueError`.
    """
    name = f"dependencies of job {index}"
    if isinstance(values, str | bytes | UUID) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be an iterable of uuid.UUID or int")
    out: dict[UUID | int, None] = {}
    for value in values:
        if isinstance(value, UUID):
            out[value] = None
        elif isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < index:
                # a job can only wait for jobs enqueued before it: no cycles
                raise ValueError(f"{name}: {value} is not the index of an earlier job")
            out[value] = None
        else:
            raise TypeError(
                f"each of {name} must be a uuid.UUID or an int index, not {type(value).__name__}"
            )
    return tuple(out)


MAX_PRIORITY = 2**31 - 1
"""Priorities are 32-bit signed integers, as every store keeps them."""


def check_priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"priority must be an int, not {type(value).__name__}")
    if not -MAX_PRIORITY - 1 <= value <= MAX_PRIORITY:
        raise ValueError(f"priority must be a 32-bit integer, not {value}")
    return value


def check_not_before(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"not_before must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("not_before must be a timezone-aware datetime")
    return value


def check_delay(value: object) -> float | None:
    if value is None:
        return None
    delay = check_seconds(value, "delay")
    if math.isinf(delay):
        raise ValueError("delay must be finite")
    return delay


def check_unique_key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"unique_key must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError("unique_key must not be empty")
    return check_storable(value, "unique_key")
