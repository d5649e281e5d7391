"""Benchmark suite ``core``: the in-process queue against a bare trio round trip.

- ``round_trip``: a bare trio memory-channel request/reply round trip, the
  same shape as one queue request (a message carrying a fresh one-shot reply
  channel to a server task, which answers it). The baseline.
- ``cycle``: one job's life in-process, sequentially: enqueue, dequeue,
  finish. Three requests, so 3 round trips is the floor; the goal is <= 4.
- ``dequeue_cost``: a dequeue (plus the requeue that puts the job back, so
  the pending count stays fixed) with 10, 10k and 1M pending jobs spread over
  100 types x 100 channels. It must stay flat as pending jobs grow.
- ``dequeue_cost_lifecycle``: the same dequeue (and requeue) with the
  largest pending count of ``dequeue_cost`` made of prioritized jobs (seven
  priorities, ready) plus as many delayed jobs (not due), beside the plain
  figure of the same run: the ratio must stay within 1.5.
- ``batch_at_limits``: the scheduler actor's time for one batch at the
  limits of one request: dequeues naming the most (type, channel) pairs one
  may (``MAX_MATCH_KEYS``, 100 types x 100 channels), parked (no job is
  ready) and then withdrawn; one such request, and ``max_batch`` (1024) of
  them in one batch. Each batch is timed from posting its messages to the
  reply of a marker request posted behind them, in milliseconds.
- ``stats_cost``: ``stats()`` over 1M jobs (100k with ``--quick``) in every
  state (ready over 100 types x 100 channels, blocked, delayed, running,
  finished, failed, canceled), through the queue and in the core alone,
  beside the same run's full walk over every job (what ``stats()`` did before
  it kept its counts at every transition: the baseline). Also runnable alone:
  ``python scripts/bench_core.py --stats [--quick]``.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

import attrs
import trio
from bench import summarize, time_per_op

import actorq
from actorq._actor._scheduler import Park, Reply, Withdraw
from actorq._core._operation import MAX_MATCH_KEYS
from actorq._core._reads import recount_stats

if TYPE_CHECKING:
    from actorq._core._models import QueueStats
    from actorq._core._state import QueueState


async def _round_trip_baseline(ops: int, repeats: int) -> list[float]:
    send, receive = trio.open_memory_channel[Any](math.inf)

    async def server() -> None:
        async for payload, reply in receive:
            reply.send_nowait(payload)
            reply.close()

    async def client() -> None:
        for i in range(ops):
            reply_send, reply_receive = trio.open_memory_channel[Any](1)
            send.send_nowait((i, reply_send))
            await reply_receive.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        samples = await time_per_op(client, ops, repeats)
        nursery.cancel_scope.cancel()
    return samples


async def _cycle(ops: int, repeats: int) -> list[float]:
    async with actorq.open_queue() as queue:

        async def cycles() -> None:
            for i in range(ops):
                await queue.enqueue("build", {"n": i})
                job = await queue.dequeue(["build"], timeout=0)
                await queue.finish_job(job.id, {"ok": True})

        return await time_per_op(cycles, ops, repeats)


def _fill(state: QueueState, pending: int) -> None:
    for i in range(pending):
        state.enqueue(f"type{i % 100}", "null", (), f"chan{(i // 100) % 100}")


def _fill_lifecycle(state: QueueState, pending: int) -> None:
    # as many prioritized ready jobs as _fill makes, spread the same way, and as
    # many delayed ones that never fall due while the benchmark runs
    for i in range(pending):
        job_type, channel = f"type{i % 100}", f"chan{(i // 100) % 100}"
        state.enqueue(job_type, "null", (), channel, priority=i % 7)
        state.enqueue(job_type, "null", (), channel, delay=1e9)


async def _dequeue_cost(
    pending: int, ops: int, repeats: int, *, lifecycle: bool = False
) -> dict[str, Any]:
    async with actorq.open_queue() as queue:
        fill = _fill_lifecycle if lifecycle else _fill
        await queue._call(lambda s: fill(s, pending))
        types = ["type7", "type42"]
        channels = ["chan0", "chan3"]  # type7 on chan0 exists even with 10 pending

        async def dequeues() -> None:
            for _ in range(ops):
                job = await queue.dequeue(types, channels, timeout=0)
                await queue.requeue_or_finish_job(job.id, 1 << 30)

        # the pure core alone, without the actor round trips
        def core_loop(state: QueueState) -> None:
            for _ in range(ops):
                got = state.dequeue(tuple(types), tuple(channels))
                assert got is not None
                state.release(got.id, got.token)

        queue_samples = await time_per_op(dequeues, ops, repeats)
        core_samples = []
        for _ in range(repeats):
            start = trio.current_time()
            await queue._call(core_loop)
            core_samples.append((trio.current_time() - start) / ops)
        return {
            "pending": pending,
            "delayed": pending if lifecycle else 0,
            "queue_dequeue_plus_requeue": summarize(queue_samples),
            "core_dequeue_plus_release": summarize(core_samples),
        }


async def _batch_at_limits(requests: int, repeats: int) -> dict[str, Any]:
    side = math.isqrt(MAX_MATCH_KEYS)
    types = tuple(f"type{i}" for i in range(side))
    channels = tuple(f"chan{i}" for i in range(side))
    park: list[tuple[float, float]] = []
    withdraw: list[tuple[float, float]] = []
    async with actorq.open_queue(maintenance=None, max_batch=max(1024, requests)) as queue:
        scheduler = queue._scheduler
        # a job of another type is ready, as on a busy queue: every pair is looked up
        await queue.enqueue("other", None, (), "chan0")

        async def timed(messages: list[Any]) -> tuple[float, float]:
            # wall time, and this process's CPU time (steadier on a busy machine)
            start, cpu = time.perf_counter(), time.process_time()
            for message in messages:
                scheduler.post_nowait(message)
            await queue._call(lambda state: None)  # answered once the batch is through
            return (time.perf_counter() - start) * 1e3, (time.process_time() - cpu) * 1e3

        spread: list[int] = []
        for _ in range(repeats):
            replies = [Reply() for _ in range(requests)]
            batches = scheduler.batches
            park.append(await timed([Park(None, types, channels, None, r) for r in replies]))
            assert scheduler.state.waiter_count == requests
            withdraw.append(await timed([Withdraw(r) for r in replies]))
            assert scheduler.state.waiter_count == 0
            # the scheduler caps each batch's cost (BATCH_COST pairs), so maximal
            # requests spread over several batches, other messages served between
            spread.append(scheduler.batches - batches)
    return {
        "requests": requests,
        "pairs_per_request": len(types) * len(channels),
        "park_batch_ms": statistics.median(wall for wall, _ in park),
        "park_batch_cpu_ms": statistics.median(cpu for _, cpu in park),
        "withdraw_batch_ms": statistics.median(wall for wall, _ in withdraw),
        "withdraw_batch_cpu_ms": statistics.median(cpu for _, cpu in withdraw),
        "batches_both_ways": statistics.median(spread),
        "runs": repeats,
    }


def _fill_states(state: QueueState, jobs: int) -> None:
    # jobs in every state, a tenth of them each but ready (half), spread over
    # 100 types x 100 channels
    tenth = jobs // 10
    for i in range(jobs - 5 * tenth):
        state.enqueue(f"type{i % 100}", "null", (), f"chan{(i // 100) % 100}")
    for i in range(tenth):
        state.enqueue("later", "null", (), f"chan{i % 100}", delay=1e9)
    settled = [state.enqueue("work", "null", (), "") for _ in range(4 * tenth)]
    for i, job_id in enumerate(settled):
        if i % 4 == 3:
            state.cancel_job(job_id)
            continue
        got = state.dequeue(("work",), None)
        assert got is not None
        if i % 4:
            state.finish_job(got.id, "null", failed=i % 4 == 2)
    blocker = settled[0]  # still running: its dependents stay blocked
    for i in range(tenth):
        state.enqueue("after", "null", (blocker,), f"chan{i % 100}")


async def _stats_cost(jobs: int, repeats: int) -> dict[str, Any]:
    async with actorq.open_queue(maintenance=None) as queue:
        await queue._call(lambda s: _fill_states(s, jobs))
        kept: QueueStats = await queue._call(lambda s: s.stats())
        walked: QueueStats = await queue._call(recount_stats)
        assert attrs.evolve(kept, ready=sorted(kept.ready)) == walked, (kept, walked)
        calls = 200

        async def through_queue() -> None:
            for _ in range(calls):
                await queue.stats()

        def core_calls(state: QueueState) -> None:
            for _ in range(calls):
                state.stats()

        queue_samples = await time_per_op(through_queue, calls, repeats)
        core_samples = []
        walk_samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            await queue._call(core_calls)
            core_samples.append((time.perf_counter() - start) / calls)
            start = time.perf_counter()
            await queue._call(recount_stats)
            walk_samples.append(time.perf_counter() - start)
        core_us = statistics.median(core_samples) * 1e6
        walk_us = statistics.median(walk_samples) * 1e6
        return {
            "jobs": jobs,
            "ready_keys": len(kept.ready),
            "queue_stats": summarize(queue_samples),
            "core_stats": summarize(core_samples),
            "baseline_core_walk_every_job": summarize(walk_samples),
            "walk_to_kept_ratio": walk_us / max(core_us, 1e-9),
        }


async def _main(quick: bool) -> dict[str, Any]:
    ops = 2_000 if quick else 20_000
    repeats = 3 if quick else 7
    baseline = await _round_trip_baseline(ops, repeats)
    cycle = await _cycle(ops // 2, repeats)
    rt = statistics.median(baseline)
    cyc = statistics.median(cycle)
    sizes = [10, 10_000, 100_000] if quick else [10, 10_000, 1_000_000]
    costs = [await _dequeue_cost(n, ops // 4, repeats) for n in sizes]
    flat = costs[-1]["queue_dequeue_plus_requeue"]["median_us"] / max(
        costs[0]["queue_dequeue_plus_requeue"]["median_us"], 1e-9
    )
    lifecycle = await _dequeue_cost(sizes[-1], ops // 4, repeats, lifecycle=True)

    def lifecycle_ratio(key: str) -> float:
        plain: float = costs[-1][key]["median_us"]
        return float(lifecycle[key]["median_us"]) / max(plain, 1e-9)

    return {
        "round_trip": summarize(baseline),
        "cycle": summarize(cycle),
        "cycles_per_second": 1 / cyc,
        "cycle_in_round_trips": cyc / rt,
        "cycle_goal_round_trips": 4,
        "dequeue_cost": costs,
        "dequeue_cost_ratio_largest_to_smallest": flat,
        "dequeue_cost_lifecycle": lifecycle,
        "dequeue_cost_lifecycle_ratio_to_plain": {
            "queue": lifecycle_ratio("queue_dequeue_plus_requeue"),
            "core": lifecycle_ratio("core_dequeue_plus_release"),
            "bound": 1.5,
        },
        "batch_at_limits": [
            await _batch_at_limits(1, repeats),
            await _batch_at_limits(1024, 1 if quick else 3),
        ],
        "stats_cost": await _stats_cost(sizes[-1], repeats),
    }


def run(quick: bool) -> dict[str, Any]:
    return trio.run(_main, quick)


if __name__ == "__main__":
    # the stats section alone: python scripts/bench_core.py --stats [--quick]
    if "--stats" not in sys.argv[1:]:
        sys.exit("usage: python scripts/bench_core.py --stats [--quick] (every section: bench.py)")
    quick = "--quick" in sys.argv[1:]
    figures = trio.run(_stats_cost, 100_000 if quick else 1_000_000, 3 if quick else 7)
    print(json.dumps({"stats_cost": figures}, indent=2))
