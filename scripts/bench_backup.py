#!/usr/bin/env python3
"""``actorq backup`` of a SQLite store while ``actorq serve`` runs on it. Prints JSON.

    python scripts/bench_backup.py [--jobs N] [--rounds R]

Fills a store with N jobs, starts ``actorq serve`` on it (its own process),
and times R rounds of ``actorq backup`` (another process) through the server,
while a producer in this process enqueues one job after another: the
producer's slowest enqueue during each backup shows how long commits wait
for the copy. Beside it, in the same run: the same producer's slowest enqueue
over as long a time with no backup, and, once the server has stopped, a plain
file copy (``shutil.copyfile``) of the same database. Medians of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

import actorq


async def fill(store: str, jobs: int) -> None:
    async with actorq.open_queue(store, maintenance=None) as queue:
        for start in range(0, jobs, 1000):
            batch = [
                actorq.NewJob("t", {"n": n, "payload": "x" * 64}, (), "red")
                for n in range(start, min(jobs, start + 1000))
            ]
            await queue.enqueue_many(batch)


async def start_serve(store: str) -> tuple[trio.Process, str]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actorq", "serve", "--store", store, "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    banner = b""
    with trio.fail_after(600):
        while not banner.endswith(b"\n"):
            chunk = await proc.stderr.receive_some(1)
            if not chunk:
                raise RuntimeError("actorq serve exited before its banner")
            banner += chunk
    match = re.search(r" on (ws://\S+)$", banner.decode().strip())
    assert match, banner
    return proc, match.group(1)


async def slowest_enqueue(queue: actorq.JobQueue, done: trio.Event) -> float:
    worst = 0.0
    while not done.is_set():
        start = time.perf_counter()
        await queue.enqueue("probe", None, (), "blue")
        worst = max(worst, time.perf_counter() - start)
    return worst


async def measure(jobs: int, rounds: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="actorq-bench-backup-"))
    db = work / "q.db"
    store = f"sqlite:///{db}"
    try:
        await fill(store, jobs)
        size = db.stat().st_size
        proc, url = await start_serve(store)
        backup_s: list[float] = []
        stall_s: list[float] = []
        baseline_stall_s: list[float] = []
        try:
            async with actorq.connect(url) as queue:
                for r in range(rounds):
                    dest = work / f"copy-{r}.db"
                    done = trio.Event()
                    worst: list[float] = []

                    async def probe(done: trio.Event = done, worst: list[float] = worst) -> None:
                        worst.append(await slowest_enqueue(queue, done))

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(probe)
                        start = time.perf_counter()
                        await trio.run_process(
                            [sys.executable, "-m", "actorq", "backup", str(db), str(dest)],
                            stdout=subprocess.DEVNULL,
                        )
                        took = time.perf_counter() - start
                        done.set()
                    backup_s.append(took)
                    stall_s.append(worst[0])
                    # the same producer, as long, with no backup
                    quiet = trio.Event()
                    quiet_worst: list[float] = []

                    async def quiet_probe(
                        quiet: trio.Event = quiet, quiet_worst: list[float] = quiet_worst
                    ) -> None:
                        quiet_worst.append(await slowest_enqueue(queue, quiet))

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(quiet_probe)
                        await trio.sleep(took)
                        quiet.set()
                    baseline_stall_s.append(quiet_worst[0])
                    os.remove(dest)
        finally:
            proc.terminate()
            await proc.wait()
        copy_s: list[float] = []
        for r in range(rounds):
            start = time.perf_counter()
            shutil.copyfile(db, work / f"plain-{r}.db")
            copy_s.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    backup = statistics.median(backup_s)
    copy = statistics.median(copy_s)
    return {
        "jobs": jobs,
        "db_bytes": size,
        "rounds": rounds,
        "backup_through_server_s": round(backup, 3),
        "baseline_file_copy_s": round(copy, 4),
        "backup_over_copy": round(backup / copy, 1),
        "slowest_enqueue_during_backup_ms": round(1000 * statistics.median(stall_s), 1),
        "baseline_slowest_enqueue_without_backup_ms": round(
            1000 * statistics.median(baseline_stall_s), 1
        ),
        "note": "backup time includes starting the actorq backup process",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(trio.run(measure, args.jobs, args.rounds), indent=2))


if __name__ == "__main__":
    main()
