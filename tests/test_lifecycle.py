"""The job lifecycle on every queue kind: the failed state and failed dependencies.

Written against :class:`actorq.JobQueue` and the ``queue`` fixture, like the
conformance suite, so every case runs on every kind (memory, the stores,
reopened stores, PostgreSQL, remote).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import actorq
from actorq import CanceledError, JobState, NotRunningError

Q = Any  # an actorq.JobQueue

ERROR = {"error": {"type": "E", "message": "boom", "traceback": None}}


async def run_one(q: Q, job_type: str) -> actorq.DequeuedJob:
    job: actorq.DequeuedJob = await q.dequeue([job_type], timeout=0)
    return job


async def test_fail_job_settles_a_failure(queue: Q) -> None:
    job_id = await queue.enqueue("t")
    await queue.fail_job(job_id, ERROR)
    status = await queue.job_status(job_id)
    assert status.state is JobState.FAILED
    assert status.failed is True
    # upstream's fields keep their meaning: a failed job has finished
    assert status.finished is not None
    assert status.started is not None
    assert status.result == ERROR
    assert not status.canceled


async def test_a_finish_says_explicitly_that_it_is_a_failure(queue: Q) -> None:
    ok = await queue.enqueue("t")
    shaped = await queue.enqueue("t")
    bad = await queue.enqueue("t")
    await queue.finish_job((await run_one(queue, "t")).id, {"fine": True})
    # an error-shaped result alone is not a failure: the state is never guessed
    await queue.finish_job((await run_one(queue, "t")).id, ERROR)
    await queue.finish_job((await run_one(queue, "t")).id, ERROR, failed=True)
    states = [(await queue.job_status(j)).state for j in (ok, shaped, bad)]
    assert states == [JobState.FINISHED, JobState.FINISHED, JobState.FAILED]
    with pytest.raises(NotRunningError):
        await queue.finish_job(bad, ERROR, failed=True)


async def test_failed_jobs_are_listed_and_counted(queue: Q) -> None:
    a = await queue.enqueue("t")
    b = await queue.enqueue("t")
    c = await queue.enqueue("t")
    await queue.finish_job((await run_one(queue, "t")).id, None)
    await queue.finish_job((await run_one(queue, "t")).id, ERROR, failed=True)
    await queue.fail_job(c, ERROR)
    assert [j.id for j in await queue.list_jobs(state=JobState.FAILED)] == [b, c]
    assert [j.id for j in await queue.list_jobs(state="failed")] == [b, c]
    assert [j.id for j in await queue.list_jobs(state="finished")] == [a]
    assert [j.state for j in await queue.list_jobs()] == [
        JobState.FINISHED,
        JobState.FAILED,
        JobState.FAILED,
    ]
    stats = await queue.stats()
    assert (stats.finished, stats.failed, stats.jobs) == (1, 2, 3)


async def test_requeue_or_finish_can_settle_a_failure(queue: Q) -> None:
    job_id = await queue.enqueue("t")
    job = await run_one(queue, "t")
    assert await queue.requeue_or_finish_job(job.id, 1, ERROR, failed=True) is True
    assert (await queue.job_status(job_id)).state is JobState.PENDING
    job = await run_one(queue, "t")
    assert await queue.requeue_or_finish_job(job.id, 1, ERROR, failed=True) is False
    status = await queue.job_status(job_id)
    assert (status.state, status.retries, status.result) == (JobState.FAILED, 1, ERROR)


async def test_dependents_of_a_failed_job_run_by_default_and_read_its_error(queue: Q) -> None:
    dep = await queue.enqueue("build")
    dependent = await queue.enqueue("test", None, [dep])
    job = await run_one(queue, "build")
    await queue.finish_job(job.id, ERROR, failed=True)
    got = await run_one(queue, "test")
    assert got.id == dependent
    assert got.dependencies == [dep]
    assert (await queue.job_status(dep)).result == ERROR
    status = await queue.job_status(dependent)
    assert (status.state, status.failed_dependency) == (JobState.RUNNING, None)


async def test_cancel_on_failed_dependency_cancels_and_records_why(queue: Q) -> None:
    dep = await queue.enqueue("build")
    other = await queue.enqueue("build")
    dependent = await queue.enqueue("test", None, [dep, other], cancel_on_failed_dependency=True)
    downstream = await queue.enqueue("deploy", None, [dependent])
    await queue.fail_job(dep, ERROR)
    status = await queue.job_status(dependent)
    assert status.state is JobState.CANCELED
    assert status.failed_dependency == dep
    # its own pending dependents could never run either
    down = await queue.job_status(downstream)
    assert (down.state, down.failed_dependency) == (JobState.CANCELED, dep)
    # the other dependency is untouched, and nothing of the canceled tree is handed out
    assert (await queue.job_status(other)).state is JobState.PENDING
    job = await run_one(queue, "build")
    assert job.id == other
    await queue.finish_job(job.id, None)
    with pytest.raises(actorq.DequeueTimeoutError):
        await queue.dequeue(["test", "deploy"], timeout=0)
    with pytest.raises(CanceledError):
        await queue.fail_job(dependent, ERROR)


async def test_cancel_on_failed_dependency_runs_after_a_success(queue: Q) -> None:
    dep = await queue.enqueue("build")
    dependent = await queue.enqueue("test", None, [dep], cancel_on_failed_dependency=True)
    await queue.finish_job((await run_one(queue, "build")).id, ERROR)  # not a failure
    assert (await run_one(queue, "test")).id == dependent


async def test_a_job_enqueued_after_its_dependency_failed_is_canceled(queue: Q) -> None:
    dep = await queue.enqueue("build")
    await queue.fail_job(dep, ERROR)
    runs = await queue.enqueue("test", None, [dep])
    canceled = await queue.enqueue("test", None, [dep], cancel_on_failed_dependency=True)
    status = await queue.job_status(canceled)
    assert (status.state, status.failed_dependency) == (JobState.CANCELED, dep)
    assert (await run_one(queue, "test")).id == runs


async def test_enqueue_many_takes_cancel_on_failed_dependency(queue: Q) -> None:
    ids = await queue.enqueue_many(
        [
            actorq.NewJob("build"),
            actorq.NewJob("test", None, [0], cancel_on_failed_dependency=True),
            actorq.NewJob("lint", None, [0]),
        ]
    )
    await queue.fail_job(ids[0], ERROR)
    assert (await queue.job_status(ids[1])).failed_dependency == ids[0]
    assert (await queue.job_status(ids[1])).state is JobState.CANCELED
    assert (await queue.job_status(ids[2])).state is JobState.PENDING


async def test_bad_lifecycle_arguments_raise_and_change_nothing(queue: Q) -> None:
    with pytest.raises(TypeError, match="cancel_on_failed_dependency"):
        await queue.enqueue("t", None, (), "", cancel_on_failed_dependency="yes")
    with pytest.raises(TypeError, match="cancel_on_failed_dependency"):
        await queue.enqueue_many([actorq.NewJob("t", cancel_on_failed_dependency=1)])  # type: ignore[arg-type]
    assert await queue.list_jobs() == []
    await queue.enqueue("t")
    job = await run_one(queue, "t")
    with pytest.raises(TypeError, match="failed"):
        await queue.finish_job(job.id, None, failed="no")
    with pytest.raises(TypeError, match="failed"):
        await queue.requeue_or_finish_job(job.id, 0, None, failed=0)
    assert (await queue.job_status(job.id)).state is JobState.RUNNING


async def test_finish_and_dequeue_can_settle_a_failure(queue: Q) -> None:
    if not hasattr(queue, "finish_and_dequeue"):
        pytest.skip("finish_and_dequeue is an extra of LocalQueue and RemoteQueue")
    first = await queue.enqueue("t")
    second = await queue.enqueue("t")
    job = await run_one(queue, "t")
    got = await queue.finish_and_dequeue(job.id, ERROR, ["t"], timeout=0, failed=True)
    assert got.id == second
    assert (await queue.job_status(first)).state is JobState.FAILED


async def test_a_stream_finish_can_settle_a_failure(queue: Q) -> None:
    if not hasattr(queue, "open_stream"):
        pytest.skip("not a streaming queue")
    streaming: actorq.StreamingQueue = queue
    bad = await queue.enqueue("t")
    good = await queue.enqueue("t")
    async with streaming.open_stream(["t"], [""], credit=2) as stream:
        first = await stream.receive()
        second = await stream.receive()
        stream.finish(first, ERROR, failed=True)
        stream.finish(second, {"ok": True})
        await stream.wait_settled()
    assert (first.id, second.id) == (bad, good)
    assert (await queue.job_status(bad)).state is JobState.FAILED
    assert (await queue.job_status(good)).state is JobState.FINISHED


async def test_an_unknown_failed_dependency_is_none(queue: Q) -> None:
    job_id = await queue.enqueue("t")
    await queue.cancel_job(job_id)
    status = await queue.job_status(job_id)
    assert (status.state, status.failed_dependency) == (JobState.CANCELED, None)
    assert isinstance(job_id, uuid.UUID)
