"""Job streams: the queue pushes ready jobs to a consumer, up to its credit.

Run against the in-process queue (memory and SQLite) and the remote client
over the real server, through the :class:`actorq._core._streaming.StreamingQueue`
protocol, under MockClock autojump.
"""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from _kinds_remote import remote_pair

import actorq
from actorq._core._streaming import JobStream, StreamingQueue

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

KINDS = ["memory", "sqlite", "remote"]


@asynccontextmanager
async def open_kind(kind: str, tmp_path: Path) -> AsyncIterator[Any]:
    if kind == "memory":
        async with actorq.open_queue() as queue:
            yield queue
    elif kind == "sqlite":
        async with actorq.open_queue(f"sqlite:///{tmp_path / 'q.db'}") as queue:
            yield queue
    else:
        async with remote_pair() as (remote, _, _):
            yield remote


@pytest.fixture(params=KINDS)
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    async with open_kind(request.param, tmp_path) as q:
        assert isinstance(q, StreamingQueue)
        yield q


async def settle() -> None:
    # let pushes, settles and their replies travel
    for _ in range(5):
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.001)


def drain(stream: JobStream) -> list[actorq.DequeuedJob]:
    out = []
    while True:
        try:
            out.append(stream.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_jobs_arrive_oldest_first_and_never_beyond_the_credit(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    ids = [await queue.enqueue("t", n) for n in range(10)]
    async with queue.open_stream(["t"], credit=3) as stream:
        await settle()
        first = drain(stream)
        assert [job.id for job in first] == ids[:3]
        assert [job.args for job in first] == [0, 1, 2]
        stream.finish(first[0], {"done": 0})
        await settle()
        second = drain(stream)
        assert [job.id for job in second] == ids[3:4]  # one slot freed, one job more
        # credit back beyond what was handed out counts only up to that: the
        # queue never keeps more waiters for a stream than it opened with
        stream.give_credit(100)
        await settle()
        assert [job.id for job in drain(stream)] == ids[4:7]
        stream.finish(first[1], None)
        stream.finish(first[2], None)
        await settle()
        assert [job.id for job in drain(stream)] == ids[7:9]
    status = await queue.job_status(ids[0])
    assert status.result == {"done": 0}
    stats = await queue.stats()
    assert (stats.finished, stats.running) == (3, 6)


async def test_a_job_enqueued_later_is_pushed_at_once(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    async with queue.open_stream(["t"], ["a", "b"], credit=2) as stream:
        await settle()
        start = trio.current_time()
        job_id = await queue.enqueue("t", "x", channel="b")
        await queue.enqueue("t", "elsewhere", channel="c")
        got = await stream.receive()
        assert got.id == job_id
        assert trio.current_time() - start < 0.1  # no poll: pushed when it became ready


async def test_leaving_the_stream_gives_unreceived_jobs_back_with_void_tokens(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    ids = [await queue.enqueue("t", n) for n in range(3)]
    async with queue.open_stream(["t"], credit=3) as stream:
        await settle()
        taken = await stream.receive()
        assert taken.id == ids[0]
        # two more were handed to the stream and wait in it, unreceived
        tokens = [token for token in await queue.heartbeats(0) if token != taken.token]
        assert len(tokens) == 2
    await settle()
    for job_id in ids[1:]:
        assert (await queue.job_status(job_id)).state == actorq.JobState.PENDING
    for token in tokens:
        with pytest.raises(actorq.NotExistError):
            await queue.id_from_token(token)
    assert await queue.id_from_token(taken.token) == taken.id  # still running, still ours
    again = await queue.dequeue(["t"], timeout=0)
    assert again.id == ids[1]  # back in its place in the order


async def test_a_canceled_job_is_revoked_as_a_push(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    revoked: list[tuple[uuid.UUID, uuid.UUID, bool]] = []
    job_id = await queue.enqueue("t")
    other = await queue.enqueue("t")
    async with queue.open_stream(
        ["t"], credit=2, on_revoked=lambda j, t, c: revoked.append((j, t, c))
    ) as stream:
        await settle()
        jobs = drain(stream)
        await queue.cancel_job(job_id)
        await settle()
        assert revoked == [(job_id, jobs[0].token, True)]
        await queue.requeue_or_finish_job(other, 2)
        await settle()
        assert revoked[1:] == [(other, jobs[1].token, False)]
        # the consumer frees the slots of the ended runs; the requeued job comes
        # back, under a new token, and its own finish is not news
        stream.give_credit(2)
        with trio.fail_after(1):
            got = await stream.receive()
        assert got.id == other
        assert got.token != jobs[1].token
        stream.finish(got, 1)
        await settle()
        assert len(revoked) == 2


async def test_a_refused_finish_is_reported(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    refused: list[tuple[uuid.UUID, actorq.JobQueueError]] = []
    job_id = await queue.enqueue("t")
    async with queue.open_stream(
        ["t"], credit=1, on_refused=lambda j, e: refused.append((j, e))
    ) as stream:
        job = await stream.receive()
        await queue.cancel_job(job_id)
        stream.finish(job, "late")
        await settle()
    assert [(j, type(e)) for j, e in refused] == [(job_id, actorq.CanceledError)]
    assert (await queue.job_status(job_id)).state == actorq.JobState.CANCELED


async def test_a_result_that_is_not_json_raises_at_once(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    await queue.enqueue("t")
    async with queue.open_stream(["t"], credit=1) as stream:
        job = await stream.receive()
        with pytest.raises(TypeError):
            stream.finish(job, object())
        stream.finish(job, [1])
        await settle()
    assert (await queue.job_status(job.id)).result == [1]


async def test_a_dependency_chain_runs_through_one_stream(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    previous: list[uuid.UUID] = []
    ids = []
    for n in range(200):
        job_id = await queue.enqueue("t", n, dependencies=previous)
        ids.append(job_id)
        previous = [job_id]
    order = []
    async with queue.open_stream(["t"], credit=4) as stream:
        for _ in ids:
            job = await stream.receive()
            order.append(job.id)
            stream.finish(job, job.args)
        await settle()
    assert order == ids
    assert (await queue.stats()).finished == 200


async def test_an_unknown_worker_ends_the_stream(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(actorq.WorkerNotExistError):
        async with queue.open_stream(["t"], worker_id=uuid.uuid4()) as stream:
            await stream.receive()


async def test_deleting_the_worker_ends_its_stream(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    worker = await queue.insert_worker("", "x86")
    async with queue.open_stream(["t"], worker_id=worker, credit=2) as stream:
        await settle()
        await queue.delete_worker(worker)
        await queue.enqueue("t")
        with pytest.raises(actorq.WorkerNotExistError):
            await stream.receive()


async def test_bad_arguments(queue: Any, autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(ValueError, match="credit"):
        async with queue.open_stream(["t"], credit=0):
            pass
    with pytest.raises(TypeError):
        async with queue.open_stream("t", credit=1):
            pass
    with pytest.raises(TypeError):
        async with queue.open_stream(["t"], credit="2"):
            pass


async def test_two_streams_share_the_ready_jobs(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    for n in range(4):
        await queue.enqueue("t", n)
    async with (
        queue.open_stream(["t"], credit=3) as one,
        queue.open_stream(["t"], credit=3) as two,
    ):
        await settle()
        got_one, got_two = drain(one), drain(two)
        assert len(got_one) == 3  # the first opened asks first
        assert len(got_two) == 1
        assert {j.args for j in got_one + got_two} == {0, 1, 2, 3}


# ------------------------------------------------------------------ the worker on a stream


async def test_worker_runs_up_to_its_concurrency_at_once(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    worker = actorq.Worker(queue, concurrency=5)
    running = 0
    most = 0
    done = 0

    @worker.handler("t")
    async def handler(job: actorq.Job) -> int:
        nonlocal running, most, done
        running += 1
        most = max(most, running)
        await trio.sleep(1)
        running -= 1
        done += 1
        if done == 20:
            worker.shutdown()
        return int(job.args)

    ids = [await queue.enqueue("t", n) for n in range(20)]
    start = trio.current_time()
    await worker.run()
    assert most == 5
    assert trio.current_time() - start == pytest.approx(4, abs=0.1)  # 20 jobs, 5 at a time
    assert [(await queue.job_status(i)).result for i in ids] == list(range(20))
    assert await queue.workers() == []  # every finish landed before it deregistered


async def test_a_canceled_job_cancels_its_handler_at_once(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    worker = actorq.Worker(queue, heartbeat_interval=100)
    cancelled_at: list[float] = []

    @worker.handler("t")
    async def handler(job: actorq.Job) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled_at.append(trio.current_time())

    job_id = await queue.enqueue("t")
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await trio.sleep(1)
        assert (await queue.job_status(job_id)).state == actorq.JobState.RUNNING
        canceled = trio.current_time()
        await queue.cancel_job(job_id)
        await trio.sleep(1)
        assert len(cancelled_at) == 1
        assert cancelled_at[0] - canceled < 0.5  # a push, not the next heartbeat (100 s)
        worker.shutdown()
    assert (await queue.job_status(job_id)).state == actorq.JobState.CANCELED


async def test_worker_heartbeats_keep_long_jobs_and_learn_of_lost_ones(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    worker = actorq.Worker(queue, concurrency=3, heartbeat_interval=10)
    started = 0

    @worker.handler("t")
    async def handler(job: actorq.Job) -> str:
        nonlocal started
        started += 1
        await trio.sleep(60)
        return "ok"

    ids = [await queue.enqueue("t") for _ in range(3)]
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await trio.sleep(50)
        # every running job was refreshed within the last interval
        assert await queue.heartbeats(11) == []
        assert len(await queue.heartbeats(0)) == 3
        await trio.sleep(15)
        worker.shutdown()
    assert [(await queue.job_status(i)).result for i in ids] == ["ok"] * 3
    assert started == 3


async def test_worker_falls_back_to_dequeues_on_a_server_without_streams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with remote_pair() as (remote, local, _):
        remote._session.version = 1  # as if the server spoke protocol 1 only
        with pytest.raises(NotImplementedError):
            async with remote.open_stream(["t"]):
                pass
        worker = actorq.Worker(remote, concurrency=2)

        @worker.handler("t")
        async def handler(job: actorq.Job) -> int:
            if job.args == 2:
                worker.shutdown()
            return int(job.args) * 10

        ids = [await remote.enqueue("t", n) for n in (1, 2)]
        with trio.fail_after(10):
            await worker.run()
        assert [(await local.job_status(i)).result for i in ids] == [10, 20]


async def test_a_reaped_job_stops_its_handler_at_once_and_runs_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # the reaper requeues a job whose heartbeat lapsed (120 s, checked every
    # 30 s); the stream hears of it at once, long before the next refresh
    async with actorq.open_queue(maintenance=actorq.Maintenance()) as queue:
        worker = actorq.Worker(queue, heartbeat_interval=1_000)
        runs: list[tuple[str, float]] = []

        @worker.handler("t")
        async def handler(job: actorq.Job) -> str:
            if not runs:
                try:
                    runs.append(("first", trio.current_time()))
                    await trio.sleep_forever()
                finally:
                    runs.append(("cancelled", trio.current_time()))
            runs.append(("second", trio.current_time()))
            worker.shutdown()
            return "done"

        job_id = await queue.enqueue("t")
        with trio.fail_after(500):
            await worker.run()
        assert [name for name, _ in runs] == ["first", "cancelled", "second"]
        started, cancelled = runs[0][1], runs[1][1]
        assert 120 <= cancelled - started <= 151  # at the reaper's pass, not at 1,000 s
        status = await queue.job_status(job_id)
        assert (status.result, status.retries) == ("done", 1)


async def test_consume_hands_each_job_over_in_the_pushing_task(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    # What the Worker uses: jobs reach the consumer as they are pushed, with
    # no task woken to receive them; what arrived before goes first, a job
    # the consumer refuses waits for receive(), and once consume() is
    # cancelled, later jobs wait to be received too.
    first = await queue.enqueue("t", {"n": 0})
    async with queue.open_stream(["t"], credit=10) as stream:
        await settle()  # pushed before anyone consumes: buffered
        taken: list[tuple[int, trio.lowlevel.Task]] = []
        refuse = {2}

        def consumer(job: actorq.DequeuedJob) -> bool:
            if job.args["n"] in refuse:
                return False
            taken.append((job.args["n"], trio.lowlevel.current_task()))
            return True

        async with trio.open_nursery() as nursery:
            consuming = trio.lowlevel.current_task()  # never where jobs are handed over
            nursery.start_soon(stream.consume, consumer)
            await settle()
            assert [n for n, _ in taken] == [0]
            await queue.enqueue("t", {"n": 1})
            await settle()
            assert [n for n, _ in taken] == [0, 1]
            assert all(task is not consuming for _, task in taken)
            await queue.enqueue("t", {"n": 2})  # refused: it waits
            await settle()
            assert [n for n, _ in taken] == [0, 1]
            nursery.cancel_scope.cancel()
        refused = stream.receive_nowait()
        assert refused.args == {"n": 2}
        await queue.enqueue("t", {"n": 3})
        await settle()
        assert [n for n, _ in taken] == [0, 1]
        assert stream.receive_nowait().args == {"n": 3}
    # the consumer's jobs were handed over, not given back with the stream
    assert (await queue.job_status(first)).state is actorq.JobState.RUNNING


async def test_consume_raises_the_error_that_ends_the_stream(
    queue: Any, autojump_clock: trio.testing.MockClock
) -> None:
    worker = await queue.insert_worker("", "x86")
    async with queue.open_stream(["t"], worker_id=worker) as stream:
        await settle()
        await queue.delete_worker(worker)
        await queue.enqueue("t")
        with pytest.raises(actorq.WorkerNotExistError):
            await stream.consume(lambda job: True)
