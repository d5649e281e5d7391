"""The crash test's child process, and the parent's side of it, for any durable store.

    python tests/_crash_child.py STORE_URL SEED

The child opens a queue on ``STORE_URL`` (``sqlite:///...`` or
``postgresql://...?actorq_schema=...``) and drives it flat out: producers
enqueue jobs (some depending on the producer's previous job, all with a NUL
escape in their args, so the crash covers the JSON text the store keeps) and
workers dequeue and finish them, so the scheduler commits batch after batch.
Every operation the queue acknowledged is written to stdout as one line,
flushed, *after* the call returned:

    E <job id> <n> <dependency id or ->   enqueue returned
    D <job id> <token>                     dequeue returned
    F <job id> <n>                         finish_job returned

so every complete line the parent reads names an operation the queue had
made durable. The first line is ``ready``. The parent kills the child with
SIGKILL (:func:`run_and_kill`), reopens the store and checks every line
against what it finds (:class:`Acked`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio

import actorq

if TYPE_CHECKING:
    from actorq._core._records import JobRecord

PRODUCERS = 3
WORKERS = 3
CHILD = Path(__file__).resolve()


# ------------------------------------------------------------------ child


async def main(store_url: str, seed: int) -> None:
    rng = random.Random(seed)
    out = sys.stdout

    def ack(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    async with actorq.open_queue(store_url) as queue:
        ack("ready")

        async def produce(name: str) -> None:
            previous: uuid.UUID | None = None
            for i in range(10**9):
                n = f"{name}.{i}"
                deps = [previous] if previous is not None and rng.random() < 0.3 else []
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


# ----------------------------------------------------------------- parent


def run_and_kill(store_url: str, seed: int, rng: random.Random) -> list[str]:
    """Run a child on ``store_url``, SIGKILL it at a random moment; its complete lines."""
    env = dict(os.environ, PYTHONPATH=str(CHILD.parent.parent))
    child = subprocess.Popen(
        [sys.executable, str(CHILD), store_url, str(seed)], stdout=subprocess.PIPE, env=env
    )
    assert child.stdout is not None
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for raw in child.stdout:
            if not raw.endswith(b"\n"):
                break  # cut off by the kill: never acknowledged to us
            lines.append(raw.decode())
            ready.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert ready.wait(60), "the child never started (or never became leader)"
        time.sleep(rng.uniform(0.05, 0.4))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return lines


async def reload(store_url: str) -> list[JobRecord]:
    """Every job record a fresh queue on ``store_url`` recovers."""
    # a dead child's lock (file lock, advisory lock) is gone, so this opens at once
    with trio.fail_after(30):
        async with actorq.open_queue(store_url, maintenance=None) as queue:
            return queue._scheduler.state.records()[0]


async def drain(store_url: str) -> None:
    """The recovered queue still works: every job can be carried to the end."""
    async with actorq.open_queue(store_url, maintenance=None) as queue:
        records = queue._scheduler.state.records()[0]
        for rec in records:
            if rec.started is not None and rec.finished is None:
                await queue.finish_job(rec.id, "late")
        while True:
            try:
                job = await queue.dequeue(["crash"], timeout=0)
            except actorq.DequeueTimeoutError:
                break
            await queue.finish_job(job.id, "drained")
        assert (await queue.stats()).finished == len(records)


@attrs.define
class Acked:
    """What the children acknowledged, across every run."""

    enqueued: dict[uuid.UUID, tuple[str, uuid.UUID | None]] = attrs.Factory(dict)
    dequeued: dict[uuid.UUID, set[uuid.UUID]] = attrs.Factory(dict)  # job -> its tokens
    finished: dict[uuid.UUID, str] = attrs.Factory(dict)

    def add(self, line: str) -> None:
        kind, *fields = line.split()
        if kind == "E":
            job_id, n, dep = fields
            self.enqueued[uuid.UUID(job_id)] = (n, None if dep == "-" else uuid.UUID(dep))
        elif kind == "D":
            self.dequeued.setdefault(uuid.UUID(fields[0]), set()).add(uuid.UUID(fields[1]))
        elif kind == "F":
            self.finished[uuid.UUID(fields[0])] = fields[1]
        else:
            assert kind == "ready", line

    def check(self, records: list[JobRecord]) -> None:
        """Every acknowledged operation is in ``records``, and nothing is half applied."""
        jobs = {r.id: r for r in records}
        for rec in records:  # consistent, acknowledged or not
            assert rec.queued is not None
            if rec.finished is not None:
                assert rec.started is not None
                assert rec.started <= rec.finished
                assert rec.result is not None
                assert rec.token is None
            elif rec.started is not None:
                assert rec.token is not None
                assert rec.result is None
            else:
                assert rec.token is None
                assert rec.result is None
        for job_id, (n, dep) in self.enqueued.items():
            rec = jobs[job_id]
            assert json.loads(rec.args) == {"n": n, "nul": "\u0000"}
            assert rec.dependencies == (() if dep is None else (dep,))
        for job_id, tokens in self.dequeued.items():
            rec = jobs[job_id]
            assert rec.started is not None
            if rec.finished is None:  # still running, under the last token handed out
                assert rec.token in tokens
        for job_id, n in self.finished.items():
            rec = jobs[job_id]
            assert rec.finished is not None
            assert json.loads(rec.result or "") == {"n": n}
        # each producer's jobs are in the order it enqueued them
        last: dict[str, int] = {}
        for rec in records:
            if rec.id in self.enqueued:
                producer, index = self.enqueued[rec.id][0].rsplit(".", 1)
                assert int(index) > last.get(producer, -1)
                last[producer] = int(index)


def kill_and_check(store_url: str, kills: int) -> None:
    """Kill a child ``kills`` times on one store, checking after each; then drain it."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    acked = Acked()
    for run in range(kills):
        for line in run_and_kill(store_url, seed + run, rng):
            acked.add(line)
        records = trio.run(reload, store_url)
        try:
            acked.check(records)
        except AssertionError:
            print(f"seed {seed}, kill {run}, {len(records)} jobs")
            raise
    assert acked.finished, "no job was ever finished: the kills came too early"
    trio.run(drain, store_url)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
