"""The last hour of throughput and queue latency, sampled from the queue's metrics.

:class:`History` reads a queue's cumulative totals per job type and channel
(:meth:`actorq.metrics.QueueMetrics.job_totals`: jobs finished and failed,
and the count and sum of queue latencies) once per ``interval``, and keeps
what changed since the previous sample in a ring of ``window / interval``
entries. The scheduler does no work for it: the totals are kept from its
events anyway, and a sample costs one copy of them, one entry per (type,
channel) key, in the dashboard's own task. A tenant's chart adds up only the
keys of its channels.
"""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING, NamedTuple

import trio

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .._actor._metrics import QueueMetrics

__all__ = ["History", "Point"]

Key = tuple[str, str]  # (job type, channel)
#: finished, failed, latency observations, latency seconds (summed)
Totals = tuple[float, float, float, float]


class Point(NamedTuple):
    """One sample interval, as a chart draws it."""

    end: float  # wall time (seconds since the epoch) the interval ended
    finished: float  # jobs finished in the interval, failed ones included
    failed: float
    latency: float | None  # mean seconds from ready to start of the jobs started, if any


class History:
    """A ring of per-interval deltas of the queue's counters, by (type, channel).

    ``clock`` gives wall time in seconds (``time.time``); :meth:`run` samples
    on trio's clock, so a MockClock drives it in tests.
    """

    def __init__(
        self,
        metrics: QueueMetrics,
        *,
        interval: float = 10.0,
        window: float = 3600.0,
        clock: Callable[[], float],
    ) -> None:
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError(f"interval must be a positive number of seconds, not {interval}")
        self.metrics = metrics
        self.interval = interval
        self.window = window
        self._clock = clock
        size = max(1, math.ceil(window / interval))
        self._ring: collections.deque[tuple[float, dict[Key, Totals]]] = collections.deque(
            maxlen=size
        )
        self._last: dict[Key, Totals] | None = None

    def _read(self) -> dict[Key, Totals]:
        totals = self.metrics.job_totals() or {}
        return {key: (float(a), float(b), float(c), d) for key, (a, b, c, d) in totals.items()}

    def sample(self) -> None:
        """Take one sample now: what changed since the previous one enters the ring."""
        now = self._read()
        last = self._last
        self._last = now
        if last is None:
            return  # the baseline: counters count from the queue's start, not this hour's
        zero = (0.0, 0.0, 0.0, 0.0)
        delta: dict[Key, Totals] = {}
        for key, values in now.items():
            before = last.get(key, zero)
            if values != before:
                delta[key] = (
                    values[0] - before[0],
                    values[1] - before[1],
                    values[2] - before[2],
                    values[3] - before[3],
                )
        self._ring.append((self._clock(), delta))

    def points(self, channels: Iterable[str] | None) -> list[Point]:
        """The ring's intervals, oldest first, counting the keys of ``channels``
        (``None``: every channel)."""
        allowed = None if channels is None else frozenset(channels)
        out = []
        for end, delta in self._ring:
            finished = failed = count = seconds = 0.0
            for (_, channel), values in delta.items():
                if allowed is not None and channel not in allowed:
                    continue
                finished += values[0]
                failed += values[1]
                count += values[2]
                seconds += values[3]
            out.append(Point(end, finished, failed, seconds / count if count else None))
        return out

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        while True:
            self.sample()
            await trio.sleep(self.interval)


def chart_svg(
    points: list[Point],
    values: list[float | None],
    *,
    window: float,
    now: float,
    unit: str,
    name: str,
) -> str:
    """A line chart of ``values`` (one per point, ``None`` for a gap) over the last
    ``window`` seconds up to ``now``, as an ``<svg>`` element. While the points
    cover less than ``window``, the chart spans what they cover."""
    width, height, left, bottom, top = 640, 170, 52, 22, 10
    if points:
        window = min(window, max(now - points[0].end, 1.0) * 1.05)
    plot_w, plot_h = width - left - 10, height - bottom - top
    finite = [v for v in values if v is not None]
    peak = max(finite, default=0.0)
    scale = peak * 1.1 if peak > 0 else 1.0

    def xy(end: float, value: float) -> str:
        x = left + plot_w * (1 - min(max((now - end) / window, 0.0), 1.0))
        y = top + plot_h * (1 - value / scale)
        return f"{x:.1f},{y:.1f}"

    lines: list[list[str]] = [[]]
    for point, value in zip(points, values, strict=True):
        if value is None:
            if lines[-1]:
                lines.append([])
            continue
        lines[-1].append(xy(point.end, value))
    parts = [
        f'<svg class="chart" data-chart="{name}" data-points="{len(finite)}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{name}">',
        f'<rect class="plot" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        label = _number(scale * fraction)
        parts.append(f'<text class="axis" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">')
        parts.append(f"{label}</text>")
    for quarter in (4, 3, 2, 1, 0):
        x = left + plot_w * (1 - quarter / 4)
        text = "now" if quarter == 0 else f"-{_duration(window * quarter / 4)}"
        parts.append(
            f'<text class="axis" x="{x:.1f}" y="{height - 6}" text-anchor="middle">{text}</text>'
        )
    for line in lines:
        if len(line) == 1:
            cx, cy = line[0].split(",")
            parts.append(f'<circle class="line" cx="{cx}" cy="{cy}" r="2"/>')
        elif line:
            parts.append(f'<polyline class="line" points="{" ".join(line)}"/>')
    parts.append(f'<text class="unit" x="{left + 4}" y="{top + 12}">{unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _duration(seconds: float) -> str:
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    if value == 0:
        return "0"
    return f"{value:.2g}"
