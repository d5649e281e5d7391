"""No growth: the core's per-name indexes drop an entry once nothing uses its name.

A queue that sees many distinct job types and channels over its life (a type
per build, a channel per tenant) must come back to the size it started at
once those jobs are gone and those dequeuers have left, or a long-running
server grows for ever (``scripts/soak.py`` measures the server's RSS).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing

import actorq
from actorq._core._state import QueueState


def index_sizes(state: QueueState) -> dict[str, int]:
    """Every per-name and per-job index of the state, by size."""
    return {
        "jobs": len(state._jobs),
        "tokens": len(state._tokens),
        "running": len(state._running),
        "ready": len(state._ready),
        "waiters": len(state._waiters),
        "waiters_by_id": len(state._waiters_by_id),
        "assignments": len(state._assignments),
    }


ZERO = dict.fromkeys(
    ("jobs", "tokens", "running", "ready", "waiters", "waiters_by_id", "assignments"), 0
)


def new_state() -> QueueState:
    return QueueState(wall=lambda: datetime(2026, 1, 1, tzinfo=UTC), monotonic=lambda: 0.0)


def test_jobs_with_distinct_names_leave_no_index_entries_behind() -> None:
    state = new_state()
    for i in range(30_000):
        job_type, channel = f"type-{i}", f"channel-{i}"
        job_id = state.enqueue(job_type, "null", (), channel)
        if i % 3 == 0:  # deleted while still ready
            state.delete_job(job_id)
            continue
        if i % 3 == 1:  # handed out, finished, deleted
            got = state.dequeue((job_type,), (channel,))
        else:  # handed out to any channel, requeued once, then finished
            got = state.dequeue((job_type,), None)
            assert got is not None
            assert state.requeue_or_finish_job(got.id, 1, "null")
            got = state.dequeue((job_type,), (channel, "elsewhere"))
        assert got is not None
        state.finish_job(got.id, "null")
        state.delete_job(got.id)
    assert index_sizes(state) == ZERO


def test_dependency_graphs_with_distinct_names_leave_no_index_entries_behind() -> None:
    state = new_state()
    for i in range(1_000):
        ids = state.enqueue_many(
            [(f"a-{i}", "null", [], f"c-{i}"), (f"b-{i}", "null", [0], f"d-{i}")]
        )
        state.cancel_job(ids[0])  # the dependent is canceled with it, never ready
        state.delete_job(ids[1])
    assert index_sizes(state) == ZERO


def test_a_busy_name_keeps_working_after_its_entry_was_dropped() -> None:
    state = new_state()
    for _ in range(3):
        state.enqueue("build", "null")
        got = state.dequeue(("build",), ("",))
        assert got is not None
        state.finish_job(got.id, "null")
        assert len(state._ready) == 0  # emptied: dropped, and made again next time
    waiter = state.add_waiter(("build",), ("",))
    assert isinstance(waiter, int)
    job_id = state.enqueue("build", "null")
    assert [(w, a.id) for w, a in state.take_assignments()] == [(waiter, job_id)]  # type: ignore[union-attr]
    assert len(state._ready) == 0
    assert len(state._waiters) == 0


async def test_timed_out_dequeues_leave_no_index_entries_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue(maintenance=None) as queue:
        scheduler = queue._scheduler
        timed_out = 0

        async def dequeue(i: int) -> None:
            nonlocal timed_out
            with pytest.raises(actorq.DequeueTimeoutError):
                await queue.dequeue([f"type-{i}"], [f"channel-{i}", ""], timeout=1 + i % 7)
            timed_out += 1

        for first in range(0, 10_000, 1_000):  # a thousand parked at a time
            async with trio.open_nursery() as nursery:
                for i in range(first, first + 1_000):
                    nursery.start_soon(dequeue, i)
                await trio.testing.wait_all_tasks_blocked()
                assert scheduler.state.waiter_count == 1_000
        assert timed_out == 10_000
        await queue.stats()  # every withdrawal has reached the actor
        assert index_sizes(scheduler.state) == ZERO
        assert (len(scheduler._parked), len(scheduler._parked_by_waiter)) == (0, 0)
        # and the queue still serves those names
        job_id = await queue.enqueue("type-5", None, (), "channel-5")
        job: Any = await queue.dequeue(["type-5"], ["channel-5"], timeout=0)
        assert job.id == job_id
