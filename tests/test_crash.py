"""Kill -9 a process serving a queue on SQLite; every acknowledged operation survives.

A child process (``_crash_child.py``) enqueues, dequeues and finishes jobs as
fast as it can and prints each operation once the queue acknowledged it. The
parent kills it with SIGKILL after a random moment, reopens the file and
checks that everything printed is there, and that nothing is half applied.
The same file goes through several kill points, so recovery also runs on a
file that was itself recovered. The only test here that uses real time; it
asserts nothing about durations.
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

import attrs
import pytest
import trio

import actorq
from actorq._core import JobRecord

KILLS = 4
CHILD = Path(__file__).with_name("_crash_child.py")

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


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


def run_and_kill(path: Path, seed: int, rng: random.Random) -> list[str]:
    """Run a child on ``path``, SIGKILL it at a random moment; its complete lines."""
    env = dict(os.environ, PYTHONPATH=str(CHILD.parent.parent))
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(seed)],
        stdout=subprocess.PIPE,
        env=env,
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
        assert ready.wait(60), "the child never started"
        time.sleep(rng.uniform(0.05, 0.4))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return lines


def check(records: list[JobRecord], acked: Acked) -> None:
    jobs = {r.id: r for r in records}
    for rec in records:  # nothing half applied, acknowledged or not
        assert rec.queued is not None
        if rec.finished is not None:
            assert rec.started is not None and rec.started <= rec.finished
            assert rec.result is not None and rec.token is None
        elif rec.started is not None:
            assert rec.token is not None and rec.result is None
        else:
            assert rec.token is None
    for job_id, (n, dep) in acked.enqueued.items():
        rec = jobs[job_id]
        assert json.loads(rec.args) == {"n": n, "nul": "\u0000"}
        assert rec.dependencies == (() if dep is None else (dep,))
    for job_id, tokens in acked.dequeued.items():
        rec = jobs[job_id]
        assert rec.started is not None
        if rec.finished is None:  # still running, under the last token handed out
            assert rec.token in tokens
    for job_id, n in acked.finished.items():
        rec = jobs[job_id]
        assert rec.finished is not None
        assert json.loads(rec.result or "") == {"n": n}
    # each producer's jobs are in the order it enqueued them
    last: dict[str, int] = {}
    for rec in records:
        if rec.id in acked.enqueued:
            producer, index = acked.enqueued[rec.id][0].rsplit(".", 1)
            assert int(index) > last.get(producer, -1)
            last[producer] = int(index)


def test_sigkill_loses_no_acknowledged_operation(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    acked = Acked()
    for run in range(KILLS):
        for line in run_and_kill(path, seed + run, rng):
            acked.add(line)

        async def reopen() -> list[JobRecord]:
            async with actorq.open_queue(actorq.SqliteStore(path)) as queue:
                return queue.scheduler.state.records()[0]

        records = trio.run(reopen)
        try:
            check(records, acked)
        except AssertionError:
            print(f"seed {seed}, kill {run}, {len(records)} jobs")
            raise
    assert acked.finished, "no job was ever finished: the kills came too early"

    # the recovered queue still works: every job can be carried to the end
    async def drain() -> None:
        async with actorq.open_queue(actorq.SqliteStore(path)) as queue:
            state = queue.scheduler.state
            for rec in state.records()[0]:
                if rec.started is not None and rec.finished is None:
                    await queue.finish_job(rec.id, "late")
            while True:
                try:
                    job = await queue.dequeue(["crash"], timeout=0)
                except actorq.DequeueTimeoutError:
                    break
                await queue.finish_job(job.id, "drained")
            assert (await queue.stats()).finished == len(state.records()[0])

    trio.run(drain)
