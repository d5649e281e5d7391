#!/usr/bin/env python3
"""Soak: a long-running server's memory stays flat. Prints one JSON document.

    python scripts/soak.py           # 100k jobs, 10k timed-out dequeues, 10k connections
    python scripts/soak.py --quick   # a tenth of each, for a smoke run

Starts ``actorq serve`` on the memory store in a process of its own and
drives it over websockets through three phases, reading the server's RSS
(``VmRSS`` in ``/proc/PID/status``) after each:

1. ``jobs``: jobs with distinct names (a type and a channel of their own)
   enqueued, finished and deleted. They are enqueued as dependency chains,
   one ``enqueue_many`` per chain; each job is finished and the next one
   dequeued in one ``finish_and_dequeue``, and one ``delete_job`` per chain
   removes the whole chain.
2. ``timed_out_dequeues``: dequeues that time out, each for a job type of its
   own.
3. ``connections``: connections opened (hello, one request) and closed.

The first phase's figure is the reference: the run is ``flat`` when every
later phase is within 5% of it. A server that kept an index entry per name,
a waiter per departed dequeue or state per closed connection would grow.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import trio

import actorq

TOLERANCE = 0.05
CHAIN = 500  # jobs per enqueue_many chain
WORKERS = 8  # chains worked on at once, over one connection


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def wait_until_serving(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = trio.current_time() + 30
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"actorq serve exited with status {server.returncode}")
        try:
            async with actorq.connect(url, connect_timeout=1) as queue:
                await queue.all_root_job_ids()
                return
        except actorq.QueueClosedError:
            if trio.current_time() > deadline:
                raise
            await trio.sleep(0.1)


async def jobs_phase(url: str, jobs: int) -> None:
    chains = trio.open_memory_channel[int](jobs // CHAIN + 1)
    send, receive = chains
    for first in range(0, jobs, CHAIN):
        send.send_nowait(first)
    send.close()

    async with actorq.connect(url, heartbeat_interval=None) as queue:

        async def work() -> None:
            async for first in receive:
                names = [(f"type-{n}", f"channel-{n}") for n in range(first, first + CHAIN)]
                specs = [
                    actorq.NewJob(t, {"n": i}, [i - 1] if i else [], c)
                    for i, (t, c) in enumerate(names)
                ]
                ids = await queue.enqueue_many(specs)
                job = await queue.dequeue([names[0][0]], [names[0][1]], timeout=10)
                for job_type, channel in names[1:]:
                    job = await queue.finish_and_dequeue(
                        job.id, None, [job_type], [channel], timeout=10
                    )
                await queue.finish_job(job.id, None)
                await queue.delete_job(ids[-1])  # and with it every job of the chain

        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(work)
        assert await queue.all_root_job_ids() == []


async def dequeue_phase(url: str, dequeues: int) -> None:
    async with actorq.connect(url, heartbeat_interval=None) as queue:

        async def dequeue(n: int) -> None:
            try:
                await queue.dequeue([f"waited-{n}"], [f"channel-{n}"], timeout=0.05)
            except actorq.DequeueTimeoutError:
                return
            raise AssertionError("a dequeue for a type nobody enqueues got a job")

        for first in range(0, dequeues, 500):  # as many at once as one connection takes
            async with trio.open_nursery() as nursery:
                for n in range(first, min(first + 500, dequeues)):
                    nursery.start_soon(dequeue, n)


async def connection_phase(url: str, connections: int) -> None:
    async def connect_some(count: int) -> None:
        for _ in range(count):
            async with actorq.connect(url, heartbeat_interval=None) as queue:
                await queue.all_root_job_ids()

    async with trio.open_nursery() as nursery:
        for i in range(16):
            nursery.start_soon(connect_some, connections // 16 + (i < connections % 16))


async def drive(url: str, pid: int, scale: int) -> dict[str, Any]:
    phases: list[dict[str, Any]] = []

    async def phase(name: str, count: int, body: Any) -> None:
        start = time.perf_counter()
        await body(url, count)
        seconds = time.perf_counter() - start
        phases.append(
            {"phase": name, "count": count, "seconds": round(seconds, 1), "rss_kib": rss_kib(pid)}
        )
        print(f"{name}: {phases[-1]}", file=sys.stderr)

    idle = rss_kib(pid)
    await phase("jobs", 100_000 // scale, jobs_phase)
    await phase("timed_out_dequeues", 10_000 // scale, dequeue_phase)
    await phase("connections", 10_000 // scale, connection_phase)
    reference = phases[0]["rss_kib"]
    for p in phases:
        p["vs_first"] = round(p["rss_kib"] / reference - 1, 4)
    return {
        "idle_rss_kib": idle,
        "phases": phases,
        "tolerance": TOLERANCE,
        "flat": all(abs(p["vs_first"]) <= TOLERANCE for p in phases),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of each phase")
    args = parser.parse_args()
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    command = [sys.executable, "-m", "actorq", "--store", "memory://", "serve", "--port", str(port)]
    server = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:

        async def run() -> dict[str, Any]:
            await wait_until_serving(url, server)
            return await drive(url, server.pid, 10 if args.quick else 1)

        result = trio.run(run)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    print(json.dumps({"quick": args.quick, **result}, indent=2))


if __name__ == "__main__":
    main()
