#!/usr/bin/env python3
"""actorq benchmarks. Prints one JSON document on stdout.

    python scripts/bench.py                      # every suite
    python scripts/bench.py --suite core         # one suite
    python scripts/bench.py --suite core --quick # smaller, for a smoke run
    python scripts/bench.py --suite import       # start-up: import actorq beside import trio
    python scripts/bench.py --suite remote       # deployed in processes, beside Redis ([bench])
    python scripts/bench.py --suite dashboard    # what --dashboard-port costs, and its pages
    python scripts/bench.py --suite wake         # a trio echo woken from idle, and a blocking one

Each suite measures its own baseline in the same run, because these machines
are noisy: compare ratios and medians, never single times. Suites live in
``scripts/bench_<name>.py`` and expose ``run(quick: bool) -> dict``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

SUITES = ["core", "sqlite", "remote", "rtt", "wake", "postgres", "import", "dashboard"]


def median_rate(samples: list[float]) -> float:
    return statistics.median(samples)


def summarize(per_op_seconds: list[float]) -> dict[str, float]:
    """Median and spread of per-operation times, in microseconds."""
    us = sorted(s * 1e6 for s in per_op_seconds)
    return {
        "median_us": statistics.median(us),
        "min_us": us[0],
        "max_us": us[-1],
        "runs": len(us),
    }


async def time_per_op(fn: Callable[[], Awaitable[None]], ops: int, repeats: int) -> list[float]:
    """Run ``fn`` (which performs ``ops`` operations) ``repeats`` times; seconds per op each run."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - start) / ops)
    return out


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "trio": trio.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=SUITES, help="run only these suites")
    parser.add_argument("--quick", action="store_true", help="smaller runs, for smoke tests")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "suites": {}}
    for name in args.suite or SUITES:
        module = importlib.import_module(f"bench_{name}")
        print(f"running suite {name}...", file=sys.stderr)
        try:
            results["suites"][name] = module.run(args.quick)
        except Exception as exc:  # one broken suite must not hide the others' figures
            results["suites"][name] = {"error": repr(exc)}
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
