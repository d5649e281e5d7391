#!/usr/bin/env python3
"""Benchmark suite ``sqlite``: durable job cycles, and reopening a big queue.

    python scripts/bench.py --suite sqlite [--quick]
    python scripts/bench_sqlite.py [--quick]          # this suite alone

* ``cycles``: job cycles per second with N concurrent in-process workers
  (N = 1, 10, 100), each looping ``enqueue``, ``dequeue``, ``finish_job``
  (three acknowledged requests per cycle), on SQLite (a fresh file in the
  temporary directory; WAL, ``synchronous=FULL``) beside the same loop on an
  in-memory queue (no store), measured in the same run. Median of the
  repeats; ``ratio`` is SQLite's rate over memory's, the goal being >= 0.5 at
  N = 100. ``requests_per_commit`` shows the group commit at work.
* ``reopen``: a database of 1M jobs (``--quick``: 20k) - half finished, the
  rest mostly pending, a quarter of the pending ones blocked on a
  dependency, a few running and canceled - is reopened in a fresh process:
  seconds until ``open_queue`` yields (``load``: reading and checking the
  file; ``restore``: rebuilding the core; and the CPU time of it all, which
  a busy machine inflates less), and the process's peak RSS. The
  goal: under 10 s and under 1 GiB. The database is written through the
  store's own ``commit``, in batches of 50k jobs.
* ``machine``: the speed of a fixed pure-Python loop and the load average,
  because these figures scale with both.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import actorq  # noqa: E402
from actorq._core._records import Changes, JobRecord  # noqa: E402
from actorq._stores._sqlite import uuid_from_int  # noqa: E402

if TYPE_CHECKING:
    from uuid import UUID

WORKERS = (1, 10, 100)


# ------------------------------------------------------------------ cycles


async def _cycles(store: actorq.SqliteStore | None, workers: int, total: int) -> dict[str, Any]:
    """Seconds for ``total`` cycles shared by ``workers`` tasks, and the commit count."""
    async with actorq.open_queue(store) as queue:
        per_worker = total // workers

        async def worker() -> None:
            for i in range(per_worker):
                await queue.enqueue("bench", {"n": i})
                job = await queue.dequeue(["bench"])
                await queue.finish_job(job.id, {"ok": True})

        start = time.perf_counter()
        cpu = time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
        scheduler = queue._scheduler
        return {
            "cycles": per_worker * workers,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "commits": scheduler.commits,
            "requests": scheduler.messages,
        }


async def _cycle_suite(quick: bool) -> list[dict[str, Any]]:
    repeats = 2 if quick else 5
    totals = {1: 60, 10: 300, 100: 1000} if quick else {1: 400, 10: 2000, 100: 6000}
    out = []
    with tempfile.TemporaryDirectory(prefix="actorq-bench-") as directory:
        for workers in WORKERS:
            memory_rates, sqlite_rates, per_commit = [], [], []
            memory_cpu, sqlite_cpu = [], []
            for repeat in range(repeats):
                got = await _cycles(None, workers, totals[workers])
                memory_rates.append(got["cycles"] / got["seconds"])
                memory_cpu.append(got["cpu_seconds"] / got["cycles"])
                path = Path(directory) / f"cycles-{workers}-{repeat}.db"
                got = await _cycles(actorq.SqliteStore(path), workers, totals[workers])
                sqlite_rates.append(got["cycles"] / got["seconds"])
                sqlite_cpu.append(got["cpu_seconds"] / got["cycles"])
                per_commit.append(got["requests"] / max(got["commits"], 1))
            memory = statistics.median(memory_rates)
            sqlite = statistics.median(sqlite_rates)
            out.append(
                {
                    "workers": workers,
                    "cycles_per_repeat": totals[workers] // workers * workers,
                    "repeats": repeats,
                    "memory_cycles_per_second": round(memory, 1),
                    "sqlite_cycles_per_second": round(sqlite, 1),
                    "ratio": round(sqlite / memory, 3),
                    "sqlite_requests_per_commit": round(statistics.median(per_commit), 1),
                    # CPU time per cycle (both threads), which contention on
                    # a shared machine inflates far less than wall time
                    "memory_cpu_us_per_cycle": round(statistics.median(memory_cpu) * 1e6, 1),
                    "sqlite_cpu_us_per_cycle": round(statistics.median(sqlite_cpu) * 1e6, 1),
                    "memory_samples": [round(r, 1) for r in memory_rates],
                    "sqlite_samples": [round(r, 1) for r in sqlite_rates],
                }
            )
    return out


# ------------------------------------------------------------------ reopen


def _records(count: int, seed: int) -> Any:
    """``count`` job records in enqueue order: the mix the suite describes."""
    rng = random.Random(seed)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    step = timedelta(microseconds=1_234)
    finished_cut = count // 2
    last_finished: UUID | None = None
    last_pending: UUID | None = None
    for i in range(count):
        job_id = uuid_from_int(rng.getrandbits(128))
        queued = base + step * i
        started = finished = token = result = None
        deps: tuple[UUID, ...] = ()
        canceled = False
        if i < finished_cut:
            started = queued + timedelta(seconds=1)
            finished = started + timedelta(seconds=rng.randrange(1, 600))
            result = '{"ok": true, "artifacts": ["disk.qcow2"]}'
            if last_finished is not None and i % 10 == 9:
                deps = (last_finished,)
            last_finished = job_id
        elif i % 100 == 0:
            started = queued + timedelta(seconds=1)
            token = uuid_from_int(rng.getrandbits(128))
        elif i % 100 == 1:
            canceled = True
        else:
            if last_pending is not None and i % 4 == 3:
                deps = (last_pending,)
            last_pending = job_id
        yield JobRecord(
            id=job_id,
            seq=i + 1,
            type=("build", "upload", "test")[i % 3],
            channel=("", "eu", "us")[i % 3 == 0],
            args=f'{{"n": {i}, "image": "fedora-40"}}',
            dependencies=deps,
            queued=queued,
            started=started,
            finished=finished,
            canceled=canceled,
            result=result,
            retries=0,
            token=token,
            worker_id=None,
        )


async def _build(path: Path, count: int) -> float:
    store = actorq.SqliteStore(path)
    start = time.perf_counter()
    await store.load()
    batch: list[JobRecord] = []
    for record in _records(count, seed=count):
        batch.append(record)
        if len(batch) == 50_000:
            await store.commit(Changes(batch, [], [], []))
            batch = []
    if batch:
        await store.commit(Changes(batch, [], [], []))
    await store.close()
    return time.perf_counter() - start


_REOPEN = r"""
import json, resource, sys, time
import trio
import actorq

