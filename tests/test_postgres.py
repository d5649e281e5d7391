"""The PostgreSQL store: recovery, fidelity, constraints, schema versions, leadership, fencing.

Every test runs on the session's throwaway cluster (``pgserver``), each in a
schema of its own; without PostgreSQL server binaries they are skipped (failed
under ``CI=true``). Leadership tests use the real clock with short polls:
they are about threads and server sessions, which a MockClock cannot drive.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pgserver
import psycopg
import pytest
import trio
from _kinds_postgres import new_schema

import actorq
from actorq import StoreError
from actorq._core._records import Changes, JobRecord, WorkerRecord
from actorq._stores._postgres import SCHEMA_VERSION, PostgresStore, split_url, store_from_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

FAST = {"standby_poll": 0.05, "leader_poll": 0.05, "lease_timeout": 5.0}


@pytest.fixture(scope="session")
def pg() -> Iterator[pgserver.PgServer]:
    """The session's cluster, started once; stopped when the session ends."""
    server = pgserver.require_server()
    yield server
    pgserver.stop_shared_server()


@pytest.fixture
def schema(pg: pgserver.PgServer) -> str:
    return new_schema()


def make_store(pg: pgserver.PgServer, schema: str, **kwargs: Any) -> PostgresStore:
    return PostgresStore(pg.url(), schema=schema, **{**FAST, **kwargs})


