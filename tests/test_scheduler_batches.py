"""A scheduler batch takes on bounded work: heavy dequeues close their batch."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import actorq
from actorq._actor._scheduler import BATCH_COST, Call, Park, Reply, Withdraw


async def test_dequeues_naming_many_pairs_are_spread_over_batches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    types = tuple(f"t{n}" for n in range(100))
    channels = tuple(f"c{n}" for n in range(100))  # 10,000 pairs: the most a dequeue may name
    assert 2 * len(types) * len(channels) == BATCH_COST
    async with actorq.open_queue(maintenance=None) as queue:
        scheduler = queue._scheduler
        await trio.testing.wait_all_tasks_blocked()
        batches, messages = scheduler.batches, scheduler.messages
        parked = [Reply() for _ in range(6)]
        for reply in parked:
            scheduler.post_nowait(Park(None, types, channels, None, reply))
        light = Reply()
        scheduler.post_nowait(Call(lambda state: state.stats(), light))
        stats = await light.wait()
        assert stats.waiting_dequeuers == 6
        # all seven were waiting at once; two heavy ones fill a batch, so the
        # actor committed and answered three times before the light one
        assert (scheduler.batches - batches, scheduler.messages - messages) == (4, 7)
        for reply in parked:
            reply.abandon()
            scheduler.post_nowait(Withdraw(reply))
        done = Reply()
        scheduler.post_nowait(Call(lambda state: state.waiter_count, done))
        assert await done.wait() == 0


async def test_every_waiter_hears_the_queue_closed_on_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # one outcome shared by every parked reply could be unwrapped only once:
    # the second waiter got outcome's AlreadyUsedError instead
    errors: list[BaseException] = []

    async def wait(queue: actorq.LocalQueue) -> None:
        try:
            await queue.dequeue(["t"])
        except BaseException as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery, actorq.open_queue() as queue:
        for _ in range(3):
            nursery.start_soon(wait, queue)
        await trio.testing.wait_all_tasks_blocked()
    assert [type(e) for e in errors] == [actorq.QueueClosedError] * 3


class SlowStore(actorq.MemoryStore):
    """A store whose commits take a second each, and that records them."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[float, float, int]] = []  # (start, end, job records)

    async def commit(self, changes: Any) -> None:
        start = trio.current_time()
        await trio.sleep(1)
        await super().commit(changes)
        self.log.append((start, trio.current_time(), len(changes.jobs)))


async def test_the_next_batch_is_applied_while_one_commits_and_answered_after_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = SlowStore()
    answered: dict[str, float] = {}
    async with actorq.open_queue(store, maintenance=None) as queue:
        start = trio.current_time()

        async def enqueue(name: str, delay: float) -> None:
            await trio.sleep(delay)
            await queue.enqueue(name)
            answered[name] = trio.current_time() - start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(enqueue, "first", 0)
            nursery.start_soon(enqueue, "second", 0.5)  # arrives while "first" commits
            nursery.start_soon(enqueue, "third", 0.6)
        assert [(round(a - start, 1), round(b - start, 1), n) for a, b, n in store.log] == [
            (0.0, 1.0, 1),
            (1.0, 2.0, 2),  # applied in memory at 0.5 and 0.6, committed together next
        ]
        # no reply before the commit of what it acknowledges
        assert answered == pytest.approx({"first": 1.0, "second": 2.0, "third": 2.0}, abs=0.01)
        assert len(await queue.list_jobs()) == 3


async def test_a_failed_commit_fails_the_batch_applied_behind_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class FailSecond(SlowStore):
        async def commit(self, changes: Any) -> None:
            if self.log:
                await trio.sleep(1)
                raise OSError("disk gone")
            await super().commit(changes)

    errors: list[BaseException] = []
    with pytest.raises(actorq.JobQueueError):
        async with actorq.open_queue(FailSecond(), maintenance=None) as queue:

            async def enqueue(delay: float) -> None:
                await trio.sleep(delay)
                try:
                    await queue.enqueue("t")
                except actorq.QueueClosedError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                for delay in (0, 0.5, 1.2):
                    nursery.start_soon(enqueue, delay)
    # the second commit failed: its request and the one applied behind it both fail
    assert len(errors) == 2


