"""Durable stores under an autojumping MockClock, as a user's tests run them.

A store's work runs on worker threads, which trio cannot see: without the
product's help an autojump clock would jump to the next deadline in the
middle of a commit. These tests open queues the way a user does (a store URL,
the default reaper, an ordinary :class:`actorq.Worker`) on SQLite and on
PostgreSQL, and check that virtual time moves only when every task waits
and no store work is in flight. The unit tests at the end pin down
``actorq._stores._threads.run_sync`` itself.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

import pgserver
import pytest
import trio
import trio.lowlevel
import trio.testing
from _kinds_postgres import new_schema

import actorq
from actorq._stores._threads import run_sync

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty durable store, as a user would pass it to ``open_queue``."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
    else:
        server = pgserver.require_server()
        yield f"{server.url()}?actorq_schema={new_schema()}"


# ------------------------------------------------------------ user-style tests


async def test_a_waiting_dequeue_receives_a_job_enqueued_later(
    store_url: str, autojump_clock: trio.testing.MockClock
) -> None:
    got: list[actorq.DequeuedJob] = []
    async with actorq.open_queue(store_url) as queue:
        start = trio.current_time()

        async def take() -> None:
            got.append(await queue.dequeue(["t"], timeout=10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take)
            await trio.sleep(1)
            job_id = await queue.enqueue("t", {"n": 1})
        assert [job.id for job in got] == [job_id]
        assert got[0].args == {"n": 1}
        # the clock moved for the sleep only, never during a commit
        assert trio.current_time() - start == 1


async def test_a_worker_with_the_default_reaper_finishes_every_job(
    store_url: str, autojump_clock: trio.testing.MockClock
) -> None:
    # Each job runs longer than the reaper's 120 s timeout: only heartbeats,
    # each a commit on a thread, keep it from being requeued.
    async with actorq.open_queue(store_url) as queue:
        worker = actorq.Worker(queue, concurrency=4)

        @worker.handler("square")
        async def square(job: actorq.Job) -> int:
            await trio.sleep(200)
            return int(job.args) ** 2

        ids = [await queue.enqueue("square", n) for n in range(20)]
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            # five rounds of four jobs, 200 s each, and no virtual time lost
            await trio.sleep(5 * 200 + 1)
            worker.shutdown()
        statuses = [await queue.job_status(job_id) for job_id in ids]
    assert [s.result for s in statuses] == [n * n for n in range(20)]
    assert [s.retries for s in statuses] == [0] * 20


async def test_jumps_and_sleeps_move_the_clock_by_exactly_their_length(
    store_url: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with actorq.open_queue(store_url) as queue:
        start = trio.current_time()
        job_id = await queue.enqueue("t")
        autojump_clock.jump(60)
        assert trio.current_time() - start == 60
        job = await queue.dequeue(["t"], timeout=0)
        await queue.refresh_heartbeat(job.token)
        assert trio.current_time() - start == 60
        await trio.sleep(30)  # autojump is back once the commits are done
        assert trio.current_time() - start == 90
        assert await queue.heartbeats(29) == [job.token]
        await queue.finish_job(job_id, "done")
        assert trio.current_time() - start == 90
    assert autojump_clock.autojump_threshold == 0


# ------------------------------------------------------------ run_sync itself


class Gate:
    """A thread function that blocks until :meth:`open` (no real sleeps)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def wait(self) -> str:
        self._event.wait()
        return "through"

    def open(self) -> None:
        self._event.set()


async def test_autojump_is_suspended_while_thread_work_is_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = Gate()
    results: list[str] = []

    async def call() -> None:
        results.append(await run_sync(gate.wait))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        # returns although the thread runs: trio cannot see it (documented)
        await trio.testing.wait_all_tasks_blocked()
        assert autojump_clock.autojump_threshold == math.inf
        start = trio.current_time()
        autojump_clock.jump(60)  # explicit jumps still work meanwhile
        assert trio.current_time() - start == 60
        gate.open()
    assert results == ["through"]
    assert autojump_clock.autojump_threshold == 0


async def test_no_deadline_fires_while_a_thread_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = Gate()
    in_call = False

    class OpenWhenIdle(trio.abc.Instrument):
        # The loop is about to wait with nothing runnable, the moment an
        # autojump would come: only now may the thread finish. Without the
        # suspension, that wait would time out at once and jump the clock.
        def before_io_wait(self, timeout: float) -> None:
            if in_call:
                gate.open()

    instrument = OpenWhenIdle()
    trio.lowlevel.add_instrument(instrument)
    try:
        start = trio.current_time()
        with trio.move_on_after(5) as scope:
            in_call = True
            assert await run_sync(gate.wait) == "through"
        assert not scope.cancelled_caught
        assert trio.current_time() == start
    finally:
        trio.lowlevel.remove_instrument(instrument)


async def test_concurrent_calls_nest(autojump_clock: trio.testing.MockClock) -> None:
    autojump_clock.autojump_threshold = 0.5
    first, second = Gate(), Gate()
    first_done = trio.Event()

    async def call(gate: Gate, done: trio.Event | None) -> None:
        await run_sync(gate.wait)
        if done is not None:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, first, first_done)
        nursery.start_soon(call, second, None)
        await trio.testing.wait_all_tasks_blocked()
        first.open()
        await first_done.wait()
        assert autojump_clock.autojump_threshold == math.inf  # the second still runs
        second.open()
    assert autojump_clock.autojump_threshold == 0.5


async def test_an_error_restores_autojump(autojump_clock: trio.testing.MockClock) -> None:
    def fail() -> None:
        raise ValueError("disk on fire")

    with pytest.raises(ValueError, match="disk on fire"):
        await run_sync(fail)
    assert autojump_clock.autojump_threshold == 0


async def test_a_cancelled_call_waits_for_its_thread_then_restores_autojump(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = Gate()
    scope = trio.CancelScope()
    outcome: list[Any] = []

    async def call() -> None:
        with scope:
            outcome.append(await run_sync(gate.wait))
        outcome.append(scope.cancelled_caught)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert autojump_clock.autojump_threshold == math.inf  # never abandoned
        gate.open()
    # the thread's result is delivered; the cancellation waits for the next checkpoint
    assert outcome == ["through", False]
    assert autojump_clock.autojump_threshold == 0


async def test_a_threshold_set_meanwhile_is_kept(autojump_clock: trio.testing.MockClock) -> None:
    gate = Gate()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_sync, gate.wait)
        await trio.testing.wait_all_tasks_blocked()
        autojump_clock.autojump_threshold = 2.0
        gate.open()
    assert autojump_clock.autojump_threshold == 2.0


async def test_arguments_and_limiter_pass_through() -> None:
    # the real clock: nothing but the thread hop
    assert not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    limiter = trio.CapacityLimiter(1)
    seen: list[int] = []

    def add(a: int, b: int) -> int:
        seen.append(limiter.borrowed_tokens)
        return a + b

    assert await run_sync(add, 2, 3, limiter=limiter) == 5
    assert seen == [1]
    assert limiter.borrowed_tokens == 0
