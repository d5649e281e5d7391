"""``retry_job`` on every queue kind: a failed or canceled job, and its tree, back to pending.

Written against :class:`actorq.JobQueue` and the ``queue`` fixture, like the
conformance suite, so every case runs on every kind (memory, the stores,
reopened stores, PostgreSQL, remote).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio
import trio.testing

import actorq
from actorq import FinishedError, JobState, NotExistError, NotRetryableError, RunningError
from actorq._core._events import Phase
from actorq.metrics import QueueMetrics

Q = Any  # an actorq.JobQueue

ERROR = {"error": {"type": "E", "message": "boom", "traceback": None}}


async def test_a_failed_job_goes_back_to_pending_as_it_was(queue: Q) -> None:
    dep = await queue.enqueue("build")
    job_id = await queue.enqueue("test", {"n": 1}, [dep], "red", priority=5)
    build = await queue.dequeue(["build"], timeout=0)
    await queue.finish_job(build.id, "ok")
    run = await queue.dequeue(["test"], ["red"], timeout=0)
    assert await queue.requeue_or_finish_job(run.id, 1, None) is True  # one retry used
    run = await queue.dequeue(["test"], ["red"], timeout=0)
    await queue.finish_job(run.id, ERROR, failed=True)
    assert await queue.retry_job(job_id) == [job_id]
    status = await queue.job_status(job_id)
    assert status.state is JobState.PENDING
    assert (status.result, status.started, status.finished, status.retries) == (None, None, None, 0)
    assert not status.failed
    assert (status.type, status.channel, status.priority) == ("test", "red", 5)
    assert status.dependencies == [dep]
    again = await queue.dequeue(["test"], ["red"], timeout=0)
    assert (again.id, again.args, again.dependencies) == (job_id, {"n": 1}, [dep])
    assert again.token != run.token
    await queue.finish_job(again.id, "fine")
    assert (await queue.job_status(job_id)).state is JobState.FINISHED


async def test_a_job_failed_before_it_started_is_retried(queue: Q) -> None:
    job_id = await queue.enqueue("build")
    await queue.fail_job(job_id, ERROR)
    await queue.retry_job(job_id)
    stats = await queue.stats()
    assert (stats.pending, stats.failed) == (1, 0)
    assert (await queue.dequeue(["build"], timeout=0)).id == job_id


async def test_retry_brings_back_the_dependents_canceled_by_the_failure(queue: Q) -> None:
    root = await queue.enqueue("build")
    dependent = await queue.enqueue("test", None, [root], cancel_on_failed_dependency=True)
    downstream = await queue.enqueue("deploy", None, [dependent])
    plain = await queue.enqueue("report", None, [root])  # runs after a failure, by default
    build = await queue.dequeue(["build"], timeout=0)
    await queue.finish_job(build.id, ERROR, failed=True)
    assert (await queue.job_status(downstream)).failed_dependency == root
    assert (await queue.dequeue(["report"], timeout=0)).id == plain
    await queue.finish_job(plain, "read the error")

    assert await queue.retry_job(root) == [root, dependent, downstream]
    for job_id in (dependent, downstream):
        status = await queue.job_status(job_id)
        assert (status.state, status.failed_dependency) == (JobState.PENDING, None)
    # the tree waits for its root again, and runs in order once it succeeds
    with pytest.raises(actorq.DequeueTimeoutError):
        await queue.dequeue(["test", "deploy"], timeout=0)
    assert (await queue.job_status(plain)).state is JobState.FINISHED  # settled: untouched
    build = await queue.dequeue(["build"], timeout=0)
    await queue.finish_job(build.id, "ok")
    assert (await queue.dequeue(["test", "deploy"], timeout=0)).id == dependent
    await queue.finish_job(dependent, "ok")
    assert (await queue.dequeue(["test", "deploy"], timeout=0)).id == downstream


async def test_a_ready_dependent_waits_for_its_retried_dependency_again(queue: Q) -> None:
    root = await queue.enqueue("build")
    dependent = await queue.enqueue("report", None, [root])
    await queue.fail_job(root, ERROR)
    assert (await queue.stats()).ready == [("report", "", 1)]
    assert await queue.retry_job(root) == [root]
    stats = await queue.stats()
    assert (stats.ready, stats.blocked) == ([("build", "", 1)], 1)
    with pytest.raises(actorq.DequeueTimeoutError):
        await queue.dequeue(["report"], timeout=0)
    # and it is never canceled by a second failure unless it opted in
    await queue.fail_job(root, ERROR)
    assert (await queue.dequeue(["report"], timeout=0)).id == dependent


async def test_a_canceled_job_is_retried_with_the_tree_its_cancel_canceled(queue: Q) -> None:
    root = await queue.enqueue("build")
    dependent = await queue.enqueue("test", None, [root])
    run = await queue.dequeue(["build"], timeout=0)
    await queue.cancel_job(root)  # while running: its token is void
    assert await queue.retry_job(root) == [root, dependent]
    # the canceled run's token names nothing, and the job is handed out afresh
    again = await queue.dequeue(["build"], timeout=0)
    assert again.id == root
    assert again.token != run.token
    with pytest.raises(NotExistError):
        await queue.id_from_token(run.token)
    await queue.finish_job(root, "ok")
    assert (await queue.dequeue(["test"], timeout=0)).id == dependent


async def test_retry_in_other_states_raises_and_changes_nothing(queue: Q) -> None:
    pending = await queue.enqueue("a")
    with pytest.raises(NotRetryableError, match="pending"):
        await queue.retry_job(pending)
    run = await queue.dequeue(["a"], timeout=0)
    with pytest.raises(RunningError):
        await queue.retry_job(run.id)
    await queue.finish_job(run.id, "ok")
    with pytest.raises(FinishedError):
        await queue.retry_job(run.id)
    assert (await queue.job_status(run.id)).result == "ok"
    with pytest.raises(NotExistError):
        await queue.retry_job(uuid.uuid4())
    with pytest.raises(TypeError):
        await queue.retry_job("not a uuid")


async def test_a_job_that_could_not_run_is_not_retried(queue: Q) -> None:
    dep = await queue.enqueue("build")
    other = await queue.enqueue("build")
    dependent = await queue.enqueue("test", None, [dep, other], cancel_on_failed_dependency=True)
    await queue.fail_job(dep, ERROR)
    # its failed dependency still stands: retry that one instead
    with pytest.raises(NotRetryableError, match=str(dep)):
        await queue.retry_job(dependent)
    canceled = await queue.enqueue("x")
    blocked = await queue.enqueue("y", None, [canceled])
    await queue.cancel_job(blocked)
    await queue.cancel_job(canceled)
    with pytest.raises(NotRetryableError, match="canceled"):
        await queue.retry_job(blocked)
    assert (await queue.job_status(blocked)).state is JobState.CANCELED
    # both: retrying the dependency brings back what its cancel (or an earlier one) canceled
    assert await queue.retry_job(canceled) == [canceled, blocked]


async def test_a_dependent_with_another_failed_dependency_stays_canceled(queue: Q) -> None:
    first = await queue.enqueue("build")
    second = await queue.enqueue("build")
    dependent = await queue.enqueue("test", None, [first, second], cancel_on_failed_dependency=True)
    await queue.fail_job(first, ERROR)
    await queue.fail_job(second, ERROR)
    assert (await queue.job_status(dependent)).failed_dependency == first
    assert await queue.retry_job(first) == [first]
    status = await queue.job_status(dependent)
    assert (status.state, status.failed_dependency) == (JobState.CANCELED, first)


async def test_a_retried_job_takes_its_unique_key_back_unless_held(queue: Q) -> None:
    job_id = await queue.enqueue("nightly", unique_key="report")
    await queue.fail_job(job_id, ERROR)
    await queue.retry_job(job_id)
    assert await queue.enqueue("nightly", unique_key="report") == job_id  # it holds it again
    await queue.cancel_job(job_id)
    successor = await queue.enqueue("nightly", unique_key="report")
    assert successor != job_id
    with pytest.raises(NotRetryableError, match="unique key"):
        await queue.retry_job(job_id)


async def test_a_retried_job_is_not_delayed_again(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    job_id = await queue.enqueue("later", delay=60)
    await queue.fail_job(job_id, ERROR)
    await queue.retry_job(job_id)
    assert (await queue.job_status(job_id)).not_before is None
    assert (await queue.dequeue(["later"], timeout=0)).id == job_id


async def test_a_waiting_dequeuer_gets_the_retried_job(queue: Q) -> None:
    job_id = await queue.enqueue("build")
    await queue.fail_job(job_id, ERROR)
    got: list[actorq.DequeuedJob] = []

    async def take() -> None:
        got.append(await queue.dequeue(["build"]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        await queue.retry_job(job_id)
    assert [job.id for job in got] == [job_id]


async def test_the_metrics_follow_a_retried_tree() -> None:
    metrics = QueueMetrics()
    async with actorq.open_queue(metrics=metrics, maintenance=None) as queue:
        root = await queue.enqueue("build")
        dependent = await queue.enqueue("test", None, [root], cancel_on_failed_dependency=True)
        await queue.enqueue("report", None, [root])
        await queue.fail_job(root, ERROR)
        assert metrics.job_counts() == {
            ("build", ""): {Phase.FAILED: 1},
            ("test", ""): {Phase.CANCELED: 1},
            ("report", ""): {Phase.READY: 1},
        }
        assert await queue.retry_job(root) == [root, dependent]
        assert metrics.job_counts() == {
            ("build", ""): {Phase.READY: 1},
            ("test", ""): {Phase.BLOCKED: 1},
            ("report", ""): {Phase.BLOCKED: 1},
        }
        gauges = metrics.gauges
        stats = await queue.stats()
        assert gauges is not None
        assert (gauges.pending, gauges.blocked, gauges.failed, gauges.canceled) == (3, 2, 0, 0)
        assert (stats.pending, stats.blocked, stats.failed, stats.canceled) == (3, 2, 0, 0)
        assert {key: n for key, n in gauges.ready if n} == {("build", ""): 1}
