#!/usr/bin/env python3
"""Benchmark suite ``import``: start-up cost of ``import actorq`` beside ``import trio``.

Every sample is a fresh interpreter (``python -c ...``), timed from spawn to
exit, so it includes the interpreter's own start-up; the statements are run
interleaved, repeat by repeat, so machine noise hits them alike. Figures are
medians in milliseconds, of wall time and of the child's CPU time (user plus
system), which a busy machine disturbs far less.

- ``python``: ``pass``, the interpreter alone.
- ``trio``: ``import trio``. The baseline.
- ``actorq``: ``import actorq``. Every public name loads on first use, so
  this is the package itself; the goal is at most 1.5x the baseline.
- ``in_process``: ``import actorq`` and the names an in-process program uses
  (``open_queue``, ``Worker``, ``JobQueue``): trio, attrs, cattrs and the core,
  and still no websocket, database, click or Prometheus library. Goal: at
  most 1.5x the baseline.

Run alone with ``python scripts/bench_import.py [--quick]``, or through
``python scripts/bench.py --suite import``. The subprocesses run in a
temporary directory, so they import the installed actorq, not a checkout in
the current directory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

STATEMENTS = {
    "python": "pass",
    "trio": "import trio",
    "actorq": "import actorq",
    "in_process": "import actorq; actorq.open_queue, actorq.Worker, actorq.JobQueue",
}
BASELINE = "trio"
GOAL_RATIO = 1.5


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time_once(statement: str, cwd: str) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh interpreter running ``statement``."""
    cpu = _cpu_of_children()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], cwd=cwd, check=True)
    return time.perf_counter() - start, _cpu_of_children() - cpu


def run(quick: bool) -> dict[str, Any]:
    """Measure every statement ``repeats`` times, interleaved; medians and ratios to trio."""
    repeats = 5 if quick else 21
    wall: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    cpu: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    with tempfile.TemporaryDirectory() as cwd:
        for statement in STATEMENTS.values():
            _time_once(statement, cwd)  # warm the file cache; not counted
        for _ in range(repeats):
            for name, statement in STATEMENTS.items():
                seconds, cpu_seconds = _time_once(statement, cwd)
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)

    def medians(samples: dict[str, list[float]]) -> dict[str, float]:
        return {name: statistics.median(times) * 1e3 for name, times in samples.items()}

    def ratios(ms: dict[str, float]) -> dict[str, float]:
        return {name: round(ms[name] / ms[BASELINE], 2) for name in ("actorq", "in_process")}

    wall_ms, cpu_ms = medians(wall), medians(cpu)
    return {
        "repeats": repeats,
        "median_ms": {name: round(ms, 1) for name, ms in wall_ms.items()},
        "median_cpu_ms": {name: round(ms, 1) for name, ms in cpu_ms.items()},
        "baseline": BASELINE,
        "ratio": ratios(wall_ms),
        "cpu_ratio": ratios(cpu_ms),
        "goal_ratio": GOAL_RATIO,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for smoke tests")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()