class Timed(actorq.SqliteStore):
    async def load(self):
        start = time.perf_counter()
        got = await super().load()
        self.load_seconds = time.perf_counter() - start
        return got

async def main(path):
    store = Timed(path)
    start = time.perf_counter()
    cpu = time.process_time()
    async with actorq.open_queue(store) as queue:
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
        stats = await queue.stats()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "load_seconds": store.load_seconds,
                      "jobs": stats.jobs, "pending": stats.pending, "blocked": stats.blocked,
                      "running": stats.running, "finished": stats.finished,
                      "peak_rss_mib": peak_kib / 1024}))

trio.run(main, sys.argv[1])
"""


def _reopen_in_child(path: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _REOPEN, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    got: dict[str, Any] = json.loads(done.stdout)
    return got


async def _reopen_suite(quick: bool) -> dict[str, Any]:
    count = 20_000 if quick else 1_000_000
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="actorq-bench-") as directory:
        empty = Path(directory) / "empty.db"
        await _build(empty, 0)
        baseline = _reopen_in_child(empty)
        path = Path(directory) / "big.db"
        build_seconds = await _build(path, count)
        runs = [_reopen_in_child(path) for _ in range(repeats)]
        size = path.stat().st_size
    seconds = statistics.median(r["seconds"] for r in runs)
    peak = max(r["peak_rss_mib"] for r in runs)
    return {
        "jobs": count,
        "file_mib": round(size / 2**20, 1),
        "build_seconds": round(build_seconds, 2),
        "repeats": repeats,
        "reopen_seconds": round(seconds, 2),
        "reopen_cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in runs), 2),
        "load_seconds": round(statistics.median(r["load_seconds"] for r in runs), 2),
        "restore_seconds": round(
            statistics.median(r["seconds"] - r["load_seconds"] for r in runs), 2
        ),
        "peak_rss_mib": round(peak, 1),
        "empty_queue_peak_rss_mib": round(baseline["peak_rss_mib"], 1),
        "goal_met": seconds < 10 and peak < 1024,
        "samples": runs,
    }


# --------------------------------------------------------------- machine


def _machine() -> dict[str, Any]:
    start = time.perf_counter()
    total = 0
    for i in range(5_000_000):
        total += i
    return {
        "python_loop_5m_seconds": round(time.perf_counter() - start, 3),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "temp_dir": tempfile.gettempdir(),
    }


def run(quick: bool) -> dict[str, Any]:
    before = _machine()
    cycles = trio.run(_cycle_suite, quick)
    reopen = trio.run(_reopen_suite, quick)
    at_100 = next(c for c in cycles if c["workers"] == 100)
    return {
        "machine_before": before,
        "cycles": cycles,
        "cycles_goal_met": at_100["ratio"] >= 0.5,
        "reopen": reopen,
        "machine_after": _machine(),
    }


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv[1:]), indent=2))
