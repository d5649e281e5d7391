#!/usr/bin/env python3
"""Benchmark suite ``postgres``: durable job cycles on PostgreSQL, and failover time.

    python scripts/bench.py --suite postgres [--quick]
    python scripts/bench_postgres.py [--quick]          # this suite alone

Starts its own throwaway PostgreSQL cluster (``tests/pgserver.py``) with
``fsync=on``, so every commit is flushed as in production. Measured in the
same run, so the figures compare:

* ``cycles``: durable job cycles per second with N concurrent in-process
  workers (N = 1, 10, 100), each looping ``enqueue``, ``dequeue``,
  ``finish_job`` (three acknowledged operations per cycle), on ``memory``
  (no store), ``sqlite`` (if ``actorq._stores._sqlite`` is present; WAL,
  synchronous=FULL, in a temporary directory) and ``postgres`` (over TCP on
  127.0.0.1). Median of the repeats; ``commits`` and ``requests_per_commit``
  show the group commit at work.
* ``failover``: two processes on one database; the leader is killed with
  SIGKILL, and the time from the kill to the first job the standby (now
  leader) hands out is measured, end to end. Median and spread over repeats.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pgserver  # noqa: E402

import actorq  # noqa: E402
from actorq._stores._postgres import PostgresStore  # noqa: E402

# ---------------------------------------------------------------- cycles


async def _cycles(store: Any, workers: int, cycles: int) -> dict[str, Any]:
    async with actorq.open_queue(store) as queue:
        per_worker = cycles // workers

        async def worker(n: int) -> None:
            for i in range(per_worker):
                await queue.enqueue("bench", {"w": n, "i": i})
                job = await queue.dequeue(["bench"])
                await queue.finish_job(job.id, {"ok": True})

        commits0, messages0 = queue._scheduler.commits, queue._scheduler.messages
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n in range(workers):
                nursery.start_soon(worker, n)
        elapsed = time.perf_counter() - start
        commits = queue._scheduler.commits - commits0
        messages = queue._scheduler.messages - messages0
    done = per_worker * workers
    return {
        "cycles_per_second": done / elapsed,
        "commits": commits,
        "requests_per_commit": messages / commits if commits else None,
    }


def _store_factory(kind: str, server: pgserver.PgServer, tmp: Path) -> Any:
    counter = iter(range(1_000_000))

    def make() -> Any:
        n = next(counter)
        if kind == "memory":
            return None
        if kind == "sqlite":
            return f"sqlite:///{tmp}/bench-{n}.db"
        return PostgresStore(server.url(), schema=f"bench_{n}")

    return make


async def _cycle_suite(server: pgserver.PgServer, quick: bool) -> dict[str, Any]:
    kinds = ["memory", "postgres"]
    if importlib.util.find_spec("actorq._stores._sqlite") is not None:
        kinds.insert(1, "sqlite")
    repeats = 3 if quick else 5
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="actorq-bench-") as tmp:
        for workers in (1, 10, 100):
            row: dict[str, Any] = {}
            for kind in kinds:
                cycles = (200 if kind != "memory" else 2_000) * (1 if quick else 5)
                if workers > 1:
                    cycles *= 5
                make = _store_factory(kind, server, Path(tmp))
                runs = [await _cycles(make(), workers, cycles) for _ in range(repeats)]
                rates = [r["cycles_per_second"] for r in runs]
                row[kind] = {
                    "cycles_per_second": statistics.median(rates),
                    "min": min(rates),
                    "max": max(rates),
                    "cycles": cycles,
                    "requests_per_commit": statistics.median(
                        r["requests_per_commit"] or 0 for r in runs
                    ),
                }
            for kind in kinds:
                if kind != "memory":
                    row[f"{kind}_vs_memory"] = (
                        row[kind]["cycles_per_second"] / row["memory"]["cycles_per_second"]
                    )
            out[f"workers_{workers}"] = row
    return out


# --------------------------------------------------------------- failover

_NODE = r"""
import sys, time, trio
sys.path.insert(0, {root!r})
import actorq
from actorq._stores._postgres import PostgresStore

async def main():
    store = PostgresStore({url!r}, schema={schema!r}, standby_poll={poll!r})
    print("started", flush=True)
    async with actorq.open_queue(store) as q:
        print("leader", time.time(), flush=True)
        job = await q.dequeue(["failover"])
        print("served", time.time(), flush=True)
        await q.finish_job(job.id, None)
        await q.enqueue("failover", None)
        await trio.sleep_forever()

trio.run(main)
"""


def _spawn(url: str, schema: str, poll: float) -> subprocess.Popen[str]:
    code = _NODE.format(root=str(ROOT), url=url, schema=schema, poll=poll)
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _read_until(proc: subprocess.Popen[str], word: str, timeout: float) -> list[str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node exited before saying {word!r}")
        parts = line.split()
        if parts and parts[0] == word:
            return parts
    raise TimeoutError(word)


def _failover_once(server: pgserver.PgServer, n: int, poll: float, rng: random.Random) -> float:
    schema = f"failover_{n}"

    async def seed() -> None:
        async with actorq.open_queue(PostgresStore(server.url(), schema=schema)) as q:
            await q.enqueue("failover", None)

    trio.run(seed)
    leader = _spawn(server.url(), schema, poll)
    standby: subprocess.Popen[str] | None = None
    try:
        _read_until(leader, "served", 30)  # leads, served the seed, enqueued the next job
        standby = _spawn(server.url(), schema, poll)
        _read_until(standby, "started", 30)
        # The standby is connected and polls for the lock every ``poll``
        # seconds; a random wait samples every phase of that poll (a fixed
        # one would always kill just before, or just after, a poll).
        time.sleep(1.0 + rng.uniform(0, poll))
        killed = time.time()
        os.kill(leader.pid, signal.SIGKILL)
        served = float(_read_until(standby, "served", 30)[1])
        return served - killed
    finally:
        for proc in (leader, standby):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()


def _failover_suite(server: pgserver.PgServer, quick: bool) -> dict[str, Any]:
    poll = 0.5  # PostgresStore's default standby_poll
    rng = random.Random(6)
    samples = [_failover_once(server, n, poll, rng) for n in range(5 if quick else 11)]
    return {
        "standby_poll_s": poll,
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "samples_s": samples,
    }


# -------------------------------------------------------------------- run


def run(quick: bool) -> dict[str, Any]:
    if pgserver.find_bindir() is None:
        return {"skipped": "PostgreSQL server binaries not found"}
    with pgserver.PgServer(fsync=True) as server:
        cycles = trio.run(_cycle_suite, server, quick)
        failover = _failover_suite(server, quick)
    return {"server_fsync": True, "cycles": cycles, "failover": failover}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