async def test_a_queue_can_take_fewer_pairs_per_dequeue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(ValueError, match="max_match_keys"):
        async with actorq.open_queue(max_match_keys=10_001):
            pass
    async with actorq.open_queue(max_match_keys=6) as queue:
        await queue.enqueue("a", channel="x")
        with pytest.raises(ValueError, match="this queue's 6"):
            await queue.dequeue(["a", "b", "c", "d"], ["x", "y"], timeout=0)
        with pytest.raises(ValueError, match="this queue's 6"):
            async with queue.open_stream(["a", "b", "c", "d"], ["x", "y"]):
                pass
        job = await queue.dequeue(["a", "b", "c"], ["x", "y"], timeout=0)
        assert job.type == "a"


class _CountingSink:
    """A connection's outbox, as the server keeps one: what each flush found queued."""

    def __init__(self) -> None:
        self.queued: list[str] = []
        self.flushes: list[list[str]] = []

    def flush(self) -> None:
        self.flushes.append(self.queued)
        self.queued = []


async def test_a_sink_is_flushed_once_per_round_after_every_delivery_in_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The server answers from the actor's task and writes what a round queued
    # in one go: the actor must flush each sink after the round's last
    # delivery, once, and before it waits for anything.
    from actorq._actor._scheduler import Callback

    sink = _CountingSink()

    def answer(tag: str) -> Callback:
        def fn(got: Any) -> bool:
            sink.queued.append(f"{tag}={got.unwrap()}")
            return True

        return Callback(fn, sink)

    async with actorq.open_queue(maintenance=None) as queue:
        scheduler = queue._scheduler
        await trio.testing.wait_all_tasks_blocked()
        for tag in "abc":  # posted together: applied and answered in one round
            scheduler.post_nowait(Call(lambda state: state.stats().pending, answer(tag)))
        await trio.testing.wait_all_tasks_blocked()
        assert sink.flushes == [["a=0", "b=0", "c=0"]]
        scheduler.post_nowait(Call(lambda state: 1, answer("d")))
        await trio.testing.wait_all_tasks_blocked()
        assert sink.flushes == [["a=0", "b=0", "c=0"], ["d=1"]]
        assert sink.queued == []


async def test_connections_are_flushed_in_the_order_the_round_delivered_to_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # One round answers an enqueue (the producer's connection) and pushes the
    # job it made ready to a stream (a worker's connection). The reply is
    # delivered first, so the producer's connection is written first: each
    # write wakes its reader, which on loopback runs on the writer's CPU and
    # preempts it, so the connection written second waits for the first
    # one's whole cycle. Pushing first took 15% off the enqueue-to-start
    # latency but doubled the producer's wait for its reply (docs/design.md,
    # "Replies before pushes, on purpose").
    from actorq._actor._scheduler import Callback, Subscribe, Subscription
    from actorq._core._ops import Dequeue, Enqueue

    flushed: list[str] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name
            self.queued: list[str] = []

        def flush(self) -> None:
            if self.queued:
                flushed.append(f"{self.name}:{','.join(self.queued)}")
            self.queued = []

    producer, worker = Named("producer"), Named("worker")

    class Stream(Subscription):
        sink = worker

        def push(self, jobs: list[Any]) -> bool:
            worker.queued.extend(f"job {job.type}" for job in jobs)
            return True

    def acknowledge(got: Any) -> bool:
        producer.queued.append(f"enqueued {got.unwrap() is not None}")
        return True

    async with actorq.open_queue(maintenance=None) as queue:
        scheduler = queue._scheduler
        opened = Reply()
        stream = Stream(Dequeue(job_types=("t",), channels=("",)).checked(), credit=2)
        scheduler.post_nowait(Subscribe(stream, opened))
        assert await opened.wait() is None
        queue.submit(Enqueue(job_type="t"), Callback(acknowledge, producer))
        await trio.testing.wait_all_tasks_blocked()
        assert flushed == ["producer:enqueued True", "worker:job t"]
