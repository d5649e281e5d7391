"""The worker's retries with backoff and handler time limits, under trio's MockClock."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import actorq
from actorq import Backoff, JobState, Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

from contextlib import asynccontextmanager


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        try:
            yield worker
        finally:
            worker.shutdown(grace=0)


async def test_a_failing_attempt_is_retried_after_its_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[tuple[float, int]] = []
    async with actorq.open_queue() as q:
        worker = Worker(q)
        start = trio.current_time()

        @worker.handler("t", retries=3, backoff=Backoff(initial=10, factor=2, jitter=0))
        async def flaky(job: actorq.Job) -> str:
            attempts.append((trio.current_time() - start, job.retries))
            if len(attempts) < 3:
                raise RuntimeError("not yet")
            return "done"

        async with running(worker):
            job_id = await q.enqueue("t")
            status = await q.wait(job_id)
    assert (status.state, status.result, status.retries) == (JobState.FINISHED, "done", 2)
    # 10 s after the first failure, then 20 s after the second
    assert [round(t) for t, _ in attempts] == [0, 10, 30]
    assert [n for _, n in attempts] == [0, 1, 2]


async def test_the_last_failure_settles_the_job_as_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)
        calls = 0

        @worker.handler("t", retries=1, backoff=Backoff(initial=5, jitter=0))
        async def broken(job: actorq.Job) -> None:
            nonlocal calls
            calls += 1
            raise ValueError("always")

        async with running(worker):
            job_id = await q.enqueue("t")
            status = await q.wait(job_id)
    assert calls == 2
    assert (status.state, status.retries) == (JobState.FAILED, 1)
    assert status.result["error"]["type"] == "ValueError"


async def test_a_handler_past_its_time_limit_fails_the_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)
        started: list[float] = []

        @worker.handler("slow", timeout=5)
        async def slow(job: actorq.Job) -> str:
            started.append(trio.current_time())
            await trio.sleep(100)
            return "late"

        @worker.handler("slow-retried", timeout=5, retries=1, backoff=Backoff(initial=1, jitter=0))
        async def slow_retried(job: actorq.Job) -> str:
            await trio.sleep(100 if job.retries == 0 else 1)
            return "second time lucky"

        async with running(worker):
            start = trio.current_time()
            job_id = await q.enqueue("slow")
            status = await q.wait(job_id)
            assert trio.current_time() - start == pytest.approx(5)
            retried = await q.wait(await q.enqueue("slow-retried"))
    assert status.state is JobState.FAILED
    assert status.result["error"]["type"] == "HandlerTimeout"
    assert "time limit of 5 s" in status.result["error"]["message"]
    assert (retried.state, retried.result, retried.retries) == (
        JobState.FINISHED,
        "second time lucky",
        1,
    )


def test_backoff_is_exponential_capped_and_jittered() -> None:
    exact = Backoff(initial=1, factor=3, max=20, jitter=0)
    assert [exact.delay(n) for n in range(5)] == [1, 3, 9, 20, 20]
    assert exact.delay(10_000) == 20  # no overflow
    assert Backoff(jitter=0.5, random=lambda: 1.0).delay(2) == pytest.approx(2)
    default = Backoff()
    assert (default.initial, default.factor, default.max, default.jitter) == (1, 2, 300, 0.2)
    assert all(0.8 * 2**n <= default.delay(n) <= 2**n for n in range(5))
    with pytest.raises(ValueError, match="factor"):
        Backoff(factor=0.5)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=2)
    with pytest.raises(TypeError, match="initial"):
        Backoff(initial="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry"):
        exact.delay(-1)


async def test_bad_handler_options_are_refused() -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)

        async def handle(job: actorq.Job) -> None:
            pass

        with pytest.raises(ValueError, match="retries must be >= 0"):
            worker.add_handler("t", handle, retries=-1)
        with pytest.raises(TypeError, match="retries"):
            worker.add_handler("t", handle, retries=True)
        with pytest.raises(TypeError, match="backoff"):
            worker.add_handler("t", handle, backoff=3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            worker.add_handler("t", handle, timeout=0)
        assert worker.job_types == []
