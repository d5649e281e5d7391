"""Kill -9 a process serving a queue on PostgreSQL; every acknowledged operation survives.

The crash test runs ``_crash_child.py`` (the same child and checks as the
SQLite crash test) on a fresh schema of the session's cluster: the child leads
a queue and drives it flat out, the parent SIGKILLs it at a random moment,
reopens the schema (which must win the leadership the dead child held) and
checks that every acknowledged operation is there and nothing is half
applied. Several kill points run on the same schema, so recovery also runs on
recovered data.

The failover tests run two ``actorq serve`` processes on one database, with
workers that know both URLs, and hit the leader mid-load: SIGKILL, SIGSTOP,
or a fault proxy between it and PostgreSQL that blackholes or resets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

import actorq
from actorq._stores._postgres import PostgresStore

if TYPE_CHECKING:
    import uuid

    from actorq._core._records import JobRecord

KILLS = 4


def test_sigkill_loses_no_acknowledged_operation() -> None:
    import pgserver
    from _crash_child import kill_and_check
    from _kinds_postgres import new_schema

    server = pgserver.require_server()
    kill_and_check(f"{server.url()}?actorq_schema={new_schema()}", KILLS)


# --------------------------------------------------------------- failover


class ServerProcess:
    """``actorq --store URL serve`` in a process of its own, its stderr watched.

    It says ``actorq serving`` only once it leads: a standby waits silently.
    """

    def __init__(self, store_url: str, port: int, *options: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "actorq", "--store", store_url, "serve",
             "--host", "127.0.0.1", "--port", str(port), *options],
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
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def lock_sessions(db: Any, dbname: str) -> int:
    import psycopg

    with psycopg.connect(db.url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'actorq lock'",
            (dbname,),
        ).fetchone()
    return int(row[0]) if row else 0


#: Timings of the failover tests' servers, through the store URL: a lease of 2 s.
LEASE = 2.0
TIMINGS = f"actorq_lease_timeout={LEASE}&actorq_leader_poll=0.2&actorq_standby_poll=0.1"
REAP_FAST = ("--job-timeout", "2", "--watch-interval", "0.2")
#: docs/ha.md, "Time to failover": from the fault to the standby serving, at
#: most standby_poll + its load for a crash or a reset, and lease_timeout +
#: standby_poll + leader_poll (the election's grace) + its load for a pause or
#: a blackhole. The slack is for a loaded 2-core machine.
FAILOVER_BOUND = {
    "kill": 0.1 + 5.0,
    "reset": 0.1 + 5.0,
    "pause": LEASE + 0.1 + 0.2 + 5.0,
    "blackhole": LEASE + 0.1 + 0.2 + 5.0,
}


@pytest.mark.parametrize("fault", ["kill", "pause", "blackhole", "reset"])
def test_failover_between_two_servers_loses_no_acknowledged_operation(fault: str) -> None:
    """Two ``actorq serve`` on one database; a fault hits the leader mid-load; the standby leads.

    The leader reaches PostgreSQL through a fault proxy. ``kill``: SIGKILL;
    ``pause``: SIGSTOP, then SIGCONT once the standby serves; ``blackhole``:
    the proxy keeps the leader's connections up but passes nothing, then heals;
    ``reset``: the proxy resets them. The standby serves within the bound of
    docs/ha.md; a leader that lived through the fault steps down and exits,
    and exactly one process holds the lock afterwards. Workers connect with
    both URLs and reconnect on any connection loss: no acknowledged enqueue,
    dequeue or finish is lost, no job is held by two workers at once, and
    jobs keep flowing through the new leader.
    """
    import pgserver
    from _kinds_postgres import new_schema
    from faultproxy import FaultProxy

    db = pgserver.require_server()
    dbname = new_schema()  # a database of its own, to count its sessions
    url = db.create_database(dbname)
    ports = [pgserver._free_port(), pgserver._free_port()]
    urls = [f"ws://127.0.0.1:{port}" for port in ports]
    proxy = FaultProxy(db.port).__enter__()
    via_proxy = f"postgresql://postgres@127.0.0.1:{proxy.port}/{dbname}?{TIMINGS}"
    first = ServerProcess(via_proxy, ports[0], *REAP_FAST)
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

    def inject() -> None:
        if fault == "kill":
            first.kill()
        elif fault == "pause":
            first.proc.send_signal(signal.SIGSTOP)
        elif fault == "blackhole":
            proxy.blackhole()
        else:
            proxy.reset()

    def heal() -> None:
        if fault == "pause":
            first.proc.send_signal(signal.SIGCONT)
        else:
            proxy.passing()

    try:
        first.wait_serving(30)
        second = ServerProcess(url + "?" + TIMINGS, ports[1], *REAP_FAST)
        deadline = time.monotonic() + 30
        while lock_sessions(db, dbname) < 2:  # the standby is connected and polling
            assert time.monotonic() < deadline, "the standby never connected"
            time.sleep(0.05)
        assert not second.serving()
        standby = second

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                for n in range(4):
                    nursery.start_soon(worker, n)
                await warmed_up.wait()
                inject()
                killed.set()
                with trio.fail_after(FAILOVER_BOUND[fault]):
                    await trio.to_thread.run_sync(standby.wait_serving, 30)
                heal()
                with trio.fail_after(30):
                    await carried_on.wait()
                nursery.cancel_scope.cancel()

        trio.run(main)
        if fault != "kill":
            # the old leader stepped down by itself: it exits, and says why
            assert first.proc.wait(30) != 0
            first.reader.join(5)
            assert any("stops leading" in line for line in first.lines), first.lines
        assert second.proc.poll() is None  # the new leader still serves
        # and only it has a lock session, once the server has seen the old ones go
        deadline = time.monotonic() + 10
        while lock_sessions(db, dbname) != 1:
            assert time.monotonic() < deadline, "more than one process holds a lock session"
            time.sleep(0.05)
    finally:
        first.kill()
        if second is not None:
            second.kill()
        proxy.__exit__(None, None, None)

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
