"""The scheduler-side maintenance: heartbeat reaper, stale workers, retention.

Everything runs under trio's MockClock with autojump, and the queue's wall
clock is derived from trio's clock, so hours pass in no wall time.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

import actorq
from actorq import JobState, Maintenance
from actorq._actor._maintenance import Maintainer
from actorq._core._state import QueueState

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


def mock_wall() -> datetime:
    """Wall time that follows trio's (mock) clock."""
    return EPOCH + timedelta(seconds=trio.current_time())


@asynccontextmanager
async def maintained(
    store: actorq.Store | None = None, **config: Any
) -> AsyncIterator[actorq.LocalQueue]:
    async with actorq.open_queue(store, clock=mock_wall, maintenance=Maintenance(**config)) as q:
        yield q


async def state_at(queue: actorq.LocalQueue, job_id: uuid.UUID) -> tuple[JobState, int]:
    status = await queue.job_status(job_id)
    return status.state, status.retries


async def sleep_until(t: float) -> None:
    await trio.sleep_until(t)


# ------------------------------------------------------------------ config


def test_defaults_are_upstreams() -> None:
    m = Maintenance()
    assert (m.watch_interval, m.job_timeout, m.max_retries) == (30.0, 120.0, 2)
    assert (m.worker_timeout, m.worker_watch_interval) == (3600.0, 300.0)
    assert m.retention is None


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("watch_interval", 0, ValueError),
        ("job_timeout", -1, ValueError),
        ("job_timeout", float("nan"), ValueError),
        ("retention", "1d", TypeError),
        ("max_retries", -1, ValueError),
        ("max_retries", 1.5, TypeError),
        ("worker_watch_interval", True, TypeError),
    ],
)
def test_bad_config_raises(field: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        Maintenance(**{field: value})  # type: ignore[arg-type]


async def test_maintenance_none_turns_the_reaper_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue(maintenance=None) as q:
        job_id = await q.enqueue("t")
        await q.dequeue(["t"], timeout=0)
        await trio.sleep(10_000)
        assert await state_at(q, job_id) == (JobState.RUNNING, 0)


async def test_the_reaper_runs_by_default(autojump_clock: trio.testing.MockClock) -> None:
    async with actorq.open_queue() as q:
        job_id = await q.enqueue("t")
        await q.dequeue(["t"], timeout=0)
        await trio.sleep(150)  # the 120 s timeout, then at most one 30 s tick
        assert await state_at(q, job_id) == (JobState.PENDING, 1)


# ------------------------------------------------------------------ reaper


async def test_silent_job_is_requeued_then_finished_with_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with maintained() as q:
        start = trio.current_time()
        job_id = await q.enqueue("t", {"n": 1})
        first = await q.dequeue(["t"], timeout=0)
        # checked every 30 s; silent for 120 s at the 4th check
        await sleep_until(start + 119)
        assert await state_at(q, job_id) == (JobState.RUNNING, 0)
        await sleep_until(start + 121)
        assert await state_at(q, job_id) == (JobState.PENDING, 1)
        with pytest.raises(actorq.NotExistError):
            await q.id_from_token(first.token)  # the lost worker's token is void

        # retried twice (max_retries=2), then finished with the error result
        for retries in (1, 2):
            again = await q.dequeue(["t"], timeout=0)
            assert again.id == job_id
            assert again.args == {"n": 1}
            await trio.sleep(150)
            expected = JobState.PENDING if retries < 2 else JobState.FAILED
            assert await state_at(q, job_id) == (expected, retries + (retries < 2))
        status = await q.job_status(job_id)
        assert status.result["error"]["type"] == "MissingHeartbeat"
        assert "stopped sending heartbeats" in status.result["error"]["message"]
        assert status.retries == 2


async def test_heartbeats_keep_a_job_running(autojump_clock: trio.testing.MockClock) -> None:
    async with maintained() as q:
        job_id = await q.enqueue("t")
        job = await q.dequeue(["t"], timeout=0)
        for _ in range(20):
            await trio.sleep(100)
            await q.refresh_heartbeat(job.token)
        assert await state_at(q, job_id) == (JobState.RUNNING, 0)


async def test_reaper_settings_are_used(autojump_clock: trio.testing.MockClock) -> None:
    async with maintained(watch_interval=1, job_timeout=5, max_retries=0) as q:
        start = trio.current_time()
        job_id = await q.enqueue("t")
        await q.dequeue(["t"], timeout=0)
        await sleep_until(start + 4.5)
        assert await state_at(q, job_id) == (JobState.RUNNING, 0)
        await sleep_until(start + 5.5)
        assert await state_at(q, job_id) == (JobState.FAILED, 0)


async def test_canceled_running_job_is_left_alone(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Upstream issue 4213: a canceled running job kept its heartbeat and the
    # watcher failed on it forever.
    async with maintained() as q:
        job_id = await q.enqueue("t")
        await q.dequeue(["t"], timeout=0)
        await q.cancel_job(job_id)
        with caplog.at_level(logging.INFO, logger="actorq"):
            await trio.sleep(1000)
        assert await state_at(q, job_id) == (JobState.CANCELED, 0)
        assert not [r for r in caplog.records if r.name == "actorq.maintenance"]


async def test_reaped_job_is_logged_with_fields(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with maintained() as q:
        job_id = await q.enqueue("build", channel="c1")
        await q.dequeue(["build"], ["c1"], timeout=0)
        with caplog.at_level(logging.WARNING, logger="actorq.maintenance"):
            await trio.sleep(125)
        (record,) = [r for r in caplog.records if getattr(r, "event", None) == "job_reaped"]
        assert record.job_id == str(job_id)  # type: ignore[attr-defined]
        assert record.job_type == "build"  # type: ignore[attr-defined]
        assert record.channel == "c1"  # type: ignore[attr-defined]
        assert record.requeued is True  # type: ignore[attr-defined]


async def test_restored_running_job_is_reaped(autojump_clock: trio.testing.MockClock) -> None:
    # A durable queue that restarts while a job runs: nobody holds its token
    # any more, and the reaper hands it out again.
    store = actorq.MemoryStore()
    async with maintained(store) as q:
        job_id = await q.enqueue("t")
        await q.dequeue(["t"], timeout=0)
    async with maintained(store) as q:
        assert await state_at(q, job_id) == (JobState.RUNNING, 0)
        await trio.sleep(150)
        assert await state_at(q, job_id) == (JobState.PENDING, 1)
        assert (await q.dequeue(["t"], timeout=0)).id == job_id


async def test_reap_pass_can_be_called_directly(autojump_clock: trio.testing.MockClock) -> None:
    async with actorq.open_queue(maintenance=None) as q:
        maintainer = Maintainer(q, Maintenance(max_retries=0), mock_wall)
        job_id = await q.enqueue("t", channel="c")
        await q.dequeue(["t"], ["c"], timeout=0)
        assert await maintainer.reap_jobs() == []
        await trio.sleep(120)
        (reaped,) = await maintainer.reap_jobs()
        assert (reaped.id, reaped.type, reaped.channel) == (job_id, "t", "c")
        assert not reaped.requeued
        assert await maintainer.reap_jobs() == []


# ------------------------------------------------------------------ workers


async def test_silent_workers_are_removed_unless_they_hold_jobs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with maintained() as q:
        start = trio.current_time()
        idle = await q.insert_worker("", "x86_64")
        busy = await q.insert_worker("", "x86_64")
        lively = await q.insert_worker("", "x86_64")
        await q.enqueue("t")
        job = await q.dequeue(["t"], timeout=0, worker_id=busy)

        async def keep_job_alive() -> None:
            while True:
                await trio.sleep(60)
                await q.refresh_heartbeat(job.token)

        async def keep_worker_alive() -> None:
            while True:
                await trio.sleep(600)
                await q.update_worker_status(lively)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_job_alive)
            nursery.start_soon(keep_worker_alive)
            # checked every 300 s: silent for an hour at the check at 3600 s
            await sleep_until(start + 3599)
            assert {w.id for w in await q.workers()} == {idle, busy, lively}
            await sleep_until(start + 3601)
            assert {w.id for w in await q.workers()} == {busy, lively}
            nursery.cancel_scope.cancel()
        await q.finish_job(job.id, None)
        await sleep_until(start + 3901)
        assert {w.id for w in await q.workers()} == {lively}


async def test_worker_removal_can_be_disabled(autojump_clock: trio.testing.MockClock) -> None:
    async with maintained(worker_timeout=None) as q:
        worker = await q.insert_worker("", "x86_64")
        await trio.sleep(10 * 3600)
        assert [w.id for w in await q.workers()] == [worker]


# ----------------------------------------------------------------- retention


async def finish(q: actorq.LocalQueue, job_type: str, result: Any = None) -> uuid.UUID:
    job = await q.dequeue([job_type], timeout=0)
    await q.finish_job(job.id, result)
    return job.id


async def ids(q: actorq.LocalQueue) -> set[uuid.UUID]:
    return {j.id for j in await q.list_jobs()}


async def test_retention_deletes_old_finished_trees(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with maintained(retention=3600, retention_interval=60) as q:
        start = trio.current_time()
        dep = await q.enqueue("a")
        root = await q.enqueue("b", None, [dep])
        await finish(q, "a")
        await trio.sleep(100)
        await finish(q, "b")  # the tree finished at start + 100
        pending = await q.enqueue("c")  # never runs: kept
        await sleep_until(start + 3650)
        assert await ids(q) == {dep, root, pending}
        # swept every 60 s: the sweep at +3720 is the first with a cutoff past +100
        await sleep_until(start + 3730)
        assert await ids(q) == {pending}


async def test_retention_keeps_trees_with_unsettled_or_young_jobs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with maintained(retention=100, retention_interval=10) as q:
        shared = await q.enqueue("a")
        await finish(q, "a")
        old_root = await q.enqueue("b", None, [shared])
        await finish(q, "b")
        young_root = await q.enqueue("c", None, [shared])  # needs `shared` too
        await trio.sleep(500)
        assert old_root not in await ids(q)
        await finish(q, "c")
        running = await q.enqueue("d")
        await q.dequeue(["d"], timeout=0)
        blocked_dep = await q.enqueue("e")  # pending under a finished-by-fail root
        failed_root = await q.enqueue("f", None, [blocked_dep])
        await q.fail_job(failed_root, {"error": "dependency failed"})
        await trio.sleep(50)
        # old_root went; `shared` stays for young_root, which is not old yet
        assert await ids(q) == {shared, young_root, running, blocked_dep, failed_root}
        await trio.sleep(100)
        assert await ids(q) == {running, blocked_dep, failed_root}


async def test_retention_ages_canceled_trees_from_first_sight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with maintained(retention=100, retention_interval=10) as q:
        start = trio.current_time()
        old_pending = await q.enqueue("t")
        await trio.sleep(1000)  # queued long ago ...
        await q.cancel_job(old_pending)  # ... canceled only now (start + 1000)
        await sleep_until(start + 1095)
        assert await ids(q) == {old_pending}
        await sleep_until(start + 1125)
        assert await ids(q) == set()


async def test_settled_roots_query() -> None:
    now = [EPOCH]
    state = QueueState(wall=lambda: now[0], monotonic=lambda: 0.0)
    a = state.enqueue("t", "null")
    b = state.enqueue("t", "null", [a])
    c = state.enqueue("t", "null")
    d = state.enqueue("t", "null")
    for expected in (a, b, c):
        got = state.dequeue(("t",), ("",))
        assert got is not None
        assert got.id == expected
        state.finish_job(got.id, "null")
        now[0] += timedelta(seconds=10)
    state.cancel_job(d)
    # a, b finished at +0, +10; c at +20; d canceled (no time)
    assert state.settled_roots(EPOCH) == [(d, True)]
    assert state.settled_roots(EPOCH + timedelta(seconds=11)) == [(b, False), (d, True)]
    assert state.settled_roots(EPOCH + timedelta(seconds=21)) == [
        (b, False),
        (c, False),
        (d, True),
    ]
    e = state.enqueue("t", "null", [c])  # c is no longer a root; e is pending
    assert state.settled_roots(EPOCH + timedelta(days=1)) == [(b, False), (d, True)]
    state.cancel_job(e)
    assert state.settled_roots(EPOCH + timedelta(days=1)) == [(b, False), (d, True), (e, True)]
