"""The SQLite store: recovery fidelity, schema versions, bad files, locking, atomic commits.

The conformance suite runs against the store too (kinds ``sqlite`` and
``sqlite-reopen`` in ``_kinds_sqlite.py``); these tests cover what only a
durable store has.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import uuid
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import actorq
from actorq import CanceledError, NotExistError, QueueClosedError, StoreError
from actorq._core._records import Changes, JobRecord, WorkerRecord
from actorq._stores import _sqlite, _sqlite_rows, _sqlite_schema
from actorq._stores._sqlite import SqliteStore, decode_time, encode_time, store_from_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from actorq._core._state import QueueState


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def snapshot(queue: actorq.LocalQueue) -> tuple[list[JobRecord], list[WorkerRecord]]:
    """Every durable field of every job and worker, as the queue holds them."""
    return queue._scheduler.state.records()


@asynccontextmanager
async def reopened(path: Path, **options: Any) -> AsyncIterator[actorq.LocalQueue]:
    """A queue on the file at ``path``, without maintenance.

    These tests check what the store keeps, so nothing may change the queue
    behind their back: the heartbeat reaper would, in the tests that let
    (mock) hours pass.
    """
    options.setdefault("maintenance", None)
    async with actorq.open_queue(url(path), **options) as queue:
        yield queue


# ------------------------------------------------------------------ URLs


def test_url_forms(tmp_path: Path) -> None:
    # SQLAlchemy's forms: three slashes and a relative path, four and an absolute one
    assert store_from_url("sqlite:///q.db").path == os.path.abspath("q.db")
    assert store_from_url("sqlite:///data/q.db").path == os.path.abspath("data/q.db")
    assert store_from_url("sqlite:////var/lib/q.db").path == "/var/lib/q.db"
    assert store_from_url("SQLite:////var/lib/q.db").path == "/var/lib/q.db"
    assert store_from_url(f"sqlite:///{tmp_path / 'q.db'}").path == str(tmp_path / "q.db")
    assert store_from_url("sqlite:q.db").path == os.path.abspath("q.db")
    assert store_from_url("sqlite:data/q.db").path == os.path.abspath("data/q.db")
    for bad in ("sqlite://host/q.db", "sqlite:", "sqlite:///", "sqlite::memory:", "memory://"):
        with pytest.raises(ValueError, match=r"sqlite|memory"):
            store_from_url(bad)
    assert isinstance(actorq.SqliteStore(tmp_path / "q.db"), actorq.Store)


async def test_open_queue_by_url_creates_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with actorq.open_queue(url(path)) as queue:
        job_id = await queue.enqueue("t", {"a": 1})
    assert path.exists()
    async with actorq.open_queue(url(path)) as queue:
        assert (await queue.job(job_id)).args == {"a": 1}


# --------------------------------------------------------------- recovery


async def make_every_state(queue: actorq.LocalQueue) -> dict[str, Any]:
    """A queue holding a job (and a worker) in every state the core knows."""
    w1 = await queue.insert_worker("", "x86_64")
    w2 = await queue.insert_worker("edge", "aarch64")
    ids: dict[str, Any] = {"w1": w1, "w2": w2}
    ids["first"] = await queue.enqueue("t", {"n": 1})
    ids["requeued"] = await queue.enqueue("t", {"n": 2})
    ids["second"] = await queue.enqueue("t", {"n": 3}, channel="edge")
    ids["blocked_on"] = await queue.enqueue("dep", None)
    ids["blocked"] = await queue.enqueue("t", {"n": 4}, [ids["blocked_on"], ids["first"]])
    ids["done_dep"] = await queue.enqueue("dep", "\u0000 nul")
    ids["released"] = await queue.enqueue("t", {"n": 5}, [ids["done_dep"]])
    ids["canceled"] = await queue.enqueue("t", {"n": 6})
    ids["running_w"] = await queue.enqueue("run", {"n": 7})
    ids["running"] = await queue.enqueue("run", {"n": 8})
    ids["canceled_running"] = await queue.enqueue("run", {"n": 9})
    ids["failed"] = await queue.enqueue("t", {"n": 10})
    ids["deleted"] = await queue.enqueue("gone", None)

    job = await queue.dequeue_by_id(ids["requeued"])
    assert await queue.requeue_or_finish_job(job.id, 3, {"partial": True})
    job = await queue.dequeue(["dep"], timeout=0)
    assert job.id == ids["blocked_on"]
    ids["blocked_on_token"] = job.token
    job = await queue.dequeue_by_id(ids["done_dep"])
    await queue.finish_job(job.id, {"logs": {"a\u0000": "\u0000"}})
    await queue.cancel_job(ids["canceled"])
    ids["running_w_token"] = (await queue.dequeue(["run"], timeout=0, worker_id=w1)).token
    ids["running_token"] = (await queue.dequeue(["run"], timeout=0)).token
    await queue.update_job_result(ids["running"], {"progress": 50})
    ids["canceled_token"] = (await queue.dequeue(["run"], timeout=0, worker_id=w2)).token
    await queue.cancel_job(ids["canceled_running"])
    await queue.fail_job(ids["failed"], {"error": "boom"})
    await queue.delete_job(ids["deleted"])
    return ids


async def test_recovery_rebuilds_every_state_exactly(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "q.db"
    async with reopened(path) as queue:
        ids = await make_every_state(queue)
        before = snapshot(queue)
        jobs = [name for name in ids if name not in ("w1", "w2", "deleted") and "token" not in name]
        statuses = {name: await queue.job_status(ids[name]) for name in jobs}
        listing = await queue.list_jobs()
        stats = await queue.stats()
        workers = await queue.workers()
        roots = await queue.all_root_job_ids()
        await trio.sleep(300)  # every heartbeat is now old
        assert len(await queue.heartbeats(120)) == 3

    async with reopened(path) as queue:
        assert snapshot(queue) == before
        assert await queue.list_jobs() == listing
        assert await queue.stats() == stats
        assert await queue.workers() == workers
        assert await queue.all_root_job_ids() == roots
        for name, status in statuses.items():
            assert await queue.job_status(ids[name]) == status
        for status in statuses.values():
            for stamp in (status.queued, status.started, status.finished):
                assert stamp is None or stamp.tzinfo is UTC

        # heartbeat and worker clocks restart at recovery
        assert await queue.heartbeats(120) == []
        assert sorted(await queue.heartbeats(0)) == sorted(
            [ids["blocked_on_token"], ids["running_w_token"], ids["running_token"]]
        )
        assert await queue.workers(120) == []
        await trio.sleep(121)
        assert len(await queue.heartbeats(120)) == 3

        # running jobs keep their tokens; a canceled running job's token says so
        assert await queue.id_from_token(ids["running_token"]) == ids["running"]
        with pytest.raises(CanceledError):
            await queue.id_from_token(ids["canceled_token"])
        with pytest.raises(CanceledError):
            await queue.refresh_heartbeat(ids["canceled_token"])
        with pytest.raises(NotExistError):
            await queue.job(ids["deleted"])
        # the worker of a running job is still busy; the canceled job freed its own
        with pytest.raises(actorq.ActiveJobsError):
            await queue.delete_worker(ids["w1"])
        await queue.delete_worker(ids["w2"])

        # pending jobs come out in their original order, the requeued one first
        order = [(await queue.dequeue(["t"], ["", "edge"], timeout=0)).id for _ in range(3)]
        assert order == [ids["first"], ids["requeued"], ids["second"]]
        assert (await queue.job_status(ids["requeued"])).retries == 1
        # ... then the one released by its finished dependency; the blocked one waits
        assert (await queue.dequeue(["t"], timeout=0)).id == ids["released"]
        with pytest.raises(actorq.DequeueTimeoutError):
            await queue.dequeue(["t"], timeout=0)
        await queue.finish_job(ids["blocked_on"], None)
        await queue.finish_job(ids["first"], None)
        assert (await queue.dequeue(["t"], timeout=0)).id == ids["blocked"]
        await queue.finish_job(ids["running_w"], {"ok": True})
        after = snapshot(queue)

    async with reopened(path) as queue:
        assert snapshot(queue) == after
        assert (await queue.job_status(ids["running_w"])).result == {"ok": True}


async def test_timestamps_come_back_as_the_same_instants_in_utc(tmp_path: Path) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    stamps = iter(
        datetime(2031, 1, 2, 3, 4, 5, micro, tzinfo=india) for micro in range(999_990, 10**6)
    )
    path = tmp_path / "q.db"
    async with reopened(path, clock=lambda: next(stamps)) as queue:
        job_id = await queue.enqueue("t")
        await queue.dequeue(["t"], timeout=0)
        await queue.finish_job(job_id)
        status = await queue.job_status(job_id)
    async with reopened(path) as queue:
        again = await queue.job_status(job_id)
    for original, restored in [
        (status.queued, again.queued),
        (status.started, again.started),
        (status.finished, again.finished),
    ]:
        assert restored == original
        assert restored is not None
        assert restored.tzinfo is UTC


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7))]),
    )
)
def test_time_encoding_is_exact(value: datetime) -> None:
    encoded = encode_time(value)
    assert isinstance(encoded, int)
    decoded = decode_time(encoded)
    assert decoded == value
    assert decoded.tzinfo is UTC


def test_fast_time_decoding_is_exact_up_to_its_limit() -> None:
    # the float fast path is exact while half an ulp stays under half a
    # microsecond: check the top of its range hardest, and both sides of it
    rng = random.Random(7)
    limit = _sqlite_rows._FAST_TIME_LIMIT
    samples = [limit - 1, limit, limit + 1, 0, 1, 999_999, 10**6]
    samples += [rng.randrange(limit // 2, limit) for _ in range(20_000)]
    samples += [rng.randrange(0, limit) for _ in range(5_000)]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for micros in samples:
        assert decode_time(micros) == epoch + timedelta(microseconds=micros), micros


@given(st.uuids())
def test_uuid_decoding_is_exact(value: uuid.UUID) -> None:
    made = _sqlite.uuid_from_bytes(value.bytes)
    assert made == value
    assert hash(made) == hash(value)
    assert str(made) == str(value)


async def test_100k_jobs_with_dependencies_recover(tmp_path: Path) -> None:
    path = tmp_path / "big.db"

    def build(state: QueueState) -> None:
        previous: uuid.UUID | None = None
        for i in range(100_000):
            deps = [previous] if previous is not None and i % 3 else []
            previous = state.enqueue(
                "t" if i % 2 else "u", f'{{"i": {i}}}', deps, channel="" if i % 5 else "c"
            )
        for _ in range(10_000):
            got = state.dequeue(("t", "u"), None)
            assert got is not None
            state.finish_job(got.id, '{"ok": true}')
        for _ in range(100):
            got = state.dequeue(("t", "u"), None)
            assert got is not None

    async with reopened(path) as queue:
        await queue._call(build)
        before = snapshot(queue)
        stats = await queue.stats()
    async with reopened(path) as queue:
        assert snapshot(queue) == before
        again = await queue.stats()
        assert sorted(again.ready) == sorted(stats.ready)  # listed in no set order
        assert attrs.evolve(again, ready=stats.ready) == stats
        assert stats.running == 100
        assert stats.finished == 10_000
        assert stats.blocked > 0
        # the ready order survived: the core hands out the same jobs, oldest first
        finished = {r.id for r in before[0] if r.finished is not None}
        ready = [
            r.id
            for r in before[0]
            if r.started is None and not r.canceled and set(r.dependencies) <= finished
        ]
        got = await queue._call(lambda s: [s.dequeue(("t", "u"), None) for _ in range(2000)])
        assert [None if a is None else a.id for a in got] == ready[:2000]


# ------------------------------------------------------------ schema, files


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection, for tampering with a closed queue's file."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with reopened(path) as queue:
        job_id = await queue.enqueue("t")
    with raw(path) as conn:
        conn.execute("UPDATE actorq_schema SET version = ?", (_sqlite.SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        async with reopened(path):
            pass
    with raw(path) as conn:  # refused without a change, and the lock was released
        conn.execute("UPDATE actorq_schema SET version = ?", (_sqlite.SCHEMA_VERSION,))
    async with reopened(path) as queue:
        await queue.job(job_id)


async def test_older_schema_is_migrated_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "q.db"
    async with reopened(path) as queue:
        job_id = await queue.enqueue("t", {"x": 1})
    version = _sqlite_schema.SCHEMA_VERSION

    broken = (*_sqlite_schema._MIGRATIONS, ("ALTER TABLE jobs ADD COLUMN note TEXT", "NOT SQL"))
    monkeypatch.setattr(_sqlite_schema, "_MIGRATIONS", broken)
    monkeypatch.setattr(_sqlite_schema, "SCHEMA_VERSION", version + 1)
    with pytest.raises(StoreError, match=f"from version {version}"):
        async with reopened(path):
            pass
    with raw(path) as conn:  # nothing of the failed upgrade stayed
        assert conn.execute("SELECT version FROM actorq_schema").fetchall() == [(version,)]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
        assert "note" not in columns

    fixed = (*_sqlite_schema._MIGRATIONS[:version], ("ALTER TABLE jobs ADD COLUMN note TEXT",))
    monkeypatch.setattr(_sqlite_schema, "_MIGRATIONS", fixed)
    async with reopened(path) as queue:
        assert (await queue.job(job_id)).args == {"x": 1}
        await queue.enqueue("t")
    with raw(path) as conn:
        assert conn.execute("SELECT version FROM actorq_schema").fetchall() == [(version + 1,)]


@pytest.mark.parametrize(
    "damage",
    [
        "garbage",
        "truncated",
        "foreign",
        "no-version",
        "two-versions",
        "missing-dependency",
        "bad-id",
        "running-without-token",
        "finished-never-started",
        "text-time",
        "bad-worker",
    ],
)
async def test_bad_file_is_a_clear_error_at_open(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "q.db"
    async with reopened(path) as queue:
        await queue.insert_worker("", "x86_64")
        a = await queue.enqueue("t", {"pad": "x" * 5000})
        for _ in range(200):
            await queue.enqueue("t", None, [a])
        await queue.dequeue(["t"], timeout=0)
    match = {
        "garbage": "not a SQLite database",
        "truncated": "corrupt|malformed|cannot",
        "foreign": "not an actorq queue",
        "no-version": "schema version",
        "two-versions": "schema version",
        "missing-dependency": "does not precede",
        "bad-id": "16-byte",
        "running-without-token": "without a token",
        "finished-never-started": "never started",
        "text-time": "corrupt job record",
        "bad-worker": "corrupt worker record",
    }[damage]
    if damage == "garbage":
        path.write_bytes(b"this is not a database at all" * 200)
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "foreign":
        path.unlink()
        with raw(path) as conn:
            conn.execute("CREATE TABLE invoices (id INTEGER)")
    else:
        with raw(path) as conn:
            sql = {
                "no-version": "DELETE FROM actorq_schema",
                "two-versions": "INSERT INTO actorq_schema VALUES (1)",
                "missing-dependency": "DELETE FROM jobs WHERE seq = 1",
                "bad-id": "UPDATE jobs SET id = x'0102' WHERE seq = 3",
                "running-without-token": "UPDATE jobs SET token = NULL WHERE seq = 1",
                "finished-never-started": "UPDATE jobs SET finished = 5 WHERE seq = 4",
                "text-time": "UPDATE jobs SET queued = 'yesterday' WHERE seq = 2",
                "bad-worker": "UPDATE workers SET id = 'w'",
            }[damage]
            conn.execute(sql)
    # twice: the failed open released the file, so the error stays the same
    for _ in range(2):
        with pytest.raises(StoreError, match=match):
            async with reopened(path):
                pytest.fail("a bad file was opened")


async def test_empty_file_is_a_new_queue(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    path.touch()
    async with reopened(path) as queue:
        assert await queue.all_root_job_ids() == []


async def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot be opened"):
        async with reopened(tmp_path / "missing-dir" / "q.db"):
            pass


# ------------------------------------------------------------------ locking


async def test_one_queue_per_file(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with reopened(path) as queue:
        await queue.enqueue("t")
        with pytest.raises(StoreError, match="in use"):
            async with reopened(path):
                pass
        code = (
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], timeout=0)\n"
            "try:\n"
            "    c.execute('SELECT count(*) FROM jobs').fetchall()\n"
            "except sqlite3.OperationalError as e:\n"
            "    print(e)\n"
        )
        done = await trio.run_process([sys.executable, "-c", code, str(path)], capture_stdout=True)
        assert b"locked" in done.stdout
    async with reopened(path) as queue:
        assert len(await queue.all_root_job_ids()) == 1


async def test_store_can_be_reopened_after_close(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.db")
    async with actorq.open_queue(store) as queue:
        job_id = await queue.enqueue("t")
    async with actorq.open_queue(store) as queue:
        await queue.job(job_id)
    await store.close()  # idempotent


# ------------------------------------------------------------------ commits


async def test_a_failed_commit_writes_nothing_and_closes_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with reopened(path) as queue:
        kept = await queue.enqueue("t")
    with raw(path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON jobs WHEN NEW.type = 'refused'"
            " BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
        )

    def two_jobs(state: QueueState) -> None:
        state.enqueue("fine", "null")
        state.enqueue("refused", "null")

    outcome: list[object] = []
    with pytest.raises(StoreError, match="refused by trigger"):
        async with reopened(path) as queue:
            try:
                outcome.append(await queue._call(two_jobs))
            except QueueClosedError as exc:
                outcome.append(exc)
    # the request was not acknowledged (if its requester heard anything at all)
    assert not outcome or isinstance(outcome[0], QueueClosedError)
    with raw(path) as conn:
        conn.execute("DROP TRIGGER refuse")
    async with reopened(path) as queue:
        assert await queue.all_root_job_ids() == [kept]


async def test_commit_after_a_failed_commit_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.db")
    await store.load()
    now = datetime.now(UTC)

    def job(seq: int) -> JobRecord:
        return JobRecord(
            uuid.uuid4(), seq, "t", "", "null", (), now, None, None, False, None, 0, None, None
        )

    first = job(1)
    await store.commit(Changes([first], [], [], []))
    # a second job under an id that exists breaks the unique index
    clash = JobRecord(first.id, 2, "t", "", "null", (), now, None, None, False, None, 0, None, None)
    with pytest.raises(StoreError, match="commit failed"):
        await store.commit(Changes([job(3), clash], [], [], []))
    with pytest.raises(StoreError, match="earlier commit failed"):
        await store.commit(Changes([job(4)], [], [], []))
    jobs, _ = await store.load()  # a reload starts over from the file
    assert [r.seq for r in jobs] == [1]
    await store.close()


# ------------------------------------------------------------------ the protocol


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_watch_waits_until_the_queue_closes(
    kind: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # a store that alone owns its records never loses the right to write
    store: actorq.Store = (
        SqliteStore(tmp_path / "q.db") if kind == "sqlite" else actorq.MemoryStore()
    )
    await store.load()
    with trio.move_on_after(7 * 24 * 3600) as scope:
        await store.watch()
    assert scope.cancelled_caught
    await store.close()


async def test_a_store_without_watch_is_refused(tmp_path: Path) -> None:
    class NoWatch:
        async def load(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
            return [], []

        async def commit(self, changes: Changes) -> None:
            pass

        async def close(self) -> None:
            pass

    with pytest.raises(TypeError, match="Store"):
        async with actorq.open_queue(NoWatch()):  # type: ignore[arg-type]
            pass


async def test_a_store_whose_watch_raises_stops_the_queue(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    lost = trio.Event()

    class Deposable(SqliteStore):
        async def watch(self) -> None:
            await lost.wait()
            raise StoreError("another process writes now")

    served: list[uuid.UUID] = []
    with pytest.raises(StoreError, match="another process"):
        async with actorq.open_queue(Deposable(tmp_path / "q.db"), maintenance=None) as queue:
            served.append(await queue.enqueue("t"))
            lost.set()
            await trio.sleep_forever()  # the queue's failure cancels this
    assert len(served) == 1
