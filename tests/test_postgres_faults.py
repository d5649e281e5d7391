"""The PostgreSQL store under network faults, pauses, slow elections and idle timeouts.

A leader reaches the database through :class:`faultproxy.FaultProxy`, a TCP
proxy on loopback that passes, resets or blackholes (keeps the connection up
and passes nothing); a standby connects directly. Every test asserts the same
things: the leader that cannot confirm its lock stops serving (its queue
closes, an operation in flight fails with ``QueueClosedError``), the standby
leads within the bound docs/ha.md states, and every acknowledged operation
is in what the standby loaded. Real time with short timings (a lease of
1.5 s): these are about server sessions and sockets, which a MockClock
cannot drive; each test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pgserver
import psycopg
import pytest
import trio
from _kinds_postgres import new_schema
from faultproxy import FaultProxy

import actorq
from actorq import StoreError
from actorq._core._records import Changes, JobRecord
from actorq._stores import _postgres_sql
from actorq._stores._postgres import PostgresStore

LEASE = 1.5


def make_store(url: str, schema: str) -> PostgresStore:
    return PostgresStore(
        url, schema=schema, standby_poll=0.05, leader_poll=0.1, lease_timeout=LEASE
    )


#: docs/ha.md: a standby leads within lease_timeout + standby_poll + leader_poll
#: (the election's grace) + the load after a leader went silent; the rest is
#: slack for a loaded 2-core machine.
FAILOVER_BOUND = LEASE + 0.05 + 0.1 + 5.0


@pytest.fixture(scope="module")
def pg() -> pgserver.PgServer:
    return pgserver.require_server()


@pytest.fixture
def database(pg: pgserver.PgServer) -> str:
    """A database of its own (per-database settings), by name."""
    name = new_schema()
    pg.create_database(name)
    return name


def url(port: int, database: str, user: str = "postgres") -> str:
    return f"postgresql://{user}@127.0.0.1:{port}/{database}"


def stores(
    pg: pgserver.PgServer, proxy: FaultProxy, database: str
) -> tuple[PostgresStore, PostgresStore]:
    """A leader through the proxy and a standby straight to the server, on one schema."""
    schema = new_schema()
    return make_store(url(proxy.port, database), schema), make_store(url(pg.port, database), schema)


async def fail_over(
    leader: PostgresStore,
    standby: PostgresStore,
    fault: Any,
    *,
    in_flight: Any = None,
) -> tuple[list[uuid.UUID], list[Any]]:
    """Lead on ``leader``, acknowledge some jobs, inject ``fault()``, and let ``standby`` lead.

    Returns the acknowledged job ids and the records the standby loaded.
    ``in_flight`` (a job's args) is enqueued after the fault: it must fail
    with QueueClosedError (not acknowledged), and never hang.
    """
    acked: list[uuid.UUID] = []
    loaded: list[Any] = []
    ready = trio.Event()

    async def stand_by() -> None:
        loaded.append(await standby.load())
        ready.set()

    async with trio.open_nursery() as nursery:
        with pytest.raises(StoreError, match="stops leading"):
            async with actorq.open_queue(leader, maintenance=None) as queue:
                acked.extend([await queue.enqueue("t", {"i": i}) for i in range(5)])
                nursery.start_soon(stand_by)
                await trio.sleep(0.2)  # the standby is waiting for the lock
                assert not ready.is_set()
                fault()
                if in_flight is not None:
                    with trio.fail_after(FAILOVER_BOUND), pytest.raises(actorq.QueueClosedError):
                        await queue.enqueue("t", in_flight)
                with trio.fail_after(FAILOVER_BOUND):
                    await trio.sleep_forever()  # the queue stops: the block is cancelled
        with pytest.raises(actorq.QueueClosedError):
            await queue.enqueue("t", "after")
        with trio.fail_after(FAILOVER_BOUND):
            await ready.wait()
    await standby.close()
    return acked, loaded[0][0]


async def test_a_blackholed_leader_steps_down_and_the_standby_leads(
    pg: pgserver.PgServer, database: str
) -> None:
    with FaultProxy(pg.port) as proxy:
        leader, standby = stores(pg, proxy, database)
        acked, jobs = await fail_over(leader, standby, proxy.blackhole, in_flight="lost")
        ids = {job.id for job in jobs}
        assert set(acked) <= ids
        assert len(ids) == len(acked)  # the commit in flight never reached the server
        assert standby.epoch == (leader.epoch or 0) + 1


async def test_a_reset_leader_steps_down_and_the_standby_leads(
    pg: pgserver.PgServer, database: str
) -> None:
    with FaultProxy(pg.port) as proxy:
        leader, standby = stores(pg, proxy, database)
        acked, jobs = await fail_over(leader, standby, proxy.reset)
        assert set(acked) == {job.id for job in jobs}


async def test_a_partition_in_the_middle_of_a_commit_does_not_block_the_election(
    pg: pgserver.PgServer, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The commit's pipeline reaches the server only in part: its transaction
    # holds the leader row, waiting for the rest of a message (no server
    # timeout covers that). The standby ends that session and leads.
    caplog.set_level(logging.WARNING, "actorq.postgres")
    with FaultProxy(pg.port) as proxy:
        leader, standby = stores(pg, proxy, database)
        big = {"pad": "x" * 2000}
        acked, jobs = await fail_over(leader, standby, proxy.cut_mid_commit, in_flight=big)
        assert proxy.cuts == 1
        assert set(acked) == {job.id for job in jobs}
        assert "holds the leader row; ending its session" in caplog.text


async def test_a_slow_election_keeps_the_lock_under_a_cluster_idle_timeout(
    pg: pgserver.PgServer, database: str
) -> None:
    # The leader row is held by a session the store may not end (a superuser's),
    # for longer than the database's idle_session_timeout, while the standby
    # holds the lock and waits to bump the epoch. Its lock is confirmed all
    # along: it leads once the row is free, and keeps leading.
    role = f"r_{uuid.uuid4().hex[:12]}"
    pg.execute(f"CREATE ROLE {role} LOGIN")
    pg.execute(f"ALTER DATABASE {database} OWNER TO {role}")
    pg.execute(f"ALTER DATABASE {database} SET idle_session_timeout = '300ms'")
    schema = new_schema()
    first = make_store(url(pg.port, database, role), schema)
    async with actorq.open_queue(first, maintenance=None) as queue:
        acked = await queue.enqueue("t", None)
    holder: psycopg.Connection[Any] = psycopg.connect(url(pg.port, database))
    try:
        holder.execute(f"SELECT * FROM {schema}.leader FOR UPDATE".encode())
        second = make_store(url(pg.port, database, role), schema)
        async with trio.open_nursery() as nursery:
            loaded: list[Any] = []
            led = trio.Event()

            async def lead() -> None:
                loaded.append(await second.load())
                led.set()

            nursery.start_soon(lead)
            await trio.sleep(1.5)  # five idle timeouts, and many election graces
            assert loaded == []
            assert second.lock_backend_pid is not None
            holder.commit()
            with trio.fail_after(10):
                await led.wait()
    finally:
        holder.close()
    try:
        assert [job.id for job in loaded[0][0]] == [acked]
        await trio.sleep(1.0)  # more idle timeouts, now as the leader
        await second.commit(Changes([], [], [], []))  # passes the fence: still the leader
        assert lock_holders(pg, second) == 1
    finally:
        await second.close()


def lock_holders(pg: pgserver.PgServer, store: PostgresStore) -> int:
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s::oid"
            " AND granted",
            (store.lock_key[1],),
        ).fetchone()
    return int(row[0]) if row else 0


async def test_cluster_idle_timeouts_never_end_a_leaders_sessions(
    pg: pgserver.PgServer, database: str
) -> None:
    pg.execute(f"ALTER DATABASE {database} SET idle_session_timeout = '200ms'")
    pg.execute(f"ALTER DATABASE {database} SET idle_in_transaction_session_timeout = '200ms'")
    store = make_store(url(pg.port, database), new_schema())
    async with actorq.open_queue(store, maintenance=None) as queue:
        await queue.enqueue("t", None)
        lock_pid, data_pid = store.lock_backend_pid, store.data_backend_pid
        await trio.sleep(1.0)  # five idle timeouts
        await queue.enqueue("t", None)
        assert (store.lock_backend_pid, store.data_backend_pid) == (lock_pid, data_pid)


async def test_a_load_longer_than_the_lease_keeps_the_lock(
    pg: pgserver.PgServer, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new leader whose load takes twice the lease (a slow record per job,
    # one job per fetch), on a database whose idle_session_timeout is far
    # shorter: its lock is confirmed all through the load, and it leads.
    pg.execute(f"ALTER DATABASE {database} SET idle_session_timeout = '300ms'")
    schema = new_schema()
    async with actorq.open_queue(make_store(url(pg.port, database), schema)) as queue:
        acked = [await queue.enqueue("t", {"i": i}) for i in range(15)]
    slow_record = JobRecord

    def record(**fields: Any) -> Any:
        time.sleep(2 * LEASE / len(acked))
        return slow_record(**fields)

    monkeypatch.setattr(_postgres_sql, "JobRecord", record)
    monkeypatch.setattr(_postgres_sql, "LOAD_CHUNK", 1)
    store = make_store(url(pg.port, database), schema)
    async with actorq.open_queue(store, maintenance=None) as queue:
        assert await queue.all_root_job_ids() == acked
        await queue.enqueue("t", None)  # passes the fence: still the leader
        assert lock_holders(pg, store) == 1


async def test_a_database_restart_ends_the_leadership_and_a_standby_leads_after_it() -> None:
    # A cluster of its own: the restart ends every session on it. The leader
    # steps down (fail-stop); the standby keeps retrying through the restart
    # and leads once the server is back, with every acknowledged job.
    reason = pgserver.missing_reason()
    if reason is not None:
        pytest.skip(reason)
    own = pgserver.PgServer()
    await trio.to_thread.run_sync(own.start)
    try:
        schema = new_schema()
        leader, standby = make_store(own.url(), schema), make_store(own.url(), schema)
        loaded: list[Any] = []
        ready = trio.Event()

        async def stand_by() -> None:
            loaded.append(await standby.load())
            ready.set()

        async with trio.open_nursery() as nursery:
            with pytest.raises(StoreError, match="stops leading"):
                async with actorq.open_queue(leader, maintenance=None) as queue:
                    acked = [await queue.enqueue("t", {"i": i}) for i in range(5)]
                    nursery.start_soon(stand_by)
                    await trio.sleep(0.2)
                    await trio.to_thread.run_sync(own.restart)
                    with trio.fail_after(FAILOVER_BOUND):
                        await trio.sleep_forever()
            with trio.fail_after(30):
                await ready.wait()
        await standby.close()
        assert {job.id for job in loaded[0][0]} == set(acked)
    finally:
        await trio.to_thread.run_sync(own.stop)
