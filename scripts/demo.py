#!/usr/bin/env python3
"""A small actorq demo: a chain of dependent jobs, two workers on two channels.

    python scripts/demo.py                       # SQLite in ./actorq-demo.db
    python scripts/demo.py --store memory://     # a throwaway in-memory queue

Two tenants ("red" and "blue") each get a build pipeline of dependent jobs:
fetch -> compile -> package, plus a final "publish" job per tenant that needs
the package. One worker serves each channel. The demo prints every job's
status as it changes and finishes with a table of results.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import trio

import actorq

if TYPE_CHECKING:
    from uuid import UUID

STEPS = ["fetch", "compile", "package", "publish"]


async def worker(queue: actorq.JobQueue, channel: str, log: list[str]) -> None:
    """Serve one channel until the queue has nothing more for it."""
    worker_id = await queue.insert_worker(channel, "x86_64")
    try:
        while True:
            try:
                job = await queue.dequeue(STEPS, [channel], timeout=0.5, worker_id=worker_id)
            except actorq.DequeueTimeoutError:
                return
            await queue.refresh_heartbeat(job.token)
            # A dependency's result is there for the asking: hand it on.
            inputs = [(await queue.job_status(dep)).result for dep in job.dependencies]
            await trio.sleep(0.05)  # the "work"
            result = {"step": job.type, "tenant": job.args["tenant"], "inputs": len(inputs)}
            await queue.finish_job(job.id, result)
            log.append(f"[{channel:>4}] finished {job.type:<8} {job.id}")
    finally:
        await queue.delete_worker(worker_id)


async def main(store: str) -> None:
    async with actorq.open_queue(store) as queue:
        jobs: dict[str, list[UUID]] = {}
        for tenant in ("red", "blue"):
            previous: list[UUID] = []
            chain = []
            for step in STEPS:
                job_id = await queue.enqueue(step, {"tenant": tenant}, previous, channel=tenant)
                chain.append(job_id)
                previous = [job_id]
            jobs[tenant] = chain
        print("enqueued", sum(len(c) for c in jobs.values()), "jobs in two dependency chains")
        for tenant, chain in jobs.items():
            for job_id in chain:
                status = await queue.job_status(job_id)
                print(f"  {tenant:>4} {status.type:<8} {status.state.value:<8} {job_id}")

        log: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker, queue, "red", log)
            nursery.start_soon(worker, queue, "blue", log)
        print("\n".join(log))

        print("final statuses:")
        for tenant, chain in jobs.items():
            for job_id in chain:
                status = await queue.job_status(job_id)
                took = (status.finished - status.queued).total_seconds() if status.finished else 0
                print(
                    f"  {tenant:>4} {status.type:<8} {status.state.value:<8} "
                    f"after {took:5.2f}s  result={status.result}"
                )
        stats = await queue.stats()
        print(f"queue: {stats.jobs} jobs, {stats.finished} finished, {stats.pending} pending")
        if store.startswith("sqlite"):
            print(f"(kept in {store}: run again and the earlier jobs are still there)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store",
        default="sqlite:///actorq-demo.db",
        help="store URL (default: sqlite:///actorq-demo.db, in the current directory)",
    )
    trio.run(main, parser.parse_args().store)
