"""Cancellation races of the in-process queue: no job is ever lost.

A dequeuer can be cancelled at the very moment the scheduler hands it a job
(trio issue 719: the job sits in the reply buffer and would be dropped with
the channel). These tests stage that moment deliberately, in both orders the
scheduler and the cancelled task can run in, and check that the job goes back
to its place with a void token.
"""

from __future__ import annotations

import uuid

import pytest
import trio
import trio.testing

import actorq
from actorq import DequeueTimeoutError


async def test_cancel_after_assign_puts_the_job_back() -> None:
    for _ in range(20):  # trio shuffles run order; cover both interleavings
        async with actorq.open_queue() as queue:
            older = await queue.enqueue("other")
            scope = trio.CancelScope()
            outcome: list[object] = []

            async def dequeuer(scope: trio.CancelScope = scope) -> None:
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


async def test_reply_waiting_in_the_buffer_is_given_back() -> None:
    # Deterministic form of the race: the scheduler delivers the job into the
    # reply buffer while the requester is blocked, then the requester's scope
    # is cancelled before it runs again. trio delivers the value first, so
    # the requester would return; we emulate the lost-wakeup variant with the
    # low-level pieces instead, exactly as the queue's abandon path sees it.
    async with actorq.open_queue() as queue:
        job_id = await queue.enqueue("t")
        send, receive = trio.open_memory_channel[object](1)
        scheduler = queue.scheduler
        from actorq._scheduler import Park  # the mailbox message a dequeue sends

        scheduler.post_nowait(Park(("t",), ("",), None, send))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        # the assignment is in the buffer; nobody will ever receive it
        got = queue._abandon(receive, send)  # type: ignore[arg-type]
        assert got is not None and got.id == job_id
        queue._give_back(got)
        await trio.testing.wait_all_tasks_blocked()
        status = await queue.job_status(job_id)
        assert status.state is actorq.JobState.PENDING
        with pytest.raises(actorq.NotExistError):
            await queue.id_from_token(got.token)
        assert (await queue.dequeue(["t"], timeout=0)).id == job_id


async def test_reply_to_a_closed_requester_is_given_back() -> None:
    async with actorq.open_queue() as queue:
        send, receive = trio.open_memory_channel[object](1)
        from actorq._scheduler import Park

        queue.scheduler.post_nowait(Park(("t",), ("",), None, send))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        receive.close()  # the requester vanished without withdrawing
        job_id = await queue.enqueue("t")
        # the scheduler could not deliver, so the job went straight back
        assert (await queue.job_status(job_id)).state is actorq.JobState.PENDING
        assert (await queue.dequeue(["t"], timeout=0)).id == job_id


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
    async with trio.open_nursery() as nursery:
        async with actorq.open_queue() as queue:

            async def dequeuer() -> None:
                try:
                    await queue.dequeue(["t"])
                except actorq.QueueClosedError as exc:
                    errors.append(exc)

            nursery.start_soon(dequeuer)
            await trio.testing.wait_all_tasks_blocked()
    assert len(errors) == 1
