"""Durable cron schedules: schedule, unschedule and schedules.

The first part runs on every queue kind (the ``queue`` fixture: memory, the
stores, reopened stores, PostgreSQL, remote) under a MockClock. Those kinds
read the real wall clock, which a MockClock does not move; the scheduler
counts from the last slot it fired whenever the wall clock lags it, so slots
still come one period apart on trio's clock. The second part opens queues on
every durable store with a wall clock that follows trio's, to close a queue,
let slots pass while it is down, and reopen it: missed slots, their policies,
and a known date's time-zone arithmetic.
"""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

import pgserver
import psycopg
import pytest
import trio
import trio.testing
from _kinds_postgres import new_schema
from _kinds_remote import remote_pair

import actorq
from actorq._core._records import ScheduleRecord
from actorq._core._schedules import ScheduleEntry
from actorq._stores import _postgres_schema, _sqlite_schema
from actorq._stores._postgres import PostgresStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

Q = Any  # an actorq.JobQueue

MINUTE = 60.0


async def jobs_of(q: Q, job_type: str) -> list[actorq.JobSummary]:
    found: list[actorq.JobSummary] = await q.list_jobs(job_type=job_type)
    return found


# ------------------------------------------------------------ every kind


async def test_a_schedule_fires_once_per_slot(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    info = await queue.schedule("tick", "* * * * *", "tick", {"n": 1})
    assert (info.name, info.cron, info.job_type, info.args) == (
        "tick",
        "* * * * *",
        "tick",
        {"n": 1},
    )
    assert (info.timezone, info.catch_up, info.last_slot) == ("UTC", "last", None)
    assert info.next_slot.tzinfo is not None
    assert info.next_slot.second == 0
    first = await queue.dequeue(["tick"])
    fired_at = trio.current_time()
    assert first.args == {"n": 1}
    [listed] = await queue.schedules()
    assert listed.last_slot == info.next_slot
    assert listed.next_slot == info.next_slot + timedelta(minutes=1)
    second = await queue.dequeue(["tick"])
    # one period later on trio's clock, and nothing in between
    assert trio.current_time() - fired_at == pytest.approx(MINUTE, abs=1)
    assert second.id != first.id
    with pytest.raises(actorq.DequeueTimeoutError):
        await queue.dequeue(["tick"], timeout=0)
    assert len(await jobs_of(queue, "tick")) == 2


async def test_unschedule_stops_it(queue: Q, autojump_clock: trio.testing.MockClock) -> None:
    await queue.schedule("tick", "* * * * *", "tick")
    job = await queue.dequeue(["tick"])
    await queue.finish_job(job.id, None)
    assert await queue.unschedule("tick") is True
    assert await queue.schedules() == []
    with pytest.raises(actorq.DequeueTimeoutError):
        await queue.dequeue(["tick"], timeout=5 * MINUTE)
    assert len(await jobs_of(queue, "tick")) == 1
    assert await queue.unschedule("tick") is False


async def test_a_schedule_enqueues_in_its_channel(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    await queue.schedule("nightly", "0 3 * * *", "report", [1, 2], "team-a")
    job = await queue.dequeue(["report"], ["team-a"])
    assert (job.channel, job.args) == ("team-a", [1, 2])


async def test_redefining_a_schedule(queue: Q, autojump_clock: trio.testing.MockClock) -> None:
    first = await queue.schedule("s", "0 * * * *", "t")
    # declared again exactly as it is: nothing changes
    assert await queue.schedule("s", "0 * * * *", "t") == first
    replaced = await queue.schedule("s", "30 * * * *", "u", catch_up="none")
    assert (replaced.cron, replaced.job_type, replaced.catch_up) == ("30 * * * *", "u", "none")
    assert replaced.next_slot.minute == 30
    assert [s.cron for s in await queue.schedules()] == ["30 * * * *"]
    job = await queue.dequeue(["t", "u"])
    assert job.type == "u"


async def test_schedules_are_listed_by_name(queue: Q) -> None:
    await queue.schedule("b", "0 0 * * *", "t", timezone="Europe/Berlin")
    await queue.schedule("a", "@hourly", "t", catch_up="all")
    listed = await queue.schedules()
    assert [(s.name, s.timezone, s.catch_up) for s in listed] == [
        ("a", "UTC", "all"),
        ("b", "Europe/Berlin", "last"),
    ]
    # a Berlin midnight is 22:00 or 23:00 UTC
    assert listed[1].next_slot.astimezone(UTC).hour in (22, 23)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cron": "61 * * * *"}, ValueError, "not a valid cron"),
        ({"cron": "* * *"}, ValueError, "not a valid cron"),
        ({"cron": "0 0 31 2 *"}, ValueError, "no time that ever comes"),
        ({"cron": "0 0 1 1 * 0 2030"}, ValueError, "year field"),
        ({"cron": 5}, TypeError, "cron must be a str"),
        ({"timezone": "Mars/Olympus"}, ValueError, "not a known IANA time zone"),
        ({"timezone": "../etc/passwd"}, ValueError, "not a known IANA time zone"),
        ({"timezone": None}, TypeError, "timezone must be a str"),
        ({"catch_up": "some"}, ValueError, "catch_up must be one of"),
        ({"name": ""}, ValueError, "name must not be empty"),
        ({"name": "a\x00b"}, ValueError, "NUL"),
        ({"job_type": ""}, ValueError, "job_type must not be empty"),
        ({"args": object()}, TypeError, "args"),
    ],
)
async def test_bad_schedules_raise_and_change_nothing(
    queue: Q, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    given: dict[str, Any] = {"name": "s", "cron": "* * * * *", "job_type": "t"} | kwargs
    with pytest.raises(error, match=match):
        await queue.schedule(**given)
    assert await queue.schedules() == []
    # the queue keeps serving
    assert (await queue.schedule("s", "* * * * *", "t")).name == "s"


# ---------------------------------------- durable stores, a moving wall clock

EPOCH = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)


