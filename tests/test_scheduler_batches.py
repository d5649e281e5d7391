"""A scheduler batch takes on bounded work: heavy dequeues close their batch."""

from __future__ import annotations

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

    async with trio.open_nursery() as nursery:
        async with actorq.open_queue() as queue:
            for _ in range(3):
                nursery.start_soon(wait, queue)
            await trio.testing.wait_all_tasks_blocked()
    assert [type(e) for e in errors] == [actorq.QueueClosedError] * 3
