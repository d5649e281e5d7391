"""How long a failed attempt waits before its retry: exponential, capped, jittered."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import attrs

__all__ = ["Backoff"]


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, not {value!r}")


def _factor(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    _positive(_, attribute, value)
    if value < 1:
        raise ValueError(f"factor must be >= 1, not {value!r}")


def _jitter(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    _positive(_, attribute, value)
    if value > 1:
        raise ValueError(f"jitter must be between 0 and 1, not {value!r}")


@attrs.frozen
class Backoff:
    """The delay before retry ``n`` (0 for the first retry) of a failed attempt.

    ``initial * factor**n`` seconds, at most ``max``, less a random share of
    up to ``jitter`` of it (so retries of jobs that failed together spread out
    and never wait past the cap). The defaults: 1 s, doubling, at most 5
    minutes, up to 20 % less: 1, 2, 4, 8 ... 300 s. ``random`` returns a float
    in [0, 1); pass a fixed one to make delays exact (in tests).
    """

    initial: float = attrs.field(default=1.0, validator=_positive)
    factor: float = attrs.field(default=2.0, validator=_factor)
    max: float = attrs.field(default=300.0, validator=_positive)
    jitter: float = attrs.field(default=0.2, validator=_jitter)
    random: Callable[[], float] = attrs.field(default=random.random, repr=False, eq=False)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry ``retry`` (0-based)."""
        if retry < 0:
            raise ValueError(f"retry must be >= 0, not {retry}")
        # factor**retry overflows a float long after the cap is reached
        exponent = min(retry, 1024)
        try:
            base = min(self.max, self.initial * self.factor**exponent)
        except OverflowError:
            base = self.max
        return base * (1 - self.jitter * self.random())
