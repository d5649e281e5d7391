"""``open_queue()`` runs upstream's heartbeat reaper unless told not to."""

from __future__ import annotations

import trio
import trio.testing

import actorq


async def test_a_silent_job_is_requeued_then_failed_by_default(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue() as queue:
        job_id = await queue.enqueue("t")
        for attempt in range(3):
            job = await queue.dequeue(["t"], timeout=0)
            assert job.id == job_id
            await trio.sleep(100)
            await queue.refresh_heartbeat(job.token)  # a live worker keeps its job
            await trio.sleep(100)
            assert (await queue.job_status(job_id)).state is actorq.JobState.RUNNING
            await trio.sleep(60)  # silent for 160 s: past the 120 s timeout and a 30 s tick
            status = await queue.job_status(job_id)
            if attempt < 2:
                assert status.state is actorq.JobState.PENDING
                assert status.retries == attempt + 1
        assert status.state is actorq.JobState.FAILED
        assert status.retries == 2
        assert "heartbeat" in str(status.result)


async def test_maintenance_none_leaves_silent_jobs_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue(maintenance=None) as queue:
        job_id = await queue.enqueue("t")
        job = await queue.dequeue(["t"], timeout=0)
        await trio.sleep(3600)
        assert (await queue.job_status(job_id)).state is actorq.JobState.RUNNING
        assert await queue.heartbeats(3600) == [job.token]