def sql(pg: pgserver.PgServer, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        cur = conn.execute(statement.encode(), params or None)
        return cur.fetchall() if cur.description else []


def terminate(pg: pgserver.PgServer, pid: int | None) -> None:
    assert pid is not None
    sql(pg, "SELECT pg_terminate_backend(%s, 5000)", pid)


# ------------------------------------------------------------------ URLs


def test_store_from_url_splits_off_the_schema() -> None:
    url, options = split_url("postgresql://u@h:5/db?actorq_schema=jobs&sslmode=disable")
    assert options == {"schema": "jobs"}
    assert url == "postgresql://u@h:5/db?sslmode=disable"
    store = store_from_url("postgresql://u@h/db")
    assert store.schema == "actorq"
    assert store.lease_timeout == 10.0
    assert store_from_url("postgres://u@h/db?actorq_schema=x").schema == "x"


def test_store_from_url_takes_the_timings() -> None:
    store = store_from_url(
        "postgresql://u@h/db?actorq_lease_timeout=4&actorq_leader_poll=0.5&actorq_standby_poll=0.2"
    )
    assert (store.lease_timeout, store.leader_poll, store.standby_poll) == (4.0, 0.5, 0.2)
    with pytest.raises(ValueError, match="actorq_lease_timeout must be a number"):
        store_from_url("postgresql://u@h/db?actorq_lease_timeout=soon")
    with pytest.raises(ValueError, match="unknown URL parameter 'actorq_lease'"):
        store_from_url("postgresql://u@h/db?actorq_lease=4")
    with pytest.raises(ValueError, match="leader_poll must be positive and shorter"):
        store_from_url("postgresql://u@h/db?actorq_lease_timeout=1&actorq_leader_poll=2")


async def test_open_queue_takes_a_postgres_url(pg: pgserver.PgServer, schema: str) -> None:
    async with actorq.open_queue(f"{pg.url()}?actorq_schema={schema}") as q:
        job_id = await q.enqueue("t", [1])
    async with actorq.open_queue(f"{pg.url()}?actorq_schema={schema}") as q:
        assert (await q.job(job_id)).args == [1]


# -------------------------------------------------------------- recovery


async def build_varied_state(q: actorq.LocalQueue) -> dict[str, uuid.UUID]:
    """A queue with a job in every state the core knows, and workers."""
    ids: dict[str, uuid.UUID] = {}
    w1 = await q.insert_worker("c", "x86_64")
    w2 = await q.insert_worker("c", "aarch64")
    gone = await q.insert_worker("c", "s390x")
    await q.delete_worker(gone)
    ids["root"] = await q.enqueue("build", {"n": 1}, (), "c")
    ids["blocked"] = await q.enqueue("build", {"n": 2}, [ids["root"]], "c")
    ids["two_deps"] = await q.enqueue("image", None, [ids["blocked"], ids["root"]], "c")
    ids["running"] = (await q.dequeue(["build"], ["c"], timeout=0, worker_id=w1)).id
    assert ids["running"] == ids["root"]
    await q.update_job_result(ids["running"], {"progress": 0.5})
    ids["pending"] = await q.enqueue("other", "x")
    ids["retried"] = await q.enqueue("flaky", None)
    job = await q.dequeue(["flaky"], timeout=0, worker_id=w2)
    assert await q.requeue_or_finish_job(job.id, 3, {"try": 1}) is True
    ids["finished"] = await q.enqueue("done", None)
    job = await q.dequeue(["done"], timeout=0)
    await q.finish_job(job.id, {"ok": "\u0000"})
    ids["failed"] = await q.enqueue("never", None)
    await q.fail_job(ids["failed"], {"error": "dependency failed"})
    ids["canceled_running"] = await q.enqueue("slow", None)
    await q.dequeue(["slow"], timeout=0)
    await q.cancel_job(ids["canceled_running"])
    ids["canceled_pending"] = await q.enqueue("slow2", None)
    await q.cancel_job(ids["canceled_pending"])
    deleted = await q.enqueue("tmp", None)
    await q.fail_job(deleted, None)
    await q.delete_job(deleted)
    ids["w1"], ids["w2"] = w1, w2
    return ids


async def test_recovery_rebuilds_the_same_queue(pg: pgserver.PgServer, schema: str) -> None:
    async with actorq.open_queue(make_store(pg, schema)) as q:
        ids = await build_varied_state(q)
        before = q._scheduler.state.records()
        statuses = {name: await q.job_status(i) for name, i in ids.items() if name[0] != "w"}
        stats = await q.stats()
        listing = await q.list_jobs()
        tokens = await q.heartbeats(0)
    async with actorq.open_queue(make_store(pg, schema)) as q:
        assert q._scheduler.state.records() == before
        for name, status in statuses.items():
            assert await q.job_status(ids[name]) == status, name
        assert await q.stats() == stats
        assert await q.list_jobs() == listing
        assert sorted(await q.heartbeats(0)) == sorted(tokens)
        # the recovered queue carries on where the first stopped
        assert (await q.dequeue(["other"], timeout=0)).id == ids["pending"]
        with pytest.raises(actorq.CanceledError):
            await q.id_from_token(
                next(r.token for r in before[0] if r.id == ids["canceled_running"] and r.token)
            )
        await q.finish_job(ids["root"], "done")
        assert (await q.dequeue(["build"], ["c"], timeout=0)).id == ids["blocked"]


async def test_recovery_keeps_enqueue_order_and_ready_order(
    pg: pgserver.PgServer, schema: str
) -> None:
    async with actorq.open_queue(make_store(pg, schema)) as q:
        first = await q.enqueue_many([("t", i) for i in range(50)])
        job = await q.dequeue(["t"], timeout=0)
        await q.requeue_or_finish_job(job.id, 1)  # back to its place: first in line
    async with actorq.open_queue(make_store(pg, schema)) as q:
        got = [(await q.dequeue(["t"], timeout=0)).id for _ in range(50)]
    assert got == first


async def test_results_and_args_survive_byte_for_byte(pg: pgserver.PgServer, schema: str) -> None:
    # jsonb would reject \u0000 and reorder keys; json keeps the text as given
    args = {"z": "\u0000", "a": ["\u0000\u0001", {"y": 1, "b": 2}], "é": "\U0001f600"}
    result = {"logs": {"blegh\u0000": "\u0000"}, "b": 1, "a": 2}
    async with actorq.open_queue(make_store(pg, schema)) as q:
        job_id = await q.enqueue("t", args)
        job = await q.dequeue(["t"], timeout=0)
        await q.finish_job(job.id, result)
    async with actorq.open_queue(make_store(pg, schema)) as q:
        info = await q.job(job_id)
        status = await q.job_status(job_id)
    assert info.args == args
    assert list(info.args) == list(args)
    assert status.result == result
    assert list(status.result) == list(result)
    rows = sql(pg, f'SELECT pg_typeof(result)::text, result::text FROM "{schema}".jobs')
    assert rows[0][0] == "json"
    assert "\\u0000" in rows[0][1]


async def test_names_a_store_cannot_keep_are_refused_up_front(
    pg: pgserver.PgServer, schema: str
) -> None:
    async with actorq.open_queue(make_store(pg, schema)) as q:
        with pytest.raises(ValueError, match="NUL"):
            await q.enqueue("a\x00b", None)
        with pytest.raises(ValueError, match="NUL"):
            await q.enqueue("t", None, (), "chan\x00")
        with pytest.raises(ValueError, match="surrogate"):
            await q.insert_worker("", "\ud800")
        # nothing was committed, and the queue still serves
        assert await q.enqueue("t", None)
        assert (await q.stats()).jobs == 1


# ----------------------------------------------------------- constraints


def _base_rows(pg: pgserver.PgServer, schema: str) -> dict[str, uuid.UUID]:
    """Commit a few valid rows through the store: a finished job and a pending dependent."""

    async def fill() -> dict[str, uuid.UUID]:
        async with actorq.open_queue(make_store(pg, schema)) as q:
            done = await q.enqueue("t", None)
            await q.dequeue(["t"], timeout=0)
            await q.finish_job(done, 1)
            pending = await q.enqueue("t", None, [done])
            running = await q.enqueue("r", None)
            worker = await q.insert_worker("", "x")
            await q.dequeue(["r"], timeout=0, worker_id=worker)
            return {"done": done, "pending": pending, "running": running, "worker": worker}

    return trio.run(fill)


CORRUPTIONS = {
    "finished without start": "UPDATE {s}.jobs SET started = NULL WHERE id = '{done}'",
    "finished before started": (
        "UPDATE {s}.jobs SET finished = started - interval '1 s' WHERE id = '{running}'"
    ),
    "started before queued": (
        "UPDATE {s}.jobs SET started = queued - interval '1 s' WHERE id = '{running}'"
    ),
    "token on a pending job": (
        "UPDATE {s}.jobs SET token = gen_random_uuid() WHERE id = '{pending}'"
    ),
    "running job without token": "UPDATE {s}.jobs SET token = NULL WHERE id = '{running}'",
    "finished without result": "UPDATE {s}.jobs SET result = NULL WHERE id = '{done}'",
    "canceled and finished": "UPDATE {s}.jobs SET canceled = true WHERE id = '{done}'",
    "worker on a canceled job": "UPDATE {s}.jobs SET canceled = true WHERE id = '{running}'",
    "unknown worker": "UPDATE {s}.jobs SET worker_id = gen_random_uuid() WHERE id = '{running}'",
    "retries go down": "UPDATE {s}.jobs SET retries = -1 WHERE id = '{pending}'",
    "args change": "UPDATE {s}.jobs SET args = '2' WHERE id = '{pending}'",
    "finished job reopened": "UPDATE {s}.jobs SET finished = NULL, token = gen_random_uuid(), "
    "result = NULL WHERE id = '{done}'",
    "duplicate seq": "UPDATE {s}.jobs SET seq = 1 WHERE id = '{pending}'",
    "bad json": "UPDATE {s}.jobs SET result = '{{' WHERE id = '{running}'",
    "empty type": (
        "INSERT INTO {s}.jobs (id, seq, type, channel, args, queued, canceled, retries) "
        "VALUES (gen_random_uuid(), 99, '', '', 'null', now(), false, 0)"
    ),
    "dependency on a later job": (
        "INSERT INTO {s}.job_dependencies SELECT id, seq, 5, '{pending}', 2 "
        "FROM {s}.jobs WHERE id = '{done}'"
    ),
    "dependency on a missing job": (
        "INSERT INTO {s}.job_dependencies SELECT id, seq, 5, gen_random_uuid(), 1 "
        "FROM {s}.jobs WHERE id = '{pending}'"
    ),
    "delete a job with dependents": "DELETE FROM {s}.jobs WHERE id = '{done}'",
    "delete a worker with running jobs": "DELETE FROM {s}.workers WHERE id = '{worker}'",
}


@pytest.fixture(scope="module")
def corruptible(pg: pgserver.PgServer) -> tuple[str, dict[str, uuid.UUID]]:
    schema = new_schema()
    return schema, _base_rows(pg, schema)


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_constraints_reject_corrupt_states(
    pg: pgserver.PgServer, corruptible: tuple[str, dict[str, uuid.UUID]], case: str
) -> None:
    schema, ids = corruptible
    statement = CORRUPTIONS[case].format(s=f'"{schema}"', **ids)
    with (
        psycopg.connect(pg.url()) as conn,
        pytest.raises((psycopg.errors.IntegrityError, psycopg.errors.DataError)),
    ):
        conn.execute(statement.encode())
        conn.commit()  # deferred foreign keys are checked here


async def test_a_commit_that_breaks_a_constraint_fails_whole(
    pg: pgserver.PgServer, schema: str
) -> None:
    store = make_store(pg, schema)
    await store.load()
    try:
        now = datetime.now(UTC)
        good = JobRecord(
            id=uuid.uuid4(), seq=1, type="t", channel="", args="1", dependencies=(),
            queued=now, started=None, finished=None, canceled=False, result=None,
            retries=0, token=None, worker_id=None,
        )  # fmt: skip
        bad = JobRecord(
            id=uuid.uuid4(), seq=2, type="t", channel="", args="1", dependencies=(),
            queued=now, started=now - timedelta(seconds=1), finished=None, canceled=False,
            result=None, retries=0, token=uuid.uuid4(), worker_id=None,
        )  # fmt: skip
        worker = WorkerRecord(id=uuid.uuid4(), channel="", arch="x", updated=now)
        with pytest.raises(StoreError, match="started_after_queued"):
            await store.commit(Changes([good, bad], [], [worker], []))
        # nothing of the batch was written, and the store refuses to go on
        assert sql(pg, f'SELECT count(*) FROM "{schema}".jobs') == [(0,)]
        assert sql(pg, f'SELECT count(*) FROM "{schema}".workers') == [(0,)]
        with pytest.raises(StoreError):
            await store.commit(Changes([good], [], [], []))
    finally:
        await store.close()


# ------------------------------------------------------- schema versions


async def test_a_newer_schema_is_refused(pg: pgserver.PgServer, schema: str) -> None:
    async with actorq.open_queue(make_store(pg, schema)) as q:
        await q.enqueue("t", None)
    sql(pg, f'UPDATE "{schema}".actorq_schema SET version = %s', SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="newer than this actorq supports"):
        async with actorq.open_queue(make_store(pg, schema)):
            pass
    # refused at once even while another process leads (no waiting first)
    sql(pg, f'UPDATE "{schema}".actorq_schema SET version = %s', SCHEMA_VERSION)
    async with actorq.open_queue(make_store(pg, schema)):
        sql(pg, f'UPDATE "{schema}".actorq_schema SET version = %s', SCHEMA_VERSION + 1)
        with trio.fail_after(5), pytest.raises(StoreError, match="newer"):
            await make_store(pg, schema).load()
    assert sql(pg, f'SELECT count(*) FROM "{schema}".jobs') == [(1,)]


async def test_a_schema_that_is_not_a_queue_is_refused(pg: pgserver.PgServer, schema: str) -> None:
    sql(pg, f'CREATE SCHEMA "{schema}"')
    sql(pg, f'CREATE TABLE "{schema}".jobs (id int)')
    with pytest.raises(StoreError, match="not an actorq queue"):
        await make_store(pg, schema).load()
    sql(pg, f'CREATE TABLE "{schema}".actorq_schema (version integer)')
    with pytest.raises(StoreError, match="version record is corrupt"):
        await make_store(pg, schema).load()


async def test_an_empty_schema_is_migrated(pg: pgserver.PgServer, schema: str) -> None:
    sql(pg, f'CREATE SCHEMA "{schema}"')
    store = make_store(pg, schema)
    assert await store.load() == ([], [])
    await store.close()
    assert sql(pg, f'SELECT version FROM "{schema}".actorq_schema') == [(SCHEMA_VERSION,)]


async def test_an_unreachable_database_is_a_store_error(pg: pgserver.PgServer) -> None:
    dead = PostgresStore(
        f"postgresql://postgres@127.0.0.1:{pgserver._free_port()}/postgres", connect_timeout=2
    )
    with pytest.raises(StoreError, match="cannot open the PostgreSQL store"):
        await dead.load()
    missing = PostgresStore(pg.url("no_such_database"))
    with pytest.raises(StoreError, match="no_such_database"):
        await missing.load()


# ------------------------------------------------------------ leadership


def connections(pg: pgserver.PgServer, schema: str) -> int:
    rows = sql(
        pg,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s::oid",
        PostgresStore("", schema=schema).lock_key[1],
    )
    return int(rows[0][0])


@pytest.fixture
async def leader(pg: pgserver.PgServer, schema: str) -> AsyncIterator[PostgresStore]:
    store = make_store(pg, schema)
    await store.load()
    try:
        yield store
    finally:
        await store.close()


async def test_a_standby_waits_and_takes_over_when_the_leader_closes(
    pg: pgserver.PgServer, schema: str
) -> None:
    first = make_store(pg, schema)
    async with actorq.open_queue(first) as q:
        job_id = await q.enqueue("t", "from the first")
        second = make_store(pg, schema)
        loaded: list[Any] = []
        done = trio.Event()

        async def standby() -> None:
            loaded.append(await second.load())
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(standby)
            await trio.sleep(0.5)
            assert loaded == []  # still waiting: the first one leads
            await q.enqueue("t", "also from the first")
            # close the first queue: leadership passes on
            await first.close()
            with trio.fail_after(10):
                await done.wait()
    try:
        jobs, _ = loaded[0]
        assert jobs[0].id == job_id
        assert len(jobs) == 2
        assert first.epoch is not None
        assert second.epoch == first.epoch + 1
    finally:
        await second.close()


async def test_a_standby_takes_over_when_the_leaders_session_dies(
    pg: pgserver.PgServer, schema: str
) -> None:
    first = make_store(pg, schema)
    second = make_store(pg, schema)
    loaded: list[Any] = []
    done = trio.Event()

    async def standby() -> None:
        loaded.append(await second.load())
        done.set()

    async with trio.open_nursery() as nursery:
        with pytest.raises(StoreError, match="lock connection was lost"):
            async with actorq.open_queue(first) as q:
                await q.enqueue("t", None)
                nursery.start_soon(standby)
                await trio.sleep(0.2)
                assert loaded == []
                # the leader's lock session dies (a crash, a cut connection):
                # its watch notices and the queue stops serving
                terminate(pg, first.lock_backend_pid)
                with trio.fail_after(10):
                    await trio.sleep_forever()
        with pytest.raises(actorq.QueueClosedError):
            await q.enqueue("t", None)
        with trio.fail_after(10):
            await done.wait()
    try:
        # the queue stopped, and the standby has taken over with its jobs
        assert second.epoch is not None
        assert first.epoch is not None
        assert second.epoch > first.epoch
        assert len(loaded[0][0]) == 1
    finally:
        await second.close()


async def test_a_deposed_leader_cannot_commit(pg: pgserver.PgServer, schema: str) -> None:
    # the old leader's watch is slow on purpose: fencing alone must stop it
    old = make_store(pg, schema, leader_poll=30.0, lease_timeout=60.0)
    new = make_store(pg, schema)
    try:
        with pytest.raises(StoreError, match="become leader"):
            async with actorq.open_queue(old) as q:
                await q.enqueue("t", "before")
                terminate(pg, old.lock_backend_pid)
                with trio.fail_after(10):
                    jobs, _ = await new.load()
                assert len(jobs) == 1
                with pytest.raises(actorq.QueueClosedError, match="become leader"):
                    await q.enqueue("t", "after")
                await trio.sleep_forever()  # the failed commit stops the queue
    finally:
        await new.close()
    check = make_store(pg, schema)
    jobs, _ = await check.load()
    await check.close()
    assert [j.args for j in jobs] == ['"before"']


@pytest.fixture
def pending_record() -> JobRecord:
    now = datetime.now(UTC)
    return JobRecord(
        id=uuid.uuid4(), seq=1, type="t", channel="", args="1", dependencies=(), queued=now,
        started=None, finished=None, canceled=False, result=None, retries=0, token=None,
        worker_id=None,
    )  # fmt: skip


def hold_after_fence(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """Make ``store``'s next commit stop after its fence until ``resume`` is set."""
    fenced, resume = threading.Event(), threading.Event()
    write = store._write

    def slow_write(cur: Any, changes: Changes) -> None:
        cur.connection.pgconn.flush()  # the fence reaches the server now
        fenced.set()
        resume.wait(30)
        write(cur, changes)

    monkeypatch.setattr(store, "_write", slow_write)
    return fenced, resume


async def test_a_commit_in_flight_finishes_before_a_new_leader_loads(
    pg: pgserver.PgServer, schema: str, pending_record: JobRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The old leader has passed its fencing check and is still writing when
    # it loses the lock, and does not know it yet (a slow watch). The new
    # leader's election waits for that transaction (up to its leader_poll),
    # so it loads the batch the old leader is about to acknowledge.
    old = make_store(pg, schema, leader_poll=30.0, lease_timeout=60.0)
    await old.load()
    fenced, resume = hold_after_fence(old, monkeypatch)
    new = make_store(pg, schema, leader_poll=10.0, lease_timeout=20.0)
    loaded: list[Any] = []

    async def take_over() -> None:
        loaded.append(await new.load())

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(old.commit, Changes([pending_record], [], [], []))
            await trio.to_thread.run_sync(fenced.wait, 10)
            terminate(pg, old.lock_backend_pid)
            nursery.start_soon(take_over)
            await trio.sleep(0.5)
            assert loaded == []  # the election waits behind the commit in flight
            resume.set()
        assert [j.id for j in loaded[0][0]] == [pending_record.id]
        assert new.epoch == (old.epoch or 0) + 1
    finally:
        await new.close()
        await old.close()


async def test_an_election_ends_a_deposed_leaders_transaction_that_holds_the_row(
    pg: pgserver.PgServer, schema: str, pending_record: JobRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The old leader stopped between two statements of a commit (paused, or
    # cut off mid-pipeline): its transaction holds the leader row and no
    # server timeout ends it. The new leader, holding the lock, ends that
    # session after its grace, and loads without the unacknowledged batch.
    old = make_store(pg, schema, leader_poll=30.0, lease_timeout=60.0)
    await old.load()
    fenced, resume = hold_after_fence(old, monkeypatch)
    new = make_store(pg, schema, leader_poll=0.2)
    failed: list[BaseException] = []

    async def commit() -> None:
        try:
            await old.commit(Changes([pending_record], [], [], []))
        except StoreError as exc:
            failed.append(exc)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit)
            await trio.to_thread.run_sync(fenced.wait, 10)
            terminate(pg, old.lock_backend_pid)
            with trio.fail_after(20):
                jobs, _ = await new.load()
            resume.set()
        assert jobs == []
        assert new.epoch == (old.epoch or 0) + 1
        assert len(failed) == 1
        assert "outcome is unknown" in str(failed[0])
    finally:
        resume.set()
        await new.close()
        await old.close()


async def test_cancelling_a_standby_releases_its_connections(
    pg: pgserver.PgServer, schema: str, leader: PostgresStore
) -> None:
    standby = make_store(pg, schema)
    with trio.move_on_after(0.3) as scope:
        await standby.load()
    assert scope.cancelled_caught
    assert standby.lock_backend_pid is None
    assert connections(pg, schema) == 1  # only the leader's lock


async def test_a_dropped_idle_data_connection_is_replaced(
    pg: pgserver.PgServer, schema: str
) -> None:
    store = make_store(pg, schema)
    async with actorq.open_queue(store) as q:
        await q.enqueue("t", None)
        terminate(pg, store.data_backend_pid)
        await q.enqueue("t", None)  # reconnects: nothing had been sent
        assert (await q.stats()).jobs == 2
    check = make_store(pg, schema)
    assert len((await check.load())[0]) == 2
    await check.close()


async def test_a_closed_store_can_be_loaded_again(pg: pgserver.PgServer, schema: str) -> None:
    store = make_store(pg, schema)
    async with actorq.open_queue(store) as q:
        job_id = await q.enqueue("t", None)
    with pytest.raises(StoreError, match="closed"):
        await store.commit(Changes([], [job_id], [], []))
    async with actorq.open_queue(store) as q:
        assert await q.all_root_job_ids() == [job_id]
        with pytest.raises(RuntimeError, match="open"):
            await store.load()
