"""The conformance suite: the behaviour every JobQueue implementation must have.

Written against :class:`actorq.JobQueue` and the ``queue`` fixture only, so it
runs unchanged against every implementation in ``conftest.QUEUE_KINDS``. It
covers every case of osbuild-composer's ``jobqueuetest`` and the semantics
actorq adds on top (transitive cancel, token voiding, delete rules, ...).
Time-dependent cases run under trio's MockClock.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import actorq
from actorq import (
    ActiveJobsError,
    CanceledError,
    DequeueTimeoutError,
    FinishedError,
    HasDependentsError,
    NotExistError,
    NotPendingError,
    NotRunningError,
    RunningError,
    WorkerNotExistError,
)

Q = Any  # an actorq.JobQueue


async def push(
    q: Q, job_type: str, args: Any = None, deps: Any = (), channel: str = ""
) -> uuid.UUID:
    job_id = await q.enqueue(job_type, args, deps, channel)
    assert isinstance(job_id, uuid.UUID)
    return job_id


async def finish_next(
    q: Q, job_type: str, result: Any = None, deps: list[uuid.UUID] | None = None
) -> uuid.UUID:
    job = await q.dequeue([job_type], [""], timeout=0)
    assert job.token
    assert sorted(job.dependencies) == sorted(deps or [])
    assert job.type == job_type
    assert await q.requeue_or_finish_job(job.id, 0, result) is False
    job_id: uuid.UUID = job.id
    return job_id


def test_queues_implement_the_protocol() -> None:
    assert issubclass(actorq.LocalQueue, actorq.JobQueue)


async def test_is_a_job_queue(queue: Q) -> None:
    assert isinstance(queue, actorq.JobQueue)


# ------------------------------------------------------------------ errors


async def test_errors(queue: Q) -> None:
    # not serializable to JSON: nothing is enqueued
    with pytest.raises(TypeError):
        await queue.enqueue("test", trio.open_memory_channel)
    with pytest.raises(TypeError):
        await queue.enqueue("test", {"x": object()})
    with pytest.raises(TypeError):
        await queue.enqueue("test", float("nan"))
    assert await queue.all_root_job_ids() == []

    # invalid dependency
    with pytest.raises(NotExistError):
        await queue.enqueue("test", "arg0", [uuid.uuid4()])
    assert await queue.all_root_job_ids() == []

    # the token is removed once the job finishes
    await push(queue, "octopus")
    job = await queue.dequeue(["octopus"], [""])
    assert await queue.id_from_token(job.token) == job.id
    assert await queue.requeue_or_finish_job(job.id, 0, {}) is False
    with pytest.raises(NotExistError):
        await queue.id_from_token(job.token)


async def test_bad_arguments_raise_and_change_nothing(queue: Q) -> None:
    with pytest.raises(ValueError, match="job_type must not be empty"):
        await queue.enqueue("", None)
    with pytest.raises(TypeError):
        await queue.enqueue(7, None)
    with pytest.raises(TypeError):
        await queue.enqueue("t", None, ["not-a-uuid"])
    with pytest.raises(TypeError):
        await queue.enqueue("t", None, (), channel=3)
    job_id = await push(queue, "t")
    with pytest.raises(TypeError):
        await queue.dequeue("t", timeout=0)  # a bare string, not a sequence of types
    with pytest.raises(TypeError):
        await queue.dequeue(["t"], "", timeout=0)
    with pytest.raises(TypeError):
        await queue.dequeue([1], timeout=0)
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        await queue.dequeue(["t"], timeout=-1)
    with pytest.raises(TypeError):
        await queue.job_status(str(job_id))
    with pytest.raises(TypeError):
        await queue.dequeue_by_id(str(job_id))
    job = await queue.dequeue(["t"], timeout=0)
    with pytest.raises(ValueError, match="max_retries must be >= 0"):
        await queue.requeue_or_finish_job(job.id, -1)
    with pytest.raises(TypeError):
        await queue.requeue_or_finish_job(job.id, "2")
    with pytest.raises(TypeError):
        await queue.finish_job(job.id, object())
    # none of it changed the job
    assert (await queue.job_status(job.id)).state is actorq.JobState.RUNNING
    await queue.finish_job(job.id, None)


async def test_unknown_ids(queue: Q) -> None:
    unknown = uuid.uuid4()
    for call in (
        queue.job_status,
        queue.job,
        queue.cancel_job,
        queue.finish_job,
        queue.delete_job,
        queue.dequeue_by_id,
        queue.id_from_token,
        queue.refresh_heartbeat,
    ):
        with pytest.raises(NotExistError):
            await call(unknown)
    with pytest.raises(NotExistError):
        await queue.requeue_or_finish_job(unknown, 1)
    with pytest.raises(NotExistError):
        await queue.fail_job(unknown, {})
    with pytest.raises(NotExistError):
        await queue.update_job_result(unknown, {})
    with pytest.raises(WorkerNotExistError):
        await queue.update_worker_status(unknown)
    with pytest.raises(WorkerNotExistError):
        await queue.delete_worker(unknown)


async def test_every_error_is_a_job_queue_error() -> None:
    for cls in (
        NotExistError,
        NotPendingError,
        NotRunningError,
        CanceledError,
        DequeueTimeoutError,
        RunningError,
        FinishedError,
        WorkerNotExistError,
        ActiveJobsError,
    ):
        assert issubclass(cls, actorq.JobQueueError)
    assert issubclass(DequeueTimeoutError, TimeoutError)


# -------------------------------------------------------------------- args


@attrs.frozen
class Argument:
    i: int
    s: str


@dataclasses.dataclass
class DataArgument:
    n: int
    tags: list[str]


async def test_args(queue: Q) -> None:
    one_args = Argument(7, "🐠")
    one = await push(queue, "fish", one_args, (), "toucan")
    info = await queue.job(one)
    assert actorq.structure(info.args, Argument) == one_args
    assert info.dependencies == []
    assert info.channel == "toucan"
    assert info.type == "fish"

    two_args = Argument(42, "🐙")
    two = await push(queue, "octopus", two_args, (), "kingfisher")
    info = await queue.job(two)
    assert actorq.structure(info.args, Argument) == two_args
    assert (info.type, info.channel) == ("octopus", "kingfisher")

    job = await queue.dequeue(["octopus"], ["kingfisher"])
    assert job.id == two
    assert job.token
    assert job.dependencies == []
    assert job.type == "octopus"
    assert job.channel == "kingfisher"
    assert actorq.structure(job.args, Argument) == two_args
    info = await queue.job(job.id)
    assert info.args == job.args
    assert info.dependencies == job.dependencies
    assert info.channel == "kingfisher"

    job = await queue.dequeue(["fish"], ["toucan"])
    assert job.id == one
    assert actorq.structure(job.args, Argument) == one_args
    assert job.args == {"i": 7, "s": "🐠"}

    with pytest.raises(NotExistError):
        await queue.job(uuid.uuid4())


async def test_args_are_json_values_frozen_at_enqueue(queue: Q) -> None:
    args: dict[str, Any] = {"list": [1, 2.5, None, True], "nested": {"a": "b"}, "text": "\u0000x"}
    job_id = await push(queue, "t", args)
    args["list"].append("changed later")
    job = await queue.dequeue(["t"], timeout=0)
    assert job.args == {"list": [1, 2.5, None, True], "nested": {"a": "b"}, "text": "\u0000x"}
    assert job.id == job_id
    data = DataArgument(3, ["x"])
    other = await push(queue, "t", data)
    assert (await queue.job(other)).args == {"n": 3, "tags": ["x"]}
    assert actorq.structure((await queue.job(other)).args, DataArgument) == data


async def test_null_args(queue: Q) -> None:
    await push(queue, "t")
    job = await queue.dequeue(["t"], timeout=0)
    assert job.args is None


async def test_escaped_null_bytes(queue: Q) -> None:
    await push(queue, "octopus")
    job = await queue.dequeue(["octopus"], [""])
    result = {"logs": {"blegh\u0000": "\u0000"}}
    assert await queue.requeue_or_finish_job(job.id, 0, result) is False
    assert (await queue.job_status(job.id)).result == result


# ------------------------------------------------------------------ cancel


async def test_cancel(queue: Q) -> None:
    with pytest.raises(NotExistError):
        await queue.cancel_job(uuid.uuid4())

    # a pending job
    pending = await push(queue, "clownfish")
    await queue.cancel_job(pending)
    status = await queue.job_status(pending)
    assert status.type == "clownfish"
    assert status.canceled
    assert status.result is None
    with pytest.raises(CanceledError):
        await queue.requeue_or_finish_job(pending, 0, {})

    # a running job; the canceled pending one above must not be handed out
    running = await push(queue, "clownfish")
    job = await queue.dequeue(["clownfish"], [""])
    assert job.id == running
    assert job.args is None
    await queue.cancel_job(running)
    status = await queue.job_status(running)
    assert status.canceled
    assert status.result is None
    with pytest.raises(CanceledError):
        await queue.requeue_or_finish_job(running, 0, {})
    with pytest.raises(CanceledError):
        await queue.finish_job(running, {})

    # a finished job cannot be canceled
    finished = await push(queue, "clownfish")
    job = await queue.dequeue(["clownfish"], [""])
    assert job.id == finished
    assert await queue.requeue_or_finish_job(finished, 0, {"ok": 1}) is False
    with pytest.raises(NotRunningError):
        await queue.cancel_job(finished)
    status = await queue.job_status(finished)
    assert not status.canceled
    assert status.result == {"ok": 1}


async def test_cancel_is_idempotent(queue: Q) -> None:
    job_id = await push(queue, "t")
    await queue.cancel_job(job_id)
    await queue.cancel_job(job_id)
    assert (await queue.job_status(job_id)).state is actorq.JobState.CANCELED


async def test_cancel_running_job_voids_its_token(queue: Q) -> None:
    await push(queue, "t")
    job = await queue.dequeue(["t"], timeout=0)
    assert await queue.heartbeats(0) == [job.token]
    await queue.cancel_job(job.id)
    with pytest.raises(CanceledError):
        await queue.id_from_token(job.token)
    with pytest.raises(CanceledError):
        await queue.refresh_heartbeat(job.token)
    assert await queue.heartbeats(0) == []
    with pytest.raises(CanceledError):
        await queue.update_job_result(job.id, {})


async def test_cancel_cascades_to_pending_dependents(queue: Q) -> None:
    a = await push(queue, "t")
    b = await push(queue, "t", deps=[a])
    c = await push(queue, "t", deps=[b])
    other = await push(queue, "t")
    d = await push(queue, "t", deps=[other])
    job = await queue.dequeue(["t"], timeout=0)
    assert job.id == a
    await queue.cancel_job(a)
    for job_id in (a, b, c):
        assert (await queue.job_status(job_id)).canceled
    assert not (await queue.job_status(d)).canceled
    # nothing of the canceled chain is ever handed out
    assert (await queue.dequeue(["t"], timeout=0)).id == other
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["t"], timeout=0)


# ----------------------------------------------------------------- requeue


async def test_requeue(queue: Q) -> None:
    with pytest.raises(NotExistError):
        await queue.requeue_or_finish_job(uuid.uuid4(), 1)

    job_id = await push(queue, "clownfish")
    with pytest.raises(NotRunningError):
        await queue.requeue_or_finish_job(job_id, 1)

    first = await queue.dequeue(["clownfish"], [""])
    assert first.id == job_id
    assert await queue.requeue_or_finish_job(job_id, 1) is True
    with pytest.raises(NotExistError):
        await queue.id_from_token(first.token)
    second = await queue.dequeue(["clownfish"], [""])
    assert second.id == job_id
    assert second.token != first.token
    assert second.args is None
    status = await queue.job_status(job_id)
    assert not status.canceled
    assert status.result is None
    assert status.retries == 1
    assert await queue.requeue_or_finish_job(job_id, 0, {}) is False

    with pytest.raises(NotRunningError):
        await queue.requeue_or_finish_job(job_id, 1)


async def test_requeue_limit(queue: Q) -> None:
    job_id = await push(queue, "clownfish")
    await queue.dequeue(["clownfish"], [""])
    assert await queue.requeue_or_finish_job(job_id, 1) is True
    await queue.dequeue(["clownfish"], [""])
    status = await queue.job_status(job_id)
    assert status.finished is None
    assert status.result is None
    assert await queue.requeue_or_finish_job(job_id, 1, {"r": 1}) is False
    status = await queue.job_status(job_id)
    assert status.finished is not None
    assert status.result == {"r": 1}
    assert status.retries == 1


async def test_requeued_job_keeps_its_place(queue: Q) -> None:
    first = await push(queue, "t")
    second = await push(queue, "t")
    job = await queue.dequeue(["t"], timeout=0)
    assert job.id == first
    third = await push(queue, "t")
    assert await queue.requeue_or_finish_job(first, 5) is True
    order = [(await queue.dequeue(["t"], timeout=0)).id for _ in range(3)]
    assert order == [first, second, third]


async def test_update_job_result(queue: Q) -> None:
    job_id = await push(queue, "t")
    with pytest.raises(NotRunningError):
        await queue.update_job_result(job_id, {"progress": 0})
    await queue.dequeue(["t"], timeout=0)
    await queue.update_job_result(job_id, {"progress": 50})
    status = await queue.job_status(job_id)
    assert status.result == {"progress": 50}
    assert status.finished is None
    await queue.finish_job(job_id, {"progress": 100})
    assert (await queue.job_status(job_id)).result == {"progress": 100}
    with pytest.raises(NotRunningError):
        await queue.update_job_result(job_id, {})


async def test_finish_only_running_jobs(queue: Q) -> None:
    job_id = await push(queue, "t")
    with pytest.raises(NotRunningError):
        await queue.finish_job(job_id, {})
    await queue.dequeue(["t"], timeout=0)
    await queue.finish_job(job_id, {})
    with pytest.raises(NotRunningError):
        await queue.finish_job(job_id, {})


# --------------------------------------------------------------- job types


async def test_job_types(queue: Q) -> None:
    one = await push(queue, "octopus")
    two = await push(queue, "clownfish")
    assert await finish_next(queue, "clownfish", {}) == two
    assert await finish_next(queue, "octopus", {}) == one
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["zebra"], [""], timeout=0)


async def test_dequeue_matches_any_of_several_types_oldest_first(queue: Q) -> None:
    a = await push(queue, "a")
    b = await push(queue, "b")
    c = await push(queue, "c")
    got = [(await queue.dequeue(["c", "b", "a"], timeout=0)).id for _ in range(3)]
    assert got == [a, b, c]


# ----------------------------------------------------------------- timeout


async def test_dequeue_timeout(queue: Q, autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["octopus"], [""], timeout=0.02)
    assert trio.current_time() - start == pytest.approx(0.02)
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["octopus"], [""], timeout=0)
    assert trio.current_time() - start == pytest.approx(0.02)


async def test_dequeue_timeout_hands_out_a_job_that_arrives_in_time(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    got: list[actorq.DequeuedJob] = []

    async def worker() -> None:
        got.append(await queue.dequeue(["t"], timeout=10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await trio.sleep(9)
        job_id = await push(queue, "t")
    assert [j.id for j in got] == [job_id]


async def test_timeout_zero_hands_out_a_ready_job(queue: Q) -> None:
    job_id = await push(queue, "t")
    assert (await queue.dequeue(["t"], timeout=0)).id == job_id


async def test_cancelled_dequeue_raises_cancelled(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.move_on_after(5) as scope:
        await queue.dequeue(["t"])
    assert scope.cancelled_caught
    # the withdrawn wait does not swallow the next job
    job_id = await push(queue, "t")
    assert (await queue.dequeue(["t"], timeout=0)).id == job_id


# ------------------------------------------------------------ dependencies


@pytest.mark.parametrize("finish_first", [True, False])
async def test_dependencies(queue: Q, finish_first: bool) -> None:
    one = await push(queue, "test")
    two = await push(queue, "test")
    if finish_first:
        done = {await finish_next(queue, "test", {}), await finish_next(queue, "test", {})}
        assert done == {one, two}
    j = await push(queue, "test", None, [one, two])
    assert (await queue.job_status(one)).dependents == [j]
    status = await queue.job_status(j)
    assert status.type == "test"
    assert status.queued is not None
    assert status.started is None
    assert status.finished is None
    assert not status.canceled
    assert sorted(status.dependencies) == sorted([one, two])
    assert status.dependents == []
    if not finish_first:
        # not handed out while its dependencies are unfinished
        done = {await finish_next(queue, "test", {}), await finish_next(queue, "test", {})}
        assert done == {one, two}
    assert await finish_next(queue, "test", {"r": 2}, [one, two]) == j
    status = await queue.job_status(j)
    assert status.started is not None
    assert status.finished is not None
    assert not status.canceled
    assert sorted(status.dependencies) == sorted([one, two])
    assert status.result == {"r": 2}


async def test_dependent_waits_for_every_dependency(queue: Q) -> None:
    a = await push(queue, "dep")
    b = await push(queue, "dep")
    j = await push(queue, "main", None, [a, b])
    with pytest.raises(NotPendingError):
        await queue.dequeue_by_id(j)
    ja = await queue.dequeue(["dep"], timeout=0)
    await queue.finish_job(ja.id, {})
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["main"], timeout=0)
    jb = await queue.dequeue(["dep"], timeout=0)
    await queue.finish_job(jb.id, {})
    assert (await queue.dequeue(["main"], timeout=0)).id == j


async def test_failed_dependency_counts_as_finished(queue: Q) -> None:
    a = await push(queue, "dep")
    j = await push(queue, "main", None, [a])
    await queue.fail_job(a, {"error": "boom"})
    job = await queue.dequeue(["main"], timeout=0)
    assert job.id == j
    assert job.dependencies == [a]


async def test_job_status_timestamps_are_aware_utc(queue: Q) -> None:
    before = datetime.now(UTC)
    job_id = await push(queue, "t")
    await queue.dequeue(["t"], timeout=0)
    await queue.finish_job(job_id, {})
    after = datetime.now(UTC)
    status = await queue.job_status(job_id)
    for stamp in (status.queued, status.started, status.finished):
        assert stamp is not None
        assert stamp.tzinfo is not None
        assert stamp.utcoffset() is not None
        assert stamp.utcoffset().total_seconds() == 0
        assert before <= stamp <= after
    assert status.started is not None
    assert status.finished is not None
    assert status.queued <= status.started <= status.finished


# ---------------------------------------------------------- many dequeuers


async def test_multiple_workers(queue: Q) -> None:
    got: list[actorq.DequeuedJob] = []

    async def blocked_worker() -> None:
        got.append(await queue.dequeue(["octopus"], [""]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_worker)
        await trio.testing.wait_all_tasks_blocked()
        # this dequeue is not held up by the blocked one
        clown = await push(queue, "clownfish")
        job = await queue.dequeue(["clownfish"], [""])
        assert job.id == clown
        assert job.args is None
        octo = await push(queue, "octopus")
    assert [j.id for j in got] == [octo]
    assert got[0].type == "octopus"


async def test_multiple_workers_single_job_type(queue: Q) -> None:
    got: list[uuid.UUID] = []

    async def worker() -> None:
        got.append((await queue.dequeue(["clownfish"], [""])).id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        first = await push(queue, "clownfish")
        await trio.testing.wait_all_tasks_blocked()
        second = await push(queue, "clownfish")
    assert sorted(got) == sorted([first, second])


async def test_waiters_are_served_in_arrival_order(queue: Q) -> None:
    got: dict[int, uuid.UUID] = {}

    async def worker(n: int) -> None:
        got[n] = (await queue.dequeue(["t"])).id

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(worker, n)
            await trio.testing.wait_all_tasks_blocked()
        jobs = [await push(queue, "t") for _ in range(3)]
    assert [got[n] for n in range(3)] == jobs


async def test_100_dequeuers(queue: Q) -> None:
    finished: list[uuid.UUID] = []

    async def worker() -> None:
        job = await queue.dequeue(["octopus"], [""])
        assert await queue.requeue_or_finish_job(job.id, 0, {}) is False
        finished.append(job.id)

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        # the queue keeps serving other requests
        clown = await push(queue, "clownfish")
        await queue.job_status(clown)
        assert await finish_next(queue, "clownfish", {}) == clown
        pushed = [await push(queue, "octopus") for _ in range(100)]
    assert sorted(finished) == sorted(pushed)


async def test_interleaved_types_and_channels(queue: Q) -> None:
    got: dict[tuple[str, str], list[uuid.UUID]] = {}

    async def worker(job_type: str, channel: str) -> None:
        job = await queue.dequeue([job_type], [channel])
        assert (job.type, job.channel) == (job_type, channel)
        got.setdefault((job_type, channel), []).append(job.id)

    keys = [(t, c) for t in ("a", "b", "c") for c in ("x", "y", "")]
    expected: dict[tuple[str, str], list[uuid.UUID]] = {}
    async with trio.open_nursery() as nursery:
        for key in keys:
            for _ in range(4):
                nursery.start_soon(worker, *key)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(4):
            for t, c in reversed(keys):
                expected.setdefault((t, c), []).append(await push(queue, t, None, (), c))
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in expected.items()}


# ---------------------------------------------------------------- channels


async def test_two_single_channel_dequeuers(queue: Q) -> None:
    got: dict[str, uuid.UUID] = {}

    async def worker(channel: str) -> None:
        got[channel] = (await queue.dequeue(["octopus"], [channel])).id

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker, "kingfisher")
        nursery.start_soon(worker, "toucan")
        await trio.testing.wait_all_tasks_blocked()
        one = await push(queue, "octopus", None, (), "toucan")
        two = await push(queue, "octopus", None, (), "kingfisher")
    assert got == {"toucan": one, "kingfisher": two}


async def test_one_double_channel_dequeuer(queue: Q) -> None:
    got: list[uuid.UUID] = []

    async def worker() -> None:
        for _ in range(2):
            job = await queue.dequeue(["octopus"], ["kingfisher", "toucan"])
            got.append(job.id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        one = await push(queue, "octopus", None, (), "toucan")
        await trio.testing.wait_all_tasks_blocked()
        two = await push(queue, "octopus", None, (), "kingfisher")
    assert got == [one, two]


async def test_dequeue_nonexistent_channel(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    await push(queue, "octopus", None, (), "toucan")
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["octopus"], [""], timeout=0.1)
    await queue.dequeue(["octopus"], ["toucan"])
    await push(queue, "octopus")
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["octopus"], ["toucan"], timeout=0.1)
    await queue.dequeue(["octopus"], [""])


async def test_dequeue_nil_and_empty_channels(
    queue: Q, autojump_clock: trio.testing.MockClock
) -> None:
    await push(queue, "octopus")
    await push(queue, "octopus", None, (), "toucan")
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["octopus"], [], timeout=0.1)
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["octopus"], None, timeout=0.1)
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue([], [""], timeout=0.1)
    # the default channel is ""
    job = await queue.dequeue(["octopus"], timeout=0)
    assert job.channel == ""


async def test_dequeue_any_channel(queue: Q) -> None:
    a = await push(queue, "octopus", None, (), "toucan")
    b = await push(queue, "octopus", None, (), "")
    c = await push(queue, "octopus", None, (), "kingfisher")
    await push(queue, "other", None, (), "toucan")
    got = [await queue.dequeue_any_channel(["octopus"], timeout=0) for _ in range(3)]
    assert [j.id for j in got] == [a, b, c]
    assert [j.channel for j in got] == ["toucan", "", "kingfisher"]
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue_any_channel(["octopus"], timeout=0)


async def test_dequeue_any_channel_waits(queue: Q) -> None:
    got: list[actorq.DequeuedJob] = []

    async def worker() -> None:
        got.append(await queue.dequeue_any_channel(["octopus"]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        await push(queue, "other", None, (), "somewhere")
        job_id = await push(queue, "octopus", None, (), "somewhere")
    assert [(j.id, j.channel) for j in got] == [(job_id, "somewhere")]


# -------------------------------------------------------------- heartbeats


async def test_heartbeats(queue: Q, autojump_clock: trio.testing.MockClock) -> None:
    job_id = await push(queue, "octopus")
    assert await queue.heartbeats(0) == []  # none for a queued job

    job = await queue.dequeue(["octopus"], [""])
    assert job.id == job_id
    assert job.token in await queue.heartbeats(0)
    await trio.sleep(0.05)
    assert job.token in await queue.heartbeats(0.05)
    assert await queue.heartbeats(24 * 3600) == []
    assert await queue.id_from_token(job.token) == job_id

    assert await queue.requeue_or_finish_job(job_id, 0, {}) is False
    assert await queue.heartbeats(0) == []
    with pytest.raises(NotExistError):
        await queue.id_from_token(job.token)


async def test_refresh_heartbeat(queue: Q, autojump_clock: trio.testing.MockClock) -> None:
    # (kept under the default reaper's 120 s job timeout)
    await push(queue, "t")
    await push(queue, "t")
    quiet = await queue.dequeue(["t"], timeout=0)
    busy = await queue.dequeue(["t"], timeout=0)
    await trio.sleep(50)
    await queue.refresh_heartbeat(busy.token)
    await trio.sleep(30)
    assert await queue.heartbeats(60) == [quiet.token]
    assert sorted(await queue.heartbeats(30)) == sorted([quiet.token, busy.token])
    assert await queue.heartbeats(31) == [quiet.token]
    with pytest.raises(NotExistError):
        await queue.refresh_heartbeat(uuid.uuid4())
    await queue.finish_job(busy.id, {})
    with pytest.raises(NotExistError):
        await queue.refresh_heartbeat(busy.token)


# ------------------------------------------------------------ dequeue by id


async def test_dequeue_by_id(queue: Q) -> None:
    one = await push(queue, "octopus")
    two = await push(queue, "octopus")
    job = await queue.dequeue_by_id(one)
    assert job.id == one
    assert job.token
    assert job.dependencies == []
    assert job.type == "octopus"
    assert await queue.requeue_or_finish_job(one, 0) is False
    assert await finish_next(queue, "octopus", {}) == two


async def test_dequeue_by_id_needs_finished_dependencies(queue: Q) -> None:
    one = await push(queue, "octopus")
    two = await push(queue, "octopus", None, [one])
    with pytest.raises(NotPendingError):
        await queue.dequeue_by_id(two)
    assert await finish_next(queue, "octopus", {}) == one
    assert await finish_next(queue, "octopus", {}, [one]) == two


async def test_dequeue_by_id_non_pending(queue: Q) -> None:
    one = await push(queue, "octopus")
    await queue.dequeue(["octopus"], [""])
    with pytest.raises(NotPendingError):
        await queue.dequeue_by_id(one)
    assert await queue.requeue_or_finish_job(one, 0) is False
    with pytest.raises(NotPendingError):
        await queue.dequeue_by_id(one)
    canceled = await push(queue, "octopus")
    await queue.cancel_job(canceled)
    with pytest.raises(NotPendingError):
        await queue.dequeue_by_id(canceled)


# ----------------------------------------------------------------- workers


async def test_workers(queue: Q, autojump_clock: trio.testing.MockClock) -> None:
    one = await push(queue, "octopus", None, (), "chan")
    w1 = await queue.insert_worker("chan", "x86_64")
    w2 = await queue.insert_worker("chan", "aarch64")

    workers = await queue.workers(0)
    assert len(workers) == 2
    assert {w.id for w in workers} == {w1, w2}
    assert workers[0].channel == "chan"
    assert {w.arch for w in workers} == {"x86_64", "aarch64"}
    assert await queue.workers(24 * 3600) == []

    job = await queue.dequeue(["octopus"], ["chan"], worker_id=w1)
    assert job.id == one
    with pytest.raises(ActiveJobsError):
        await queue.delete_worker(w1)
    await queue.update_worker_status(w1)
    with pytest.raises(WorkerNotExistError):
        await queue.update_worker_status(uuid.uuid4())

    assert await queue.requeue_or_finish_job(one, 0, {}) is False
    await queue.delete_worker(w1)
    await queue.delete_worker(w2)
    assert await queue.workers(0) == []


async def test_workers_older_than(queue: Q, autojump_clock: trio.testing.MockClock) -> None:
    stale = await queue.insert_worker("c", "x86_64")
    await trio.sleep(60)
    fresh = await queue.insert_worker("c", "x86_64")
    await trio.sleep(10)
    assert [w.id for w in await queue.workers(30)] == [stale]
    await queue.update_worker_status(stale)
    assert await queue.workers(30) == []
    assert {w.id for w in await queue.workers(0)} == {stale, fresh}


async def test_dequeue_with_unknown_worker(queue: Q) -> None:
    await push(queue, "t")
    with pytest.raises(WorkerNotExistError):
        await queue.dequeue(["t"], timeout=0, worker_id=uuid.uuid4())
    # the job is still there for everyone else
    await queue.dequeue(["t"], timeout=0)


async def test_canceled_job_no_longer_keeps_its_worker(queue: Q) -> None:
    w = await queue.insert_worker("", "x86_64")
    await push(queue, "t")
    job = await queue.dequeue(["t"], worker_id=w)
    await queue.cancel_job(job.id)
    await queue.delete_worker(w)


# -------------------------------------------------------------------- fail


async def test_fail(queue: Q) -> None:
    start = datetime.now(UTC)
    failed_result = {"job_error": {"id": 5, "reason": "Test timeout reason", "details": "d"}}
    with pytest.raises(NotExistError):
        await queue.fail_job(uuid.uuid4(), failed_result)

    job_id = await push(queue, "coralreef", None, (), "testchannel")
    await queue.fail_job(job_id, failed_result)
    status = await queue.job_status(job_id)
    end = datetime.now(UTC)
    assert status.result == failed_result
    assert status.channel == "testchannel"
    assert status.type == "coralreef"
    assert not status.canceled
    for stamp in (status.queued, status.started, status.finished):
        assert stamp is not None
        assert start <= stamp <= end
    with pytest.raises(FinishedError):
        await queue.fail_job(job_id, failed_result)

    running = await push(queue, "coralreef")
    await queue.dequeue(["coralreef"], timeout=0)
    with pytest.raises(RunningError):
        await queue.fail_job(running, failed_result)
    canceled = await push(queue, "coralreef")
    await queue.cancel_job(canceled)
    with pytest.raises(CanceledError):
        await queue.fail_job(canceled, failed_result)


async def test_failed_job_is_not_handed_out(queue: Q) -> None:
    job_id = await push(queue, "t")
    await queue.fail_job(job_id, {"error": "x"})
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["t"], timeout=0)


# --------------------------------------------------------- roots and delete


async def test_all_root_jobs(queue: Q) -> None:
    root1 = await push(queue, "oneRoot", None, (), "OneRootJob")
    jid1 = await push(queue, "twoDeps", None, (), "TwoDepJobs")
    jid2 = await push(queue, "twoDeps", None, (), "TwoDepJobs")
    root2 = await push(queue, "twoDeps", None, [jid1, jid2], "TwoDepJobs")
    jid3 = await push(queue, "sharedDeps", None, (), "SharedDepJobs")
    root3 = await push(queue, "sharedDeps", None, [jid1, jid3], "SharedDepJobs")
    assert sorted(await queue.all_root_job_ids()) == sorted([root1, root2, root3])


async def test_delete_job_without_dependencies(queue: Q) -> None:
    root = await push(queue, "oneRoot", None, (), "OneRootJob")
    await queue.delete_job(root)
    assert await queue.all_root_job_ids() == []
    with pytest.raises(NotExistError):
        await queue.job(root)
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["oneRoot"], ["OneRootJob"], timeout=0)


async def test_delete_job_with_shared_dependencies(queue: Q) -> None:
    jid1 = await push(queue, "twoDeps", None, (), "TwoDepJobs")
    jid2 = await push(queue, "twoDeps", None, (), "TwoDepJobs")
    root2 = await push(queue, "twoDeps", None, [jid1, jid2], "TwoDepJobs")
    jid3 = await push(queue, "sharedDeps", None, (), "SharedDepJobs")
    root3 = await push(queue, "sharedDeps", None, [jid1, jid3], "SharedDepJobs")

    await queue.delete_job(root2)  # takes jid2 along, keeps the shared jid1
    assert await queue.all_root_job_ids() == [root3]
    await queue.job(jid1)
    with pytest.raises(NotExistError):
        await queue.job(jid2)
    assert (await queue.job_status(jid1)).dependents == [root3]

    await queue.delete_job(root3)
    assert await queue.all_root_job_ids() == []
    for job_id in (root2, root3, jid1, jid2, jid3):
        with pytest.raises(NotExistError):
            await queue.job(job_id)


async def test_delete_koji_job_tree(queue: Q) -> None:
    init = await push(queue, "init", None, (), "KojiJob")
    final_jobs = [init]
    image_jobs: list[uuid.UUID] = []
    for _ in range(2):
        depsolve = await push(queue, "depsolve", None, (), "KojiJob")
        ostree = await push(queue, "ostree", None, (), "KojiJob")
        manifest = await push(queue, "manifest", None, [ostree, depsolve], "KojiJob")
        final_jobs.append(await push(queue, "osbuild", None, [init, manifest, depsolve], "KojiJob"))
        image_jobs += [depsolve, ostree, manifest]
    root = await push(queue, "final", None, final_jobs, "KojiJob")
    await queue.delete_job(root)
    assert await queue.all_root_job_ids() == []
    for job_id in [*final_jobs, *image_jobs, root]:
        with pytest.raises(NotExistError):
            await queue.job(job_id)


async def test_delete_job_rules(queue: Q) -> None:
    dep = await push(queue, "t")
    root = await push(queue, "t", None, [dep])
    with pytest.raises(HasDependentsError):
        await queue.delete_job(dep)
    job = await queue.dequeue(["t"], timeout=0)
    assert job.id == dep
    # a running dependency survives the deletion of its dependent
    await queue.delete_job(root)
    assert await queue.all_root_job_ids() == [dep]
    with pytest.raises(RunningError):
        await queue.delete_job(dep)
    await queue.finish_job(dep, {})
    await queue.delete_job(dep)
    assert await queue.all_root_job_ids() == []


async def test_delete_canceled_running_job_forgets_its_token(queue: Q) -> None:
    await push(queue, "t")
    job = await queue.dequeue(["t"], timeout=0)
    await queue.cancel_job(job.id)
    await queue.delete_job(job.id)
    with pytest.raises(NotExistError):
        await queue.id_from_token(job.token)


# ---------------------------------------------------------- listing, stats


async def test_list_jobs(queue: Q) -> None:
    a = await push(queue, "a", None, (), "x")
    b = await push(queue, "b", None, (), "y")
    c = await push(queue, "a", None, [a], "y")
    d = await push(queue, "a")
    await queue.dequeue(["b"], ["y"], timeout=0)
    await queue.cancel_job(d)
    everything = await queue.list_jobs()
    assert [j.id for j in everything] == [a, b, c, d]
    assert [j.state for j in everything] == [
        actorq.JobState.PENDING,
        actorq.JobState.RUNNING,
        actorq.JobState.PENDING,
        actorq.JobState.CANCELED,
    ]
    assert everything[2].dependencies == [a]
    assert [j.id for j in await queue.list_jobs(state=actorq.JobState.PENDING)] == [a, c]
    assert [j.id for j in await queue.list_jobs(state="running")] == [b]
    assert [j.id for j in await queue.list_jobs(job_type="a", channel="y")] == [c]
    assert [j.id for j in await queue.list_jobs(limit=2)] == [a, b]
    with pytest.raises(ValueError, match="state must be one of"):
        await queue.list_jobs(state="sleeping")


async def test_stats(queue: Q) -> None:
    a = await push(queue, "a", None, (), "x")
    await push(queue, "a", None, (), "x")
    await push(queue, "b", None, [a], "")
    await push(queue, "c")
    w = await queue.insert_worker("", "x86_64")
    job = await queue.dequeue(["c"], timeout=0, worker_id=w)
    stats = await queue.stats()
    assert stats.jobs == 4
    assert stats.pending == 3
    assert sorted(stats.ready) == [("a", "x", 2)]
    assert stats.blocked == 1
    assert stats.running == 1
    assert stats.workers == 1
    await queue.finish_job(job.id, {})
    stats = await queue.stats()
    assert (stats.running, stats.finished) == (0, 1)


async def test_a_dequeue_names_a_bounded_number_of_type_channel_pairs(queue: Q) -> None:
    await queue.enqueue("t0", None, (), "c0")
    types = [f"t{i}" for i in range(101)]
    channels = [f"c{i}" for i in range(100)]
    with pytest.raises(ValueError, match="10000 \\(type, channel\\) pairs"):
        await queue.dequeue(types, channels, timeout=0)
    with pytest.raises(ValueError, match="10000 \\(type, channel\\) pairs"):
        await queue.dequeue(types, channels, timeout=5)
    # just within the bound it is served, and nothing was taken before
    job = await queue.dequeue(types[:100], channels, timeout=0)
    assert job.type == "t0"


# ---------------------------------------------------------- enqueue_many


async def test_enqueue_many_enqueues_a_dependency_graph(queue: Q) -> None:
    outside = await push(queue, "root")
    ids = await queue.enqueue_many(
        [
            actorq.NewJob("build", {"arch": "x86_64"}, channel="c"),
            actorq.NewJob("build", {"arch": "aarch64"}, channel="c"),
            actorq.NewJob("test", None, [0, 1, outside], "c"),
            ("notify", [1, 2]),  # a plain pair: no dependencies, the call's channel
        ],
        channel="n",
    )
    assert len(ids) == len(set(ids)) == 4
    assert all(isinstance(i, uuid.UUID) for i in ids)
    status = await queue.job_status(ids[2])
    assert sorted(status.dependencies) == sorted([ids[0], ids[1], outside])
    assert (await queue.job_status(ids[0])).dependents == [ids[2]]
    info = await queue.job(ids[3])
    assert (info.type, info.args, info.channel, info.dependencies) == ("notify", [1, 2], "n", [])
    # the graph runs in dependency order
    for _ in range(2):
        job = await queue.dequeue(["build", "test"], ["c"], timeout=0)
        assert job.type == "build"
        await queue.finish_job(job.id, {"built": job.args["arch"]})
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["test"], ["c"], timeout=0)
    await finish_next(queue, "root")
    job = await queue.dequeue(["test"], ["c"], timeout=0)
    assert job.id == ids[2]
    assert sorted(job.dependencies) == sorted([ids[0], ids[1], outside])


async def test_enqueue_many_hands_a_ready_job_to_a_waiting_dequeuer(queue: Q) -> None:
    got: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def take() -> None:
            got.append(await queue.dequeue(["second"]))

        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        ids = await queue.enqueue_many([actorq.NewJob("first"), actorq.NewJob("second")])
    assert got[0].id == ids[1]


async def test_enqueue_many_is_all_or_nothing(queue: Q) -> None:
    before = await push(queue, "before")
    with pytest.raises(NotExistError):
        await queue.enqueue_many(
            [
                actorq.NewJob("a"),
                actorq.NewJob("b", dependencies=[0]),
                actorq.NewJob("c", dependencies=[1, uuid.uuid4()]),
            ]
        )
    assert await queue.all_root_job_ids() == [before]
    assert (await queue.job_status(before)).dependents == []
    with pytest.raises(DequeueTimeoutError):
        await queue.dequeue(["a", "b", "c"], timeout=0)
    assert [j.id for j in await queue.list_jobs()] == [before]


@pytest.mark.parametrize(
    ("jobs", "error"),
    [
        ([actorq.NewJob("a", dependencies=[0])], ValueError),  # itself
        ([actorq.NewJob("a"), actorq.NewJob("b", dependencies=[2])], ValueError),  # later
        ([actorq.NewJob("a"), actorq.NewJob("b", dependencies=[1])], ValueError),  # itself
        ([actorq.NewJob("a"), actorq.NewJob("b", dependencies=[-1])], ValueError),
        ([actorq.NewJob("a"), actorq.NewJob("b", dependencies=[True])], TypeError),
        ([actorq.NewJob("a"), actorq.NewJob("b", dependencies=["0"])], TypeError),  # type: ignore[list-item]
        ([actorq.NewJob("a"), actorq.NewJob("b", dependencies="0")], TypeError),  # type: ignore[arg-type]
        ([actorq.NewJob("a"), actorq.NewJob("")], ValueError),
        ([actorq.NewJob("a"), actorq.NewJob("b", channel=3)], TypeError),  # type: ignore[arg-type]
        ([actorq.NewJob("a"), actorq.NewJob("b", object())], TypeError),
        ([actorq.NewJob("a"), "b"], TypeError),
        ([actorq.NewJob("a"), ("b", None, None)], TypeError),
    ],
)
async def test_enqueue_many_refuses_bad_jobs_and_adds_none(
    queue: Q, jobs: list[Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await queue.enqueue_many(jobs)
    assert await queue.all_root_job_ids() == []


async def test_enqueue_many_with_no_jobs(queue: Q) -> None:
    assert await queue.enqueue_many([]) == []
    assert await queue.all_root_job_ids() == []


async def test_enqueue_many_a_thousand_job_chain(queue: Q) -> None:
    ids = await queue.enqueue_many(
        [actorq.NewJob("step", n, [n - 1] if n else []) for n in range(1000)]
    )
    assert await queue.all_root_job_ids() == [ids[-1]]
    stats = await queue.stats()
    assert (stats.jobs, stats.blocked, stats.ready) == (1000, 999, [("step", "", 1)])
    job = await queue.dequeue(["step"], timeout=0)
    assert (job.id, job.args) == (ids[0], 0)
    await queue.finish_job(job.id, None)
    job = await queue.dequeue(["step"], timeout=0)
    assert (job.id, job.dependencies) == (ids[1], [ids[0]])


# ------------------------------------------------------- canonical values


@pytest.mark.parametrize("big", [2**53, -(2**53), 2**63, 2**64, 10**30])
async def test_integers_json_cannot_carry_exactly_are_refused(queue: Q, big: int) -> None:
    with pytest.raises(TypeError, match=r"outside -\(2\*\*53-1\) \.\. 2\*\*53-1"):
        await queue.enqueue("t", {"n": [1, big]})
    with pytest.raises(TypeError, match=r"outside -\(2\*\*53-1\)"):
        await queue.enqueue_many([actorq.NewJob("t", big)])
    assert await queue.all_root_job_ids() == []
    await push(queue, "t")
    job = await queue.dequeue(["t"], timeout=0)
    with pytest.raises(TypeError, match=r"result holds the integer"):
        await queue.finish_job(job.id, {"n": big})
    assert (await queue.job_status(job.id)).state is actorq.JobState.RUNNING


async def test_integers_within_53_bits_are_kept_exactly(queue: Q) -> None:
    edge = [2**53 - 1, -(2**53 - 1), 0]
    job_id = await push(queue, "t", {"n": edge})
    assert (await queue.job(job_id)).args == {"n": edge}
    job = await queue.dequeue(["t"], timeout=0)
    assert job.args == {"n": edge}
    await queue.finish_job(job.id, edge)
    assert (await queue.job_status(job_id)).result == edge
