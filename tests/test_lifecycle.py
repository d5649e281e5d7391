"""The job lifecycle on every queue kind: the failed state and failed dependencies.

Written against :class:`actorq.JobQueue` and the ``queue`` fixture, like the
conformance suite, so every case runs on every kind (memory, the stores,
reopened stores, PostgreSQL, remote).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing

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


# ------------------------------------------------------------- priorities


async def test_the_highest_priority_goes_first_fifo_within_a_priority(queue: Q) -> None:
    low = await queue.enqueue("t", "low", priority=-1)
    first = await queue.enqueue("t", "first")
    high = await queue.enqueue("t", "high", priority=5)
    second = await queue.enqueue("t", "second")
    other = await queue.enqueue("u", "other", priority=9)  # a type the dequeue does not take
    order = [(await run_one(queue, "t")).id for _ in range(4)]
    assert order == [high, first, second, low]
    assert (await queue.job_status(high)).priority == 5
    assert (await queue.job_status(other)).state is JobState.PENDING


async def test_a_requeued_job_keeps_its_priority_and_place(queue: Q) -> None:
    old = await queue.enqueue("t", None, priority=1)
    await queue.enqueue("t", None, priority=1)
    await queue.enqueue("t", None, priority=0)
    job = await run_one(queue, "t")
    assert job.id == old
    assert await queue.requeue_or_finish_job(job.id, 1) is True
    assert (await run_one(queue, "t")).id == old


async def test_priority_orders_across_the_channels_of_one_dequeue(queue: Q) -> None:
    a = await queue.enqueue("t", None, (), "a")
    b = await queue.enqueue("t", None, (), "b", priority=3)
    job = await queue.dequeue(["t"], ["a", "b"], timeout=0)
    assert job.id == b
    assert (await queue.dequeue_any_channel(["t"], timeout=0)).id == a


# ----------------------------------------------------------------- delays


async def test_a_delayed_job_is_not_ready_before_its_time(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    later = await queue.enqueue("t", "later", delay=30)
    now = await queue.enqueue("t", "now")
    assert (await run_one(queue, "t")).id == now
    with pytest.raises(actorq.DequeueTimeoutError):
        await queue.dequeue(["t"], timeout=0)
    stats = await queue.stats()
    assert (stats.delayed, stats.blocked, stats.pending) == (1, 1, 1)
    status = await queue.job_status(later)
    assert status.state is JobState.PENDING
    assert status.not_before is not None
    # a waiting dequeuer gets it when it falls due: no poll, no lag (a reopened
    # queue counts what is left of the delay from the wall clock's not_before,
    # which moved on by the real time the reopen took)
    job = await queue.dequeue(["t"])
    assert job.id == later
    assert trio.current_time() - start == pytest.approx(30, abs=1)


async def test_not_before_is_a_wall_clock_time(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    past = await queue.enqueue("t", "past", not_before=datetime.now(UTC) - timedelta(hours=1))
    assert (await run_one(queue, "t")).id == past
    soon = datetime.now(UTC) + timedelta(seconds=20)
    future = await queue.enqueue("t", "future", not_before=soon)
    assert (await queue.job_status(future)).not_before == soon
    with pytest.raises(actorq.DequeueTimeoutError):
        await queue.dequeue(["t"], timeout=5)
    assert (await queue.dequeue(["t"], timeout=60)).id == future


async def test_a_delayed_dependent_waits_for_both(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    dep = await queue.enqueue("build")
    dependent = await queue.enqueue("test", None, [dep], delay=10)
    await trio.sleep(20)  # its time has come, but its dependency has not finished
    with pytest.raises(actorq.DequeueTimeoutError):
        await queue.dequeue(["test"], timeout=0)
    await queue.finish_job((await run_one(queue, "build")).id, None)
    # (a reopened queue counts the delay from the wall clock, which a MockClock
    # does not move: there it is still a few seconds off)
    assert (await queue.dequeue(["test"], timeout=11)).id == dependent
    # and the other way round: settled dependency, time still to come
    dep = await queue.enqueue("build")
    dependent = await queue.enqueue("test", None, [dep], delay=10)
    await queue.finish_job((await run_one(queue, "build")).id, None)
    with pytest.raises(actorq.DequeueTimeoutError):
        await queue.dequeue(["test"], timeout=0)
    assert (await queue.dequeue(["test"], timeout=11)).id == dependent


async def test_a_delayed_job_can_be_canceled_or_failed_before_its_time(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    canceled = await queue.enqueue("t", None, delay=10)
    failed = await queue.enqueue("t", None, delay=10)
    await queue.cancel_job(canceled)
    await queue.fail_job(failed, ERROR)
    with pytest.raises(actorq.DequeueTimeoutError):
        await queue.dequeue(["t"], timeout=30)
    with pytest.raises(actorq.NotPendingError):
        await queue.dequeue_by_id(canceled)


async def test_bad_delays_and_priorities_raise_and_change_nothing(queue: Q) -> None:
    with pytest.raises(ValueError, match="not both"):
        await queue.enqueue("t", delay=1, not_before=datetime.now(UTC))
    with pytest.raises(ValueError, match="delay must be >= 0"):
        await queue.enqueue("t", delay=-1)
    with pytest.raises(ValueError, match="finite"):
        await queue.enqueue("t", delay=float("inf"))
    with pytest.raises(ValueError, match="timezone-aware"):
        await queue.enqueue("t", not_before=datetime(2030, 1, 1))
    with pytest.raises(TypeError, match="not_before"):
        await queue.enqueue("t", not_before="2030-01-01")
    with pytest.raises(TypeError, match="priority"):
        await queue.enqueue("t", priority=1.5)
    with pytest.raises(ValueError, match="32-bit"):
        await queue.enqueue("t", priority=2**31)
    with pytest.raises(ValueError, match="unique_key"):
        await queue.enqueue("t", unique_key="")
    with pytest.raises(TypeError, match="unique_key"):
        await queue.enqueue("t", unique_key=7)
    assert await queue.list_jobs() == []


# ------------------------------------------------------------ unique keys


async def test_a_unique_key_holds_while_pending_or_running(queue: Q) -> None:
    first = await queue.enqueue("t", 1, unique_key="nightly")
    assert await queue.enqueue("t", 2, unique_key="nightly") == first
    # another channel has keys of its own
    other = await queue.enqueue("t", 3, (), "red", unique_key="nightly")
    assert other != first
    job = await run_one(queue, "t")
    assert job.id == first
    assert await queue.enqueue("t", 4, unique_key="nightly") == first  # running
    assert await queue.requeue_or_finish_job(job.id, 1) is True  # requeued: still pending
    assert await queue.enqueue("t", 5, unique_key="nightly") == first
    job = await run_one(queue, "t")
    await queue.finish_job(job.id, None)
    # settled: the key is free again
    fresh = await queue.enqueue("t", 6, unique_key="nightly")
    assert fresh != first
    assert (await queue.job(fresh)).args == 6
    assert (await queue.job_status(fresh)).unique_key == "nightly"
    assert len(await queue.list_jobs()) == 3


async def test_a_unique_key_is_freed_by_cancel_fail_and_delete(queue: Q) -> None:
    for settle in ("cancel", "fail", "delete"):
        job_id = await queue.enqueue("t", None, unique_key="k")
        if settle == "cancel":
            await queue.cancel_job(job_id)
        elif settle == "fail":
            await queue.fail_job(job_id, ERROR)
        else:
            await queue.delete_job(job_id)
        assert await queue.enqueue("t", None, unique_key="k") != job_id
        await queue.cancel_job(await queue.enqueue("t", None, unique_key="k"))


# ------------------------------------------------------------------- wait


async def test_wait_returns_once_the_job_settles(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    job_id = await queue.enqueue("t")
    seen: list[actorq.JobStatus] = []

    async def waiter() -> None:
        seen.append(await queue.wait(job_id))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(5)
        assert seen == []
        job = await run_one(queue, "t")
        await trio.sleep(5)
        assert seen == []  # running is not settled
        await queue.finish_job(job.id, {"ok": 1})
    assert [(s.state, s.result) for s in seen] == [(JobState.FINISHED, {"ok": 1})]
    # a settled job: at once, also with timeout 0
    assert (await queue.wait(job_id)).state is JobState.FINISHED
    assert (await queue.wait(job_id, timeout=0)).result == {"ok": 1}


async def test_wait_sees_failures_and_cancels(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    failed = await queue.enqueue("t")
    canceled = await queue.enqueue("t")
    async with trio.open_nursery() as nursery:

        async def settle() -> None:
            await trio.sleep(3)
            await queue.fail_job(failed, ERROR)
            await queue.cancel_job(canceled)

        nursery.start_soon(settle)
        assert (await queue.wait(failed)).state is JobState.FAILED
        assert (await queue.wait(canceled, timeout=10)).state is JobState.CANCELED


async def test_wait_times_out_and_leaves_nothing_behind(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    job_id = await queue.enqueue("t")
    start = trio.current_time()
    with pytest.raises(actorq.WaitTimeoutError) as caught:
        await queue.wait(job_id, timeout=7)
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, actorq.JobQueueError)
    assert trio.current_time() - start == pytest.approx(7)
    with pytest.raises(actorq.WaitTimeoutError):
        await queue.wait(job_id, timeout=0)
    with trio.move_on_after(3):
        await queue.wait(job_id)  # cancelled by the caller
    # the job goes on as before, and a later wait still works
    await queue.fail_job(job_id, ERROR)
    assert (await queue.wait(job_id, timeout=1)).state is JobState.FAILED


async def test_wait_for_an_unknown_or_deleted_job(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(actorq.NotExistError):
        await queue.wait(uuid.uuid4())
    with pytest.raises(TypeError):
        await queue.wait(str(uuid.uuid4()))
    with pytest.raises(ValueError, match="timeout"):
        await queue.wait(uuid.uuid4(), timeout=-1)
    job_id = await queue.enqueue("t")

    async def delete_later() -> None:
        await trio.sleep(2)
        await queue.delete_job(job_id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(delete_later)
        with pytest.raises(actorq.NotExistError):
            await queue.wait(job_id)


async def test_a_unique_key_is_reused_within_one_batch(queue: Q) -> None:
    # the holder deleted and its successor enqueued in one step, so in one commit
    if not isinstance(queue, actorq.LocalQueue):
        pytest.skip("a step of the actor is staged in-process")
    holder = await queue.enqueue("t", None, unique_key="k")

    def replace(state: Any) -> uuid.UUID:
        state.delete_job(holder)
        new_id: uuid.UUID = state.enqueue("t", "null", (), "", unique_key="k")
        return new_id

    successor = await queue._call(replace)
    assert [j.id for j in await queue.list_jobs()] == [successor]
    assert (await queue.job_status(successor)).unique_key == "k"
    assert await queue.enqueue("t", None, unique_key="k") == successor
