#!/usr/bin/env python3
"""Remote benchmark: job cycles over websockets on loopback, server in its own process.

    python scripts/bench.py --suite remote [--quick]
    python scripts/bench_remote.py [--quick]        # this suite alone

The server process serves a memory queue with :func:`actorq.serve` and, on a
second port, a bare trio-websocket echo server; this process is the client.
Measured in the same run:

* ``echo``: the round trip of one small text frame (the baseline);
* ``sequential``: one connection doing enqueue, dequeue, finish one after
  the other, in microseconds and in echo round trips (3 is the floor);
* ``sequential_combined``: the same cycle as a worker runs it with the
  combined request: enqueue, then ``finish_and_dequeue`` (2 round trips);
* ``workers_N``: N worker connections, each looping ``finish_and_dequeue``,
  while a producer connection enqueues the jobs in batches (``enqueue_many``);
  jobs/s end to end (enqueue, dequeue, finish of every job), beside N echo
  connections' round trips per second measured just before (the ceiling this
  machine puts on any protocol that needs one round trip per job);
* ``workers_N_unbatched``: the same, but every worker enqueues its own jobs
  one request each (no batching anywhere).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketRequest, open_websocket_url, serve_websocket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import actorq

HOST = "127.0.0.1"


# ----------------------------------------------------------------- server


async def _echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    while True:
        try:
            await ws.send_message(await ws.get_message())
        except Exception:
            return


async def _serve_forever() -> None:
    async with actorq.open_queue() as queue, trio.open_nursery() as nursery:
        server = await nursery.start(actorq.serve, queue, HOST, 0)
        echo = await nursery.start(serve_websocket, _echo, HOST, 0, None)
        print(f"PORTS {server.port} {echo.port}", flush=True)
        # Run until the parent closes our stdin.
        await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------- client


async def _echo_rtt(url: str, rounds: int, repeats: int) -> list[float]:
    out = []
    async with open_websocket_url(url) as ws:
        frame = '{"kind":"ok","id":1,"value":null}'
        for _ in range(50):
            await ws.send_message(frame)
            await ws.get_message()
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(rounds):
                await ws.send_message(frame)
                await ws.get_message()
            out.append((time.perf_counter() - start) / rounds)
    return out


async def _sequential(url: str, rounds: int, repeats: int) -> list[float]:
    out = []
    async with actorq.connect(url) as q:
        for _ in range(50):
            await q.enqueue("seq", {"n": 1})
            job = await q.dequeue(["seq"], timeout=0)
            await q.finish_job(job.id, {"ok": True})
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(rounds):
                await q.enqueue("seq", {"n": 1})
                job = await q.dequeue(["seq"], timeout=0)
                await q.finish_job(job.id, {"ok": True})
            out.append((time.perf_counter() - start) / rounds)
    return out


async def _sequential_combined(url: str, rounds: int, repeats: int) -> list[float]:
    out = []
    async with actorq.connect(url) as q:
        await q.enqueue("comb", {"n": 0})
        job = await q.dequeue(["comb"], timeout=0)
        for _ in range(50):
            await q.enqueue("comb", {"n": 1})
            job = await q.finish_and_dequeue(job.id, {"ok": True}, ["comb"], timeout=0)
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(rounds):
                await q.enqueue("comb", {"n": 1})
                job = await q.finish_and_dequeue(job.id, {"ok": True}, ["comb"], timeout=0)
            out.append((time.perf_counter() - start) / rounds)
        await q.finish_job(job.id)
    return out


async def _echo_throughput(url: str, connections: int, seconds: float) -> float:
    counts = [0] * connections
    ready = trio.Event()
    opened = [0]

    async def one(n: int) -> None:
        async with open_websocket_url(url) as ws:
            opened[0] += 1
            if opened[0] == connections:
                ready.set()
            await ready.wait()
            frame = '{"kind":"ok","id":1,"value":null}'
            with trio.move_on_after(seconds):
                while True:
                    await ws.send_message(frame)
                    await ws.get_message()
                    counts[n] += 1

    async with trio.open_nursery() as nursery:
        for n in range(connections):
            nursery.start_soon(one, n)
        await ready.wait()
        start = time.perf_counter()
    return sum(counts) / (time.perf_counter() - start)


async def _worker(q: actorq.RemoteQueue, job_type: str, own_jobs: int) -> int:
    done = 0
    if own_jobs:
        # Unbatched: enqueue one job, then finish it and take the next in one trip.
        await q.enqueue(job_type, {"n": 0})
        job = await q.dequeue([job_type])
        for n in range(1, own_jobs):
            await q.enqueue(job_type, {"n": n})
            job = await q.finish_and_dequeue(job.id, {"ok": True}, [job_type])
            done += 1
        await q.finish_job(job.id, {"ok": True})
        return done + 1
    job = await q.dequeue([job_type, "stop"])
    while job.type != "stop":
        job = await q.finish_and_dequeue(job.id, {"ok": True}, [job_type, "stop"])
        done += 1
    await q.finish_job(job.id, None)
    return done


async def _throughput(url: str, workers: int, jobs: int, batched: bool) -> float:
    job_type = f"w{workers}{'b' if batched else 'u'}{time.monotonic_ns()}"
    counts: list[int] = []
    async with trio.open_nursery() as setup:
        queues: list[actorq.RemoteQueue] = []
        # Open every connection first; only then start the clock.
        stack_ready = trio.Event()
        start_gate = trio.Event()
        finished = trio.Event()
        remaining = [workers]

        async def hold(n: int) -> None:
            async with actorq.connect(url, heartbeat_interval=None) as q:
                queues.append(q)
                if len(queues) == workers:
                    stack_ready.set()
                await start_gate.wait()
                per = jobs // workers if not batched else 0
                counts.append(await _worker(q, job_type, per))
                remaining[0] -= 1
                if remaining[0] == 0:
                    finished.set()

        for n in range(workers):
            setup.start_soon(hold, n)
        await stack_ready.wait()
        async with actorq.connect(url, heartbeat_interval=None) as producer:
            start = time.perf_counter()
            start_gate.set()
            if batched:
                batch = 100
                for first in range(0, jobs, batch):
                    size = min(batch, jobs - first)
                    await producer.enqueue_many([(job_type, {"n": first + i}) for i in range(size)])
                await producer.enqueue_many([("stop", None)] * workers)
            await finished.wait()
            elapsed = time.perf_counter() - start
    total = sum(counts)
    return total / elapsed


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


async def _measure(ports: tuple[int, int], quick: bool) -> dict[str, Any]:
    # Every figure is taken next to its baseline, repeat by repeat, and the
    # ratios are the medians of per-repeat ratios: on a shared, noisy machine
    # the baseline drifts within a run, and a ratio to a stale baseline lies.
    queue_url = f"ws://{HOST}:{ports[0]}"
    echo_url = f"ws://{HOST}:{ports[1]}"
    rounds = 200 if quick else 1000
    repeats = 3 if quick else 5
    echo_us: list[float] = []
    seq_us: list[float] = []
    comb_us: list[float] = []
    seq_ratio: list[float] = []
    comb_ratio: list[float] = []
    for _ in range(repeats):
        before = (await _echo_rtt(echo_url, rounds, 1))[0] * 1e6
        seq = (await _sequential(queue_url, rounds // 3, 1))[0] * 1e6
        comb = (await _sequential_combined(queue_url, rounds // 2, 1))[0] * 1e6
        after = (await _echo_rtt(echo_url, rounds, 1))[0] * 1e6
        echo = (before + after) / 2
        echo_us.append(echo)
        seq_us.append(seq)
        comb_us.append(comb)
        seq_ratio.append(seq / echo)
        comb_ratio.append(comb / echo)
    results: dict[str, Any] = {
        "echo": {"median_us": _median(echo_us), "runs_us": echo_us},
        "sequential": {
            "median_us": _median(seq_us),
            "runs_us": seq_us,
            "echo_round_trips": _median(seq_ratio),
            "echo_round_trips_runs": seq_ratio,
            "goal_echo_round_trips": 4,
        },
        "sequential_combined": {
            "median_us": _median(comb_us),
            "runs_us": comb_us,
            "echo_round_trips": _median(comb_ratio),
            "echo_round_trips_runs": comb_ratio,
        },
    }
    jobs = 3000 if quick else 10000
    seconds = 1.0 if quick else 2.0
    for workers in (1, 16, 64):
        rates, echoes, ratios = [], [], []
        for _ in range(repeats):
            echo_rate = await _echo_throughput(echo_url, workers, seconds)
            rate = await _throughput(queue_url, workers, jobs, True)
            rates.append(rate)
            echoes.append(echo_rate)
            ratios.append(rate / echo_rate)
        results[f"workers_{workers}"] = {
            "jobs_per_s": _median(rates),
            "runs": rates,
            "echo_round_trips_per_s": _median(echoes),
            "jobs_per_echo_round_trip": _median(ratios),
            "jobs": jobs,
            "enqueue_batch": 100,
        }
    for workers in (1, 64):
        rates = [await _throughput(queue_url, workers, jobs, False) for _ in range(repeats)]
        results[f"workers_{workers}_unbatched"] = {"jobs_per_s": _median(rates), "runs": rates}
    results["goal_workers_64_jobs_per_s"] = 5000
    return results


def run(quick: bool) -> dict[str, Any]:
    """Start the server process, measure, stop it. Returns the figures."""
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        if not line or line[0] != "PORTS":
            raise RuntimeError("the server process did not start")
        ports = (int(line[1]), int(line[2]))
        return trio.run(_measure, ports, quick)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


if __name__ == "__main__":
    if "--serve" in sys.argv:
        trio.run(_serve_forever)
    else:
        import json

        print(json.dumps(run("--quick" in sys.argv), indent=2))
