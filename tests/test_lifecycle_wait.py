"""``wait`` leaves nothing behind: in the actor, and on a server for a remote caller."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from _kinds_remote import remote_pair

import actorq
from actorq import JobState


def settle_waiters(queue: actorq.LocalQueue) -> int:
    return sum(len(w) for w in queue._scheduler._settle_waiters.values())


async def test_a_cancelled_or_timed_out_wait_is_forgotten_in_process(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue() as queue:
        job_id = await queue.enqueue("t")
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(queue.wait, job_id)
            await trio.testing.wait_all_tasks_blocked()
            assert settle_waiters(queue) == 3
            nursery.cancel_scope.cancel()
        with pytest.raises(actorq.WaitTimeoutError):
            await queue.wait(job_id, timeout=0.5)
        await queue._call(lambda state: None)  # the actor has seen the withdrawals
        assert settle_waiters(queue) == 0


async def test_a_remote_wait_is_answered_when_the_job_settles_and_forgotten_on_cancel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with remote_pair() as (remote, local, _):
        job_id = await remote.enqueue("t")
        seen: list[actorq.JobStatus] = []

        async def waiter() -> None:
            seen.append(await remote.wait(job_id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(10)
            assert settle_waiters(local) == 1
            await local.fail_job(job_id, {"error": "x"})
        assert [s.state for s in seen] == [JobState.FAILED]
        assert settle_waiters(local) == 0

        other = await remote.enqueue("t")
        with trio.move_on_after(5):
            await remote.wait(other)
        for _ in range(3):
            await trio.testing.wait_all_tasks_blocked()
        await local._call(lambda state: None)
        assert settle_waiters(local) == 0
        with pytest.raises(actorq.WaitTimeoutError) as caught:
            await remote.wait(other, timeout=2)
        assert isinstance(caught.value, TimeoutError)
        await local._call(lambda state: None)
        assert settle_waiters(local) == 0


async def test_the_scheduler_sleeps_until_the_first_delayed_job_falls_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue(maintenance=None) as queue:
        scheduler = queue._scheduler
        late = await queue.enqueue("t", "late", delay=1000)
        early = await queue.enqueue("t", "early", delay=10)
        batches = scheduler.batches
        await trio.sleep(9)
        assert scheduler.batches == batches  # nothing due: no wake-up, no poll
        assert (await queue.dequeue(["t"], timeout=5)).id == early
        batches = scheduler.batches
        await trio.sleep(900)
        assert scheduler.batches == batches
        start = trio.current_time()
        assert (await queue.dequeue(["t"])).id == late
        assert trio.current_time() - start == pytest.approx(1000 - 9 - 900 - 1, abs=1)
