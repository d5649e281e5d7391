"""The process that ``test_crash.py`` kills: a queue on a SQLite file, driven flat out.

    python tests/_crash_child.py PATH SEED

Producers enqueue jobs (some depending on the producer's previous job) and
workers dequeue and finish them, all concurrently, so the scheduler commits
batch after batch. Every operation the queue acknowledged is written to
stdout as one line, flushed, *after* the call returned:

    E <job id> <n> <dependency id or ->   enqueue returned
    D <job id> <token>                     dequeue returned
    F <job id> <n>                         finish_job returned

so every complete line the parent reads names an operation the queue had
made durable. The first line is ``ready``.
"""

from __future__ import annotations

import random
import sys
import uuid

import trio

import actorq

PRODUCERS = 3
WORKERS = 3


async def main(path: str, seed: int) -> None:
    rng = random.Random(seed)
    out = sys.stdout

    def ack(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    async with actorq.open_queue(actorq.SqliteStore(path)) as queue:
        ack("ready")

        async def produce(name: str) -> None:
            previous: uuid.UUID | None = None
            for i in range(10**9):
                n = f"{name}.{i}"
                deps = [previous] if previous is not None and rng.random() < 0.3 else []
                # a NUL escape, so the crash covers the JSON text the store keeps
                job_id = await queue.enqueue("crash", {"n": n, "nul": "\u0000"}, deps)
                ack(f"E {job_id} {n} {deps[0] if deps else '-'}")
                previous = job_id

        async def work() -> None:
            while True:
                job = await queue.dequeue(["crash"])
                ack(f"D {job.id} {job.token}")
                await queue.finish_job(job.id, {"n": job.args["n"]})
                ack(f"F {job.id} {job.args['n']}")

        async with trio.open_nursery() as nursery:
            for p in range(PRODUCERS):
                nursery.start_soon(produce, f"{seed}.{p}")
            for _ in range(WORKERS):
                nursery.start_soon(work)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
