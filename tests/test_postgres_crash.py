"""Kill -9 a process serving a queue on PostgreSQL; every acknowledged operation survives.

The parent starts this very file as a child process (``python
tests/test_postgres_crash.py URL SCHEMA SEED``). The child leads a queue on
the session's cluster and drives it flat out: producers enqueue jobs (some
depending on their previous one, all with a ``\\u0000`` in the args), workers
dequeue and finish them. It prints one line per operation *after* the queue
acknowledged it:

    E <job id> <n> <dependency id or ->   enqueue returned
    D <job id> <token>                     dequeue returned
    F <job id> <n>                         finish_job returned

The parent SIGKILLs the child at a random moment, loads the schema with a new
store (which must win the leadership the dead child held) and checks that
every complete line is there and nothing is half applied. Several kill
points run on the same schema, so recovery also runs on recovered data.

The failover test runs two ``actorq serve`` processes on one database, with
workers that know both URLs, and SIGKILLs the leader mid-load.
"""

from __future__ import annotations

import contextlib
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
from typing import Any

import trio

import actorq
from actorq._core import JobRecord
from actorq._postgres import PostgresStore

KILLS = 4
PRODUCERS = 3
WORKERS = 3


# ------------------------------------------------------------------ child


async def child(url: str, schema: str, seed: int) -> None:
    rng = random.Random(seed)

    def ack(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async with actorq.open_queue(PostgresStore(url, schema=schema)) as queue:
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


class Acknowledged:
    """Every operation the children reported as acknowledged, over all runs."""

    def __init__(self) -> None:
        self.enqueued: dict[uuid.UUID, tuple[str, uuid.UUID | None]] = {}
        self.tokens: dict[uuid.UUID, set[uuid.UUID]] = {}
        self.finished: dict[uuid.UUID, str] = {}

    def add(self, line: str) -> None:
        kind, *fields = line.split()
        if kind == "E":
            self.enqueued[uuid.UUID(fields[0])] = (
                fields[1],
                None if fields[2] == "-" else uuid.UUID(fields[2]),
            )
        elif kind == "D":
            self.tokens.setdefault(uuid.UUID(fields[0]), set()).add(uuid.UUID(fields[1]))
        elif kind == "F":
            self.finished[uuid.UUID(fields[0])] = fields[1]
        else:
            assert kind == "ready", line

    def check(self, records: list[JobRecord]) -> None:
        by_id = {r.id: r for r in records}
        for r in records:  # consistent, acknowledged or not
            if r.finished is not None:
                assert r.started is not None and r.started <= r.finished
                assert r.result is not None and r.token is None
            elif r.started is not None:
                assert r.token is not None
            else:
                assert r.token is None and r.result is None
        for job_id, (n, dep) in self.enqueued.items():
            r = by_id[job_id]
            assert json.loads(r.args) == {"n": n, "nul": "\u0000"}
            assert r.dependencies == (() if dep is None else (dep,))
        for job_id, tokens in self.tokens.items():
            r = by_id[job_id]
            assert r.started is not None
            if r.finished is None:
                assert r.token in tokens
        for job_id, n in self.finished.items():
            r = by_id[job_id]
            assert r.finished is not None and json.loads(r.result or "") == {"n": n}
        # each producer's jobs come back in the order it enqueued them
        last: dict[str, int] = {}
        for r in records:
            if r.id in self.enqueued:
                producer, index = self.enqueued[r.id][0].rsplit(".", 1)
                assert int(index) > last.get(producer, -1)
                last[producer] = int(index)


def run_and_kill(url: str, schema: str, seed: int, rng: random.Random) -> list[str]:
    """Run a child, SIGKILL it at a random moment; return its complete lines."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(
        [sys.executable, __file__, url, schema, str(seed)], stdout=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if not raw.endswith(b"\n"):
                break  # cut by the kill: never acknowledged
            lines.append(raw.decode())
            started.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert started.wait(60), "the child never became leader"
        time.sleep(rng.uniform(0.05, 0.4))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return lines


def test_sigkill_loses_no_acknowledged_operation() -> None:
    import pgserver
    from _kinds_postgres import new_schema

    server = pgserver.require_server()
    url, schema = server.url(), new_schema()
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    acked = Acknowledged()

    async def load() -> list[JobRecord]:
        store = PostgresStore(url, schema=schema)
        # the dead child's lock session is gone, so this wins at once
        with trio.fail_after(10):
            jobs, _ = await store.load()
        await store.close()
        return jobs

    for run in range(KILLS):
        for line in run_and_kill(url, schema, seed + run, rng):
            acked.add(line)
        records = trio.run(load)
        try:
            acked.check(records)
        except AssertionError:
            print(f"seed {seed}, kill {run}, {len(records)} jobs")
            raise
    assert acked.finished, "no job was ever finished: the kills came too early"

    async def drain() -> None:
        # the recovered queue still works: every job can be carried to the end
        async with actorq.open_queue(PostgresStore(url, schema=schema)) as queue:
            records = queue.scheduler.state.records()[0]
            for r in records:
                if r.started is not None and r.finished is None:
                    await queue.finish_job(r.id, "late")
            while True:
                try:
                    job = await queue.dequeue(["crash"], timeout=0)
                except actorq.DequeueTimeoutError:
                    break
                await queue.finish_job(job.id, "drained")
            assert (await queue.stats()).finished == len(records)

    trio.run(drain)


if __name__ == "__main__":
    trio.run(child, sys.argv[1], sys.argv[2], int(sys.argv[3]))


# --------------------------------------------------------------- failover


class ServerProcess:
    """``actorq --store URL serve`` in a process of its own, its stderr watched.

    It says ``actorq serving`` only once it leads: a standby waits silently.
    """

    def __init__(self, store_url: str, port: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "actorq", "--store", store_url, "serve",
             "--host", "127.0.0.1", "--port", str(port)],
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line.strip())
                self.changed.notify_all()

    def serving(self) -> bool:
        return any(line.startswith("actorq serving") for line in self.lines)

    def wait_serving(self, timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(self.serving, timeout):
                raise TimeoutError(f"server on port {self.port} never served: {self.lines}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(5)


def lock_sessions(db: Any, dbname: str) -> int:
    import psycopg

    with psycopg.connect(db.url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'actorq lock'",
            (dbname,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_failover_between_two_servers_loses_no_acknowledged_operation() -> None:
    """Two ``actorq serve`` on one database; SIGKILL the leader mid-load; the standby carries on.

    Workers connect with both URLs and reconnect on any connection loss. No
    acknowledged enqueue, dequeue or finish is lost, no job is held by two
    workers at once, and jobs keep flowing through the new leader.
    """
    import pgserver
    from _kinds_postgres import new_schema

    db = pgserver.require_server()
    dbname = new_schema()  # a database of its own, to count its sessions
    url = db.create_database(dbname)
    ports = [pgserver._free_port(), pgserver._free_port()]
    urls = [f"ws://127.0.0.1:{port}" for port in ports]
    first = ServerProcess(url, ports[0])
    second: ServerProcess | None = None
    enqueued: set[uuid.UUID] = set()
    tokens: dict[uuid.UUID, uuid.UUID] = {}  # job -> last token a worker was handed
    finished: set[uuid.UUID] = set()
    holders: dict[uuid.UUID, int] = {}  # job -> the worker holding it right now
    after_failover: list[uuid.UUID] = []
    killed = trio.Event()
    warmed_up = trio.Event()
    carried_on = trio.Event()

    async def session(body: Any) -> None:
        """Run ``body(queue)`` on a connection, reconnecting until it returns."""
        while True:
            try:
                async with actorq.connect(urls, connect_timeout=2.0) as queue:
                    await body(queue)
                    return
            except actorq.QueueClosedError:
                await trio.sleep(0.05)  # both down for a moment: the standby is taking over

    async def producer() -> None:
        count = 0

        async def body(queue: Any) -> None:
            nonlocal count
            while count < 400:
                job_id = await queue.enqueue("fo", {"i": count})
                enqueued.add(job_id)
                count += 1
                await trio.sleep(0.002)

        await session(body)

    async def worker(n: int) -> None:
        holding: actorq.DequeuedJob | None = None

        async def body(queue: Any) -> None:
            nonlocal holding
            while len(after_failover) < 30:
                if holding is None:
                    try:
                        job = await queue.dequeue(["fo"], timeout=0.2)
                    except actorq.DequeueTimeoutError:
                        continue
                    assert job.id not in holders, "a job is held by two workers at once"
                    holders[job.id] = n
                    tokens[job.id] = job.token
                    holding = job
                # NotRunningError: our finish was committed just before the leader died
                with contextlib.suppress(actorq.NotRunningError):
                    await queue.finish_job(holding.id, {"by": n})
                finished.add(holding.id)
                if len(finished) >= 60:
                    warmed_up.set()
                if killed.is_set():
                    after_failover.append(holding.id)
                    if len(after_failover) >= 30:
                        carried_on.set()
                del holders[holding.id]
                holding = None

        await session(body)

    try:
        first.wait_serving(30)
        second = ServerProcess(url, ports[1])
        deadline = time.monotonic() + 30
        while lock_sessions(db, dbname) < 2:  # the standby is connected and polling
            assert time.monotonic() < deadline, "the standby never connected"
            time.sleep(0.05)
        assert not second.serving()

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                for n in range(4):
                    nursery.start_soon(worker, n)
                await warmed_up.wait()
                first.kill()  # SIGKILL, mid-load
                killed.set()
                with trio.fail_after(30):
                    await trio.to_thread.run_sync(second.wait_serving, 30)
                    await carried_on.wait()
                nursery.cancel_scope.cancel()

        trio.run(main)
    finally:
        first.kill()
        if second is not None:
            second.kill()

    async def load() -> list[JobRecord]:
        store = PostgresStore(url)
        jobs, _ = await store.load()
        await store.close()
        return jobs

    records = {r.id: r for r in trio.run(load)}
    assert enqueued <= set(records)
    for job_id in finished:
        assert records[job_id].finished is not None
    for job_id, token in tokens.items():
        r = records[job_id]
        assert r.started is not None
        assert r.finished is not None or r.token == token
    assert len(after_failover) >= 30
