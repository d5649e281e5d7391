"""Cancellation races of the in-process queue: no job is ever lost.

A dequeuer can be cancelled at the very moment the scheduler hands it a job
(with a buffered reply channel, the job would sit in the buffer and be dropped
with it: trio issue 719). These tests stage that moment deliberately, in both
orders the scheduler and the cancelled task can run in, and check that the
job goes back to its place with a void token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import actorq
from actorq import DequeueTimeoutError
from actorq._actor._scheduler import Call, Park, Reply

if TYPE_CHECKING:
    import uuid


async def test_cancel_after_assign_puts_the_job_back() -> None:
    for _ in range(20):  # trio shuffles run order; cover both interleavings
        async with actorq.open_queue() as queue:
            older = await queue.enqueue("other")
            scope = trio.CancelScope()
            outcome: list[object] = []

            async def dequeuer(
                queue: actorq.LocalQueue = queue,
                scope: trio.CancelScope = scope,
                outcome: list[object] = outcome,
            ) -> None:
                with scope:
                    outcome.append(await queue.dequeue(["t"]))
                outcome.append("cancelled" if scope.cancelled_caught else "returned")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(dequeuer)
                await trio.testing.wait_all_tasks_blocked()
                # Cancel the parked dequeuer and make a job ready in the same
                # tick: the scheduler may assign it before the dequeuer runs.
                scope.cancel()
                job_id = await queue.enqueue("t", {"n": 1})
            assert outcome == ["cancelled"]
            # the job is back, pending, without a running token
            status = await queue.job_status(job_id)
            assert status.state is actorq.JobState.PENDING
            assert status.started is None
            assert status.retries == 0
            assert await queue.heartbeats(0) == []
            job = await queue.dequeue(["t"], timeout=0)
            assert job.id == job_id
            assert job.args == {"n": 1}
            assert (await queue.job_status(older)).state is actorq.JobState.PENDING


async def test_job_for_an_abandoned_reply_goes_back() -> None:
    # The lowest level of the race: a dequeuer is parked, its reply is
    # abandoned (what a cancel does) but its withdrawal has not reached the
    # scheduler yet, and a job arrives. The scheduler must not strand it.
    async with actorq.open_queue() as queue:
        reply = Reply()
        queue._scheduler.post_nowait(Park(None, ("t",), ("",), None, reply))
        await trio.testing.wait_all_tasks_blocked()
        reply.abandon()
        job_id = await queue.enqueue("t", [1])
        status = await queue.job_status(job_id)
        assert status.state is actorq.JobState.PENDING
        assert status.started is None
        assert await queue.heartbeats(0) == []
        job = await queue.dequeue(["t"], timeout=0)
        assert (job.id, job.args) == (job_id, [1])


async def test_request_abandoned_before_the_scheduler_runs_it_does_nothing() -> None:
    async with actorq.open_queue() as queue:
        reply = Reply()
        reply.abandon()
        ran: list[bool] = []
        queue._scheduler.post_nowait(Call(lambda s: ran.append(True), reply))
        await queue.stats()  # a later request: the abandoned one was skipped before it
        assert ran == []


async def test_already_cancelled_call_changes_nothing() -> None:
    async with actorq.open_queue() as queue:
        with trio.CancelScope() as scope:
            scope.cancel()
            await queue.enqueue("t")
        assert scope.cancelled_caught
        assert await queue.list_jobs() == []


async def test_timeout_racing_with_a_job_returns_the_job(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue() as queue:
        results: list[object] = []

        async def dequeuer() -> None:
            try:
                results.append((await queue.dequeue(["t"], timeout=5)).id)
            except DequeueTimeoutError:
                results.append("timeout")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dequeuer)
            await trio.sleep(5)  # wakes in the same tick as the dequeuer's deadline
            job_id = await queue.enqueue("t")
        # either the dequeuer got the job, or it timed out and the job is still there
        if results == ["timeout"]:
            assert (await queue.dequeue(["t"], timeout=0)).id == job_id
        else:
            assert results == [job_id]
            assert (await queue.job_status(job_id)).state is actorq.JobState.RUNNING


async def test_many_cancelled_dequeuers_lose_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue() as queue:
        taken: list[uuid.UUID] = []

        async def dequeuer(delay: float) -> None:
            with trio.move_on_after(delay):
                job = await queue.dequeue(["t"])
                taken.append(job.id)
                await queue.finish_job(job.id, None)

        jobs: list[uuid.UUID] = []
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(dequeuer, (i % 7) * 0.5)
            for i in range(100):
                await trio.sleep(0.03)
                jobs.append(await queue.enqueue("t", i))
        leftover = []
        while True:
            try:
                leftover.append((await queue.dequeue(["t"], timeout=0)).id)
            except DequeueTimeoutError:
                break
        assert sorted(taken + leftover) == sorted(jobs)
        assert len(set(taken)) == len(taken)


async def test_closed_queue_raises_queue_closed() -> None:
    async with actorq.open_queue() as queue:
        pass
    with pytest.raises(actorq.QueueClosedError):
        await queue.enqueue("t")


async def test_parked_dequeuer_is_told_when_the_queue_closes() -> None:
    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery, actorq.open_queue() as queue:

        async def dequeuer() -> None:
            try:
                await queue.dequeue(["t"])
            except actorq.QueueClosedError as exc:
                errors.append(exc)

        nursery.start_soon(dequeuer)
        await trio.testing.wait_all_tasks_blocked()
    assert len(errors) == 1