def wall() -> datetime:
    """A wall clock that follows trio's (a MockClock's jumps move it too)."""
    return EPOCH + timedelta(seconds=trio.current_time())


StoreFactory: TypeAlias = "Callable[[], Any]"


@asynccontextmanager
async def sqlite_factory(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    path = tmp_path / "q.db"
    yield lambda: actorq.SqliteStore(path)


@asynccontextmanager
async def memory_factory(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    store = actorq.MemoryStore()
    yield lambda: store


@asynccontextmanager
async def postgres_factory(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    server = await trio.to_thread.run_sync(pgserver.require_server)
    schema = new_schema()
    yield lambda: PostgresStore(server.url(), schema=schema)


FACTORIES = {"memory": memory_factory, "sqlite": sqlite_factory, "postgres": postgres_factory}


@pytest.fixture(params=sorted(FACTORIES))
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    async with FACTORIES[request.param](tmp_path) as factory:
        yield factory


def reopened(stores: StoreFactory) -> Any:
    return actorq.open_queue(stores(), clock=wall, maintenance=None)


async def test_a_slot_fires_once_across_a_reopen(
    stores: StoreFactory, autojump_clock: trio.testing.MockClock
) -> None:
    async with reopened(stores) as q:
        await q.schedule("hourly", "0 * * * *", "t")
        job = await q.dequeue(["t"])
        assert wall() == datetime(2026, 3, 28, 13, 0, tzinfo=UTC)
    # reopened within the hour: the 13:00 slot has fired and does not again
    async with reopened(stores) as q:
        with pytest.raises(actorq.DequeueTimeoutError):
            await q.dequeue(["t"], timeout=30 * MINUTE)
        assert [j.id for j in await jobs_of(q, "t")] == [job.id]
        [info] = await q.schedules()
        assert info.last_slot == datetime(2026, 3, 28, 13, 0, tzinfo=UTC)
        # the next slot comes on time
        await q.dequeue(["t"])
        assert wall() == datetime(2026, 3, 28, 14, 0, tzinfo=UTC)
        assert len(await jobs_of(q, "t")) == 2


async def missed_while_down(stores: StoreFactory, catch_up: str) -> list[datetime]:
    """Define an hourly schedule, close the queue for 3.5 hours, reopen it: the
    times (wall clock) at which jobs were enqueued after the reopen."""
    async with reopened(stores) as q:
        await q.schedule("hourly", "0 * * * *", "t", catch_up=catch_up)
    await trio.sleep(3.5 * 3600)  # 13:00, 14:00 and 15:00 pass while it is down
    async with reopened(stores) as q:
        await trio.sleep(1)
        queued = [j.queued for j in await jobs_of(q, "t")]
        for _ in queued:
            await q.dequeue(["t"], timeout=0)
        [info] = await q.schedules()
        # and the next slot, 16:00, fires on time, once
        assert info.next_slot == datetime(2026, 3, 28, 16, 0, tzinfo=UTC)
        await q.dequeue(["t"])
        assert wall() == datetime(2026, 3, 28, 16, 0, tzinfo=UTC)
        with pytest.raises(actorq.DequeueTimeoutError):
            await q.dequeue(["t"], timeout=0)
    return queued


async def test_missed_slots_by_default_fire_the_last_once(
    stores: StoreFactory, autojump_clock: trio.testing.MockClock
) -> None:
    queued = await missed_while_down(stores, "last")
    assert queued == [datetime(2026, 3, 28, 15, 30, tzinfo=UTC)]


async def test_missed_slots_are_skipped_with_catch_up_none(
    stores: StoreFactory, autojump_clock: trio.testing.MockClock
) -> None:
    assert await missed_while_down(stores, "none") == []


async def test_every_missed_slot_fires_with_catch_up_all(
    stores: StoreFactory, autojump_clock: trio.testing.MockClock
) -> None:
    queued = await missed_while_down(stores, "all")
    assert queued == [datetime(2026, 3, 28, 15, 30, tzinfo=UTC)] * 3


async def test_catch_up_all_is_capped(
    stores: StoreFactory, autojump_clock: trio.testing.MockClock
) -> None:
    async with reopened(stores) as q:
        await q.schedule("minutely", "* * * * *", "t", catch_up="all")
    await trio.sleep(5 * 3600)  # 300 slots
    async with reopened(stores) as q:
        await trio.sleep(1)
        assert (await q.stats()).jobs == 100
        [info] = await q.schedules()
        assert info.last_slot == datetime(2026, 3, 28, 17, 0, tzinfo=UTC)


async def test_slots_follow_the_time_zone_across_dst(
    stores: StoreFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # Berlin moves from CET (UTC+1) to CEST (UTC+2) at 01:00 UTC on 2026-03-29:
    # 09:00 local is 08:00 UTC on the 28th and 07:00 UTC from the 29th on
    async with reopened(stores) as q:
        info = await q.schedule("morning", "0 9 * * *", "t", timezone="Europe/Berlin")
        assert info.next_slot == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)
        await q.dequeue(["t"])
        assert wall() == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)
    async with reopened(stores) as q:
        [info] = await q.schedules()
        assert info.next_slot == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
        await q.dequeue(["t"])
        assert wall() == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
        assert len(await jobs_of(q, "t")) == 2


async def test_an_unscheduled_schedule_stays_gone_after_a_reopen(
    stores: StoreFactory, autojump_clock: trio.testing.MockClock
) -> None:
    async with reopened(stores) as q:
        await q.schedule("a", "0 * * * *", "t")
        await q.schedule("b", "0 * * * *", "t")
        assert await q.unschedule("a") is True
    async with reopened(stores) as q:
        assert [s.name for s in await q.schedules()] == ["b"]


# ------------------------------------------------------- tenancy, remote


async def test_a_tenant_manages_schedules_only_in_its_channels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tenants = {"token-a": ["a"], "token-b": ["b"]}
    async with remote_pair(auth="admin", tenants=tenants, token="token-a") as (tenant, local, _):
        await local.schedule("theirs", "0 * * * *", "t", channel="b")
        mine = await tenant.schedule("mine", "0 * * * *", "t", {"x": 1}, "a")
        assert (mine.channel, mine.args) == ("a", {"x": 1})
        with pytest.raises(actorq.ProtocolError) as caught:
            await tenant.schedule("other", "0 * * * *", "t", channel="b")
        assert caught.value.reason == "forbidden"
        # a name held in another tenant's channel cannot be taken over
        with pytest.raises(actorq.ProtocolError):
            await tenant.schedule("theirs", "0 * * * *", "t", channel="a")
        assert [s.name for s in await tenant.schedules()] == ["mine"]
        assert await tenant.unschedule("theirs") is False
        assert [s.name for s in await local.schedules()] == ["mine", "theirs"]
        assert await tenant.unschedule("mine") is True
        assert [s.name for s in await local.schedules()] == ["theirs"]


async def test_a_remote_schedule_fires_for_a_remote_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with remote_pair() as (remote, local, _):
        info = await remote.schedule("s", "*/5 * * * *", "t", {"a": [1]}, timezone="Asia/Tokyo")
        assert info == (await local.schedules())[0] == (await remote.schedules())[0]
        job = await remote.dequeue(["t"])
        assert job.args == {"a": [1]}
        assert (await remote.schedules())[0].last_slot == info.next_slot


# ------------------------------------------------------------- migration


def write_version_3_sqlite(path: Path) -> None:
    """A queue file as schema version 3 left it, with one pending job."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE actorq_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO actorq_schema (version) VALUES (3)")
        for step in _sqlite_schema._MIGRATIONS[:3]:
            for statement in step:
                conn.execute(statement)
        micros = int(EPOCH.timestamp()) * 1_000_000
        conn.execute(
            "INSERT INTO jobs (seq, id, type, channel, args, dependencies, queued, canceled,"
            " retries, priority) VALUES (1, ?, 'build', '', '{}', x'', ?, 0, 0, 5)",
            (b"\x01" * 16, micros),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_version_3_sqlite_queue_is_upgraded_and_keeps_schedules(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "v3.db"
    write_version_3_sqlite(path)
    async with actorq.open_queue(actorq.SqliteStore(path), clock=wall, maintenance=None) as q:
        [job] = await q.list_jobs()
        assert (await q.job_status(job.id)).priority == 5
        assert await q.schedules() == []
        await q.schedule("s", "0 * * * *", "t")
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("SELECT version FROM actorq_schema").fetchall()
        names = [row[0] for row in conn.execute("SELECT name FROM schedules")]
    finally:
        conn.close()
    assert version == [(_sqlite_schema.SCHEMA_VERSION,)]
    assert names == ["s"]


# ---------------------------------------------------- the core's slot rules


def entry(cron: str, timezone: str) -> ScheduleEntry:
    created = datetime(2026, 10, 24, 12, 0, tzinfo=UTC)
    return ScheduleEntry(
        ScheduleRecord("s", cron, "t", "null", "", timezone, "last", created, None)
    )


def test_a_repeated_hour_fires_once_when_clocks_go_back() -> None:
    # Berlin goes from 03:00 CEST back to 02:00 CET at 01:00 UTC on 2026-10-25:
    # 02:30 local comes twice (00:30 and 01:30 UTC); it fires the first time only
    daily = entry("30 2 * * *", "Europe/Berlin")
    first = daily.slot_after(datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert daily.slot_after(first) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)
    # an hourly schedule skips the hour the clock reads twice
    hourly = entry("0 * * * *", "Europe/Berlin")
    slots = hourly.slots_up_to(
        datetime(2026, 10, 25, 3, 0, tzinfo=UTC), datetime(2026, 10, 24, 23, 30, tzinfo=UTC), 10
    )
    assert [s.hour for s in slots] == [0, 2, 3]
    # in UTC there is no such hour: every slot fires
    assert len(entry("0 * * * *", "UTC").slots_up_to(slots[-1], slots[0], 10)) == 3


def test_a_skipped_hour_fires_at_the_first_time_after_it() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29 (02:00 CET is 03:00 CEST)
    daily = entry("30 2 * * *", "Europe/Berlin")
    slot = daily.slot_after(datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert slot == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert daily.slot_after(slot) == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)


async def test_a_name_taken_again_after_unschedule_counts_from_now(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    await queue.schedule("s", "0 * * * *", "hourly")
    assert await queue.unschedule("s") is True
    # the removed schedule's timer does not fire the new one early
    info = await queue.schedule("s", "0 0 * * *", "daily")
    assert info.next_slot.hour == 0
    with pytest.raises(actorq.DequeueTimeoutError):
        await queue.dequeue(["hourly", "daily"], timeout=0)
    job = await queue.dequeue(["hourly", "daily"])
    assert job.type == "daily"
    [listed] = await queue.schedules()
    assert listed.last_slot == info.next_slot


async def test_a_standby_that_takes_over_fires_each_slot_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = await trio.to_thread.run_sync(pgserver.require_server)
    schema = new_schema()

    def store() -> PostgresStore:
        return PostgresStore(server.url(), schema=schema, standby_poll=1.0)

    seen: dict[str, Any] = {}

    async def standby() -> None:
        async with actorq.open_queue(store(), clock=wall, maintenance=None) as queue:
            seen["took_over"] = wall()
            seen["jobs"] = len(await jobs_of(queue, "t"))
            [info] = await queue.schedules()
            seen["last_slot"] = info.last_slot
            await queue.dequeue(["t"])
            seen["fired"] = wall()

    # the leader closes first (releasing its lock), then the nursery waits for
    # the standby, which leads from then on
    async with (
        trio.open_nursery() as nursery,
        actorq.open_queue(store(), clock=wall, maintenance=None) as leader,
    ):
        await leader.schedule("hourly", "0 * * * *", "t")
        await leader.dequeue(["t"])  # the 13:00 slot, on the leader
        nursery.start_soon(standby)
        await trio.sleep(10 * MINUTE)  # the standby waits for the leadership
        assert "took_over" not in seen
    # it took over (after the leader's ten minutes, its polls' worth later)
    # before the next slot, which it fired on time, once
    assert seen["took_over"] < datetime(2026, 3, 28, 14, 0, tzinfo=UTC)
    assert (seen["jobs"], seen["last_slot"]) == (1, datetime(2026, 3, 28, 13, 0, tzinfo=UTC))
    assert seen["fired"] == datetime(2026, 3, 28, 14, 0, tzinfo=UTC)


def write_version_3_postgres(url: str, schema: str) -> None:
    """A queue schema as version 3 left it, with one pending job."""
    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute(_postgres_schema.q("CREATE SCHEMA {s}", schema))
        conn.execute(
            _postgres_schema.q("CREATE TABLE {s}.actorq_schema (version integer NOT NULL)", schema)
        )
        conn.execute(_postgres_schema.q("INSERT INTO {s}.actorq_schema VALUES (3)", schema))
        for step in _postgres_schema._MIGRATIONS[:3]:
            for statement in step:
                conn.execute(_postgres_schema.q(statement, schema))
        conn.execute(
            _postgres_schema.q(
                "INSERT INTO {s}.jobs (id, seq, type, channel, args, queued, canceled, retries,"
                " priority) VALUES (%s, 1, 'build', '', %s, %s, false, 0, 5)",
                schema,
            ),
            (uuid.UUID(int=1), "{}", EPOCH),
        )
        conn.commit()


async def test_a_version_3_postgres_queue_is_upgraded_and_keeps_schedules(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = await trio.to_thread.run_sync(pgserver.require_server)
    schema = new_schema()
    await trio.to_thread.run_sync(write_version_3_postgres, server.url(), schema)
    store = PostgresStore(server.url(), schema=schema)
    async with actorq.open_queue(store, clock=wall, maintenance=None) as q:
        [job] = await q.list_jobs()
        assert (await q.job_status(job.id)).priority == 5
        assert await q.schedules() == []
        await q.schedule("s", "0 * * * *", "t")

    def check() -> None:
        with psycopg.connect(server.url()) as conn:
            version = conn.execute(
                _postgres_schema.q("SELECT version FROM {s}.actorq_schema", schema)
            ).fetchall()
            assert version == [(_postgres_schema.SCHEMA_VERSION,)]
            names = conn.execute(_postgres_schema.q("SELECT name FROM {s}.schedules", schema))
            assert names.fetchall() == [("s",)]
            # the table keeps its rules: no policy but the three
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(_postgres_schema.q("UPDATE {s}.schedules SET catch_up = 'x'", schema))

    await trio.to_thread.run_sync(check)
