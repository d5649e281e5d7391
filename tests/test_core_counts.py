"""The core's incremental counts: ``stats()`` equals a full recount after any sequence.

``QueueState.stats`` reads counts kept at every transition (per state, delayed)
and the ready heaps' live counts, instead of walking every job. A hypothesis
state machine drives a core through random operations (enqueues with
dependencies, delays and opt-ins, dequeues, finishes, failures, requeues,
releases, cancels, deletes, retries, time passing, reopening) and checks after
each step that the counts equal a recount over every job, and that each job's
count of unsettled dependencies is what its dependencies say.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from actorq import JobQueueError, JobState
from actorq._core._reads import recount_stats
from actorq._core._state import QueueState

if TYPE_CHECKING:
    from actorq._core._models import QueueStats

TYPES = ("a", "b")
CHANNELS = ("", "x")


def ordered(stats: QueueStats) -> QueueStats:
    """``stats`` with its ready pairs sorted (``stats()`` lists them in no set order)."""
    return attrs.evolve(stats, ready=sorted(stats.ready))


class CountsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        ids = itertools.count(1)
        self.new_id = lambda: uuid.UUID(int=next(ids))
        self.core = QueueState(wall=self.wall, monotonic=lambda: self.now, new_id=self.new_id)
        self.ids: list[uuid.UUID] = []
        self.running: dict[uuid.UUID, uuid.UUID] = {}  # job id -> token

    def wall(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.now)

    def pick(self, data: st.DataObject) -> uuid.UUID:
        if not self.ids:
            return uuid.UUID(int=0)
        return data.draw(st.sampled_from(self.ids))

    def attempt(self, call: Any) -> Any:
        # an operation the state refuses changes nothing: the counts must still agree
        try:
            return call()
        except JobQueueError:
            return None

    def absorb(self) -> None:
        for _, got in self.core.take_assignments():
            assert not isinstance(got, JobQueueError)
            self.running[got.id] = got.token

    @rule(
        data=st.data(),
        job_type=st.sampled_from(TYPES),
        channel=st.sampled_from(CHANNELS),
        ndeps=st.integers(0, 2),
        delay=st.sampled_from([None, 0.0, 5.0, 50.0]),
        opt_in=st.booleans(),
        unique=st.sampled_from([None, "k"]),
    )
    def enqueue(
        self,
        data: st.DataObject,
        job_type: str,
        channel: str,
        ndeps: int,
        delay: float | None,
        opt_in: bool,
        unique: str | None,
    ) -> None:
        deps = [self.pick(data) for _ in range(ndeps)] if self.ids else []
        job_id = self.attempt(
            lambda: self.core.enqueue(
                job_type,
                "null",
                deps,
                channel,
                cancel_on_failed_dependency=opt_in,
                delay=delay,
                unique_key=unique,
            )
        )
        if job_id is not None and job_id not in self.ids:
            self.ids.append(job_id)
        self.absorb()

    @rule(types=st.sampled_from([("a",), ("b",), TYPES]), park=st.booleans())
    def dequeue(self, types: tuple[str, ...], park: bool) -> None:
        if park:
            got = self.core.add_waiter(types, None)
            if isinstance(got, int):
                return
        else:
            found = self.core.dequeue(types, None)
            if found is None:
                return
            got = found
        self.running[got.id] = got.token

    @rule(data=st.data(), failed=st.booleans())
    def finish(self, data: st.DataObject, failed: bool) -> None:
        job_id = self.pick(data)
        self.attempt(lambda: self.core.finish_job(job_id, "1", failed=failed))
        self.absorb()

    @rule(data=st.data(), delay=st.sampled_from([None, 10.0]))
    def requeue(self, data: st.DataObject, delay: float | None) -> None:
        job_id = self.pick(data)
        self.attempt(
            lambda: self.core.requeue_or_finish_job(job_id, 1, "null", failed=True, delay=delay)
        )
        self.absorb()

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        job_id = self.pick(data)
        token = self.running.get(job_id)
        if token is not None:
            self.core.release(job_id, token)
        self.absorb()

    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        job_id = self.pick(data)
        self.attempt(lambda: self.core.fail_job(job_id, "null"))
        self.absorb()

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = self.pick(data)
        self.attempt(lambda: self.core.cancel_job(job_id))

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        job_id = self.pick(data)
        self.attempt(lambda: self.core.delete_job(job_id))
        self.ids = [j for j in self.ids if j in self.core._jobs]

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        job_id = self.pick(data)
        self.attempt(lambda: self.core.retry_job(job_id))
        self.absorb()

    @rule(seconds=st.sampled_from([1.0, 10.0, 100.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.core.release_due()
        self.absorb()

    @rule()
    def reopen(self) -> None:
        jobs, workers = self.core.records()
        self.core = QueueState.restore(
            jobs, workers, wall=self.wall, monotonic=lambda: self.now, new_id=self.new_id
        )

    @invariant()
    def stats_equal_a_recount(self) -> None:
        assert ordered(self.core.stats()) == recount_stats(self.core)

    @invariant()
    def waiting_on_counts_unsettled_dependencies(self) -> None:
        jobs = self.core._jobs
        for job in jobs.values():
            unsettled = sum(1 for d in job.dependencies if jobs[d].finished is None)
            assert job.waiting_on == unsettled, job


CountsMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestCounts = CountsMachine.TestCase


def test_the_counts_keep_no_key_of_jobs_gone() -> None:
    core = QueueState(wall=lambda: datetime(2026, 1, 1, tzinfo=UTC), monotonic=lambda: 0.0)
    for i in range(1000):
        job_id = core.enqueue(f"type-{i}", "null", (), f"channel-{i}")
        if i % 2:
            got = core.dequeue((f"type-{i}",), None)
            assert got is not None
            core.finish_job(got.id, "null", failed=i % 4 == 1)
        core.delete_job(job_id)
    stats = ordered(core.stats())
    assert stats == recount_stats(core)
    assert (stats.jobs, stats.pending, stats.ready, stats.finished, stats.failed) == (
        0,
        0,
        [],
        0,
        0,
    )
    # nothing per (type, channel) is left behind: no ready heap, and the
    # per-state counts are one per state, whatever names were used
    assert core._ready == {}
    assert core._counts == [0] * len(JobState)


def test_a_delayed_dependent_of_a_retried_job_is_blocked_again() -> None:
    core = QueueState(wall=lambda: datetime(2026, 1, 1, tzinfo=UTC), monotonic=lambda: 0.0)
    root = core.enqueue("a", "null")
    core.enqueue("b", "null", [root], delay=50)
    core.fail_job(root, "null")
    assert core.stats().delayed == 1
    core.retry_job(root)
    stats = ordered(core.stats())
    assert stats == recount_stats(core)
    assert (stats.delayed, stats.blocked, stats.ready) == (0, 1, [("a", "", 1)])
