"""State-change events: what the core records for each operation, and how the actor publishes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID

import attrs
import pytest
import trio
import trio.testing

import actorq
from actorq._core._errors import NotExistError, NotRunningError
from actorq._core._events import (
    Committed,
    Event,
    JobCanceled,
    JobDeleted,
    JobEnqueued,
    JobFinished,
    JobReady,
    JobReleased,
    JobRequeued,
    JobStarted,
    Phase,
    WorkerDeleted,
    WorkerSeen,
)
from actorq._core._state import QueueState
from actorq.metrics import QueueMetrics

if TYPE_CHECKING:
    from trio.testing import MockClock

    from actorq._core._records import Assignment, Changes

WALL = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_state(clock: Clock, *, track_events: bool = True) -> QueueState:
    ids = iter(range(1, 1 << 30))
    return QueueState(
        wall=lambda: WALL,
        monotonic=clock,
        new_id=lambda: UUID(int=next(ids)),
        track_events=track_events,
    )


class Ctx:
    """What the steps of the scenario remember: job ids, assignments, workers."""

    def __init__(self, state: QueueState, clock: Clock) -> None:
        self.state = state
        self.clock = clock
        self.ids: dict[str, UUID] = {}
        self.got: dict[str, Assignment] = {}

    def __getattr__(self, name: str) -> UUID:
        try:
            return self.ids[name]
        except KeyError:
            raise AttributeError(name) from None

    # Each helper returns the context, so a step chains several in one lambda.

    def enqueue(self, name: str, job_type: str, deps: Sequence[str] = (), channel: str = "") -> Ctx:
        self.ids[name] = self.state.enqueue(job_type, "null", [self.ids[d] for d in deps], channel)
        return self

    def dequeue(
        self, name: str, job_type: str, channel: str = "", worker: str | None = None
    ) -> Ctx:
        worker_id = None if worker is None else self.ids[worker]
        got = self.state.dequeue((job_type,), (channel,), worker_id)
        assert got is not None
        assert got.id == self.ids[name]
        self.got[name] = got
        return self

    def later(self, seconds: float) -> Ctx:
        self.clock.now += seconds
        return self

    def do(self, fn: Callable[..., object], *args: object) -> Ctx:
        fn(*args)
        return self

    def clear(self) -> Ctx:
        """Drop the events so far: what led up to the step is not what it tests."""
        self.state.take_events()
        return self

    def refused(self, error: type[Exception], fn: Callable[..., object], *args: object) -> Ctx:
        with pytest.raises(error):
            fn(*args)
        return self


Step = tuple[str, Callable[[Ctx], object], Callable[[Ctx], list[Event]]]

# One job's life after another, on one state; each step lists the exact events
# it records, in order. Times: the clock starts at 0 and moves only by later().
SCENARIO: list[Step] = [
    ("enqueue a ready job",
     lambda c: c.enqueue("a", "build", channel="c"),
     lambda c: [JobEnqueued(c.a, "build", "c", True)]),
    ("enqueue a job blocked on it",
     lambda c: c.enqueue("b", "test", ["a"]),
     lambda c: [JobEnqueued(c.b, "test", "", False)]),
    ("dequeue the ready job 2 s later: queue latency 2 s, no dequeuer wait",
     lambda c: c.later(2).dequeue("a", "build", "c"),
     lambda c: [JobStarted(c.a, "build", "c", None, 2.0, 0.0)]),
    ("nothing ready: a dequeue records nothing",
     lambda c: c.state.dequeue(("build",), ("c",)),
     lambda c: []),
    ("finish it 3 s later: its dependent becomes ready",
     lambda c: c.later(3).state.finish_job(c.a, '{"error":null,"ok":1}'),
     lambda c: [JobFinished(c.a, "build", "c", None, Phase.RUNNING, False, 3.0),
                JobReady(c.b, "test", "")]),
    ("register a worker",
     lambda c: c.ids.__setitem__("w", c.state.insert_worker("", "x86_64")),
     lambda c: [WorkerSeen(c.w, "", "x86_64", True)]),
    ("the worker reports",
     lambda c: c.state.update_worker_status(c.w),
     lambda c: [WorkerSeen(c.w, "", "x86_64", False)]),
    ("the worker dequeues the job 1 s after it became ready",
     lambda c: c.later(1).dequeue("b", "test", worker="w"),
     lambda c: [JobStarted(c.b, "test", "", c.w, 1.0, 0.0)]),
    ("requeue it 4 s later: ready again",
     lambda c: c.later(4).state.requeue_or_finish_job(c.b, 1, "null"),
     lambda c: [JobRequeued(c.b, "test", "", c.w, 1)]),
    ("dequeue by id 5 s later: latency counts from the requeue",
     lambda c: c.later(5).state.dequeue_by_id(c.b),
     lambda c: [JobStarted(c.b, "test", "", None, 5.0, 0.0)]),
    ("out of retries 2 s later: finished, failed",
     lambda c: c.later(2).state.requeue_or_finish_job(c.b, 1, '{"error":"boom"}', failed=True),
     lambda c: [JobFinished(c.b, "test", "", None, Phase.RUNNING, True, 2.0)]),
    ("park a dequeuer: not a change",
     lambda c: c.state.add_waiter(("deploy",), ("",)),
     lambda c: []),
    ("6 s later a job arrives and goes straight to it",
     lambda c: c.later(6).enqueue("d", "deploy"),
     lambda c: [JobEnqueued(c.d, "deploy", "", True),
                JobStarted(c.d, "deploy", "", None, 0.0, 6.0)]),
    ("its requester went away: given back",
     lambda c: c.state.release(c.d, c.state.take_assignments()[0][1].token),  # type: ignore[union-attr]
     lambda c: [JobReleased(c.d, "deploy", "", None)]),
    ("a stale release records nothing",
     lambda c: c.state.release(c.d, c.d),
     lambda c: []),
    ("cancel the ready job",
     lambda c: c.state.cancel_job(c.d),
     lambda c: [JobCanceled(c.d, "deploy", "", None, Phase.READY)]),
    ("canceling it again records nothing",
     lambda c: c.state.cancel_job(c.d),
     lambda c: []),
    ("a running job with a blocked dependent",
     lambda c: c.enqueue("e", "build").enqueue("f", "test", ["e"])
                .dequeue("e", "build", worker="w"),
     lambda c: [JobEnqueued(c.e, "build", "", True), JobEnqueued(c.f, "test", "", False),
                JobStarted(c.e, "build", "", c.w, 0.0, 0.0)]),
    ("cancel it: its dependent goes too",
     lambda c: c.state.cancel_job(c.e),
     lambda c: [JobCanceled(c.e, "build", "", c.w, Phase.RUNNING),
                JobCanceled(c.f, "test", "", None, Phase.BLOCKED)]),
    ("fail a blocked job before it starts: its dependent becomes ready",
     lambda c: c.enqueue("g", "build").dequeue("g", "build").enqueue("h", "test", ["g"])
                .enqueue("i", "deploy", ["h"]).clear()
                .state.fail_job(c.h, '"dependency failed"'),
     lambda c: [JobFinished(c.h, "test", "", None, Phase.BLOCKED, True, None),
                JobReady(c.i, "deploy", "")]),
    ("fail a ready job",
     lambda c: c.state.fail_job(c.i, "null"),
     lambda c: [JobFinished(c.i, "deploy", "", None, Phase.READY, True, None)]),
    ("delete a tree: the root, then each dependency nothing else needs",
     lambda c: c.state.delete_job(c.b),
     lambda c: [JobDeleted(c.b, "test", "", Phase.FAILED),  # it failed, out of retries
                JobDeleted(c.a, "build", "c", Phase.FINISHED)]),
    ("delete a pending job",
     lambda c: c.enqueue("j", "build").clear().state.delete_job(c.j),
     lambda c: [JobDeleted(c.j, "build", "", Phase.READY)]),
    ("delete a canceled job",
     lambda c: c.state.delete_job(c.d),
     lambda c: [JobDeleted(c.d, "deploy", "", Phase.CANCELED)]),
    ("a worker with a running job cannot be deleted: nothing recorded",
     lambda c: c.enqueue("k", "build").dequeue("k", "build", worker="w").clear()
                .refused(actorq.ActiveJobsError, c.state.delete_worker, c.w),
     lambda c: []),
    ("finish its job, then delete the worker",
     lambda c: c.do(c.state.finish_job, c.k, "null").state.delete_worker(c.w),
     lambda c: [JobFinished(c.k, "build", "", c.w, Phase.RUNNING, False, 0.0),
                WorkerDeleted(c.w)]),
    ("operations that fail record nothing",
     lambda c: c.refused(NotExistError, c.state.enqueue, "t", "null", [UUID(int=0)])
                .refused(NotRunningError, c.state.finish_job, c.i, "null")
                .refused(NotExistError, c.state.cancel_job, UUID(int=0))
                .refused(actorq.WorkerNotExistError, c.state.dequeue, ("t",), None, c.w),
     lambda c: []),
    ("reads record nothing",
     lambda c: (c.state.stats(), c.state.list_jobs(), c.state.job_status(c.g),
                c.state.heartbeats(0), c.state.workers()),
     lambda c: []),
]  # fmt: skip


@pytest.mark.parametrize("upto", range(1, len(SCENARIO) + 1), ids=[s[0] for s in SCENARIO])
def test_each_operation_records_its_events(upto: int) -> None:
    clock = Clock()
    ctx = Ctx(make_state(clock), clock)
    for name, op, expected in SCENARIO[:upto]:
        op(ctx)
        assert ctx.state.take_events() == expected(ctx), name


def test_events_accumulate_until_taken() -> None:
    clock = Clock()
    state = make_state(clock)
    a = state.enqueue("t", "null")
    b = state.enqueue("t", "null", [a])
    assert state.take_events() == [JobEnqueued(a, "t", "", True), JobEnqueued(b, "t", "", False)]
    assert state.take_events() == []


def test_an_unobserved_core_records_nothing_and_behaves_the_same() -> None:
    observed_clock, plain_clock = Clock(), Clock()
    observed = Ctx(make_state(observed_clock), observed_clock)
    plain = Ctx(make_state(plain_clock, track_events=False), plain_clock)
    for name, op, _ in SCENARIO:
        op(observed)
        op(plain)
        assert plain.state.take_events() == [], name
        assert plain.state._events is None
        assert plain.state.records() == observed.state.records(), name


def test_events_are_frozen_slotted_values() -> None:
    event = JobEnqueued(UUID(int=1), "t", "", True)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.ready = False  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
    assert event == JobEnqueued(UUID(int=1), "t", "", True)


def test_a_restored_queue_does_not_know_old_phase_times() -> None:
    clock = Clock()
    before = make_state(clock, track_events=False)
    ready = before.enqueue("t", "null")
    running = before.enqueue("t", "null")
    before.dequeue_by_id(running)
    jobs, workers = before.records()
    clock.now = 100.0
    after = QueueState.restore(jobs, workers, wall=lambda: WALL, monotonic=clock, track_events=True)
    assert after.take_events() == []  # restoring is not a change
    after.finish_job(running, "null")
    got = after.dequeue(("t",), None)
    assert got is not None
    assert after.take_events() == [
        JobFinished(running, "t", "", None, Phase.RUNNING, False, None),
        JobStarted(ready, "t", "", None, None, 0.0),
    ]
    clock.now = 103.0
    after.finish_job(ready, "null")
    assert after.take_events() == [JobFinished(ready, "t", "", None, Phase.RUNNING, False, 3.0)]


# ------------------------------------------------------------ publishing


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[Event]] = []

    def __call__(self, events: Sequence[Event]) -> None:
        self.batches.append(list(events))


async def test_the_scheduler_publishes_each_batch_then_a_commit_event(
    autojump_clock: MockClock,
) -> None:
    async with actorq.open_queue(actorq.MemoryStore(), metrics=QueueMetrics()) as q:
        recorder = Recorder()
        q._scheduler.subscribe(recorder)
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(q.enqueue, "t", i)
        assert len(recorder.batches) == 1  # the three requests arrived as one batch
        (batch,) = recorder.batches
        assert [type(e) for e in batch] == [JobEnqueued] * 3 + [Committed]
        commit = batch[-1]
        assert isinstance(commit, Committed)
        assert commit.requests == 3
        assert commit.seconds is not None
        assert commit.waiting == 0
        await q.stats()  # a read changes nothing: only the commit event
        assert recorder.batches[-1] == [Committed(1, None, 0)]


async def test_a_memory_queue_publishes_without_commit_times(autojump_clock: MockClock) -> None:
    async with actorq.open_queue(metrics=QueueMetrics()) as q:
        recorder = Recorder()
        q._scheduler.subscribe(recorder)

        async def dequeuer() -> None:
            await q.dequeue(["t"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dequeuer)
            await trio.testing.wait_all_tasks_blocked()
            assert recorder.batches == [[Committed(1, None, 1)]]  # one dequeuer parked
            job_id = await q.enqueue("t")
        started = recorder.batches[1]
        assert started[0] == JobEnqueued(job_id, "t", "", True)
        assert isinstance(started[1], JobStarted)
        assert started[1].job_id == job_id
        assert started[2] == Committed(1, None, 0)


async def test_a_failing_subscriber_is_logged_and_the_queue_goes_on(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(events: Sequence[Event]) -> None:
        raise RuntimeError("subscriber bug")

    async with actorq.open_queue(metrics=QueueMetrics()) as q:
        recorder = Recorder()
        q._scheduler.subscribe(broken)
        q._scheduler.subscribe(recorder)
        job_id = await q.enqueue("t")
        assert (await q.job_status(job_id)).state is actorq.JobState.PENDING
    assert recorder.batches[0][0] == JobEnqueued(job_id, "t", "", True)
    failures = [r for r in caplog.records if r.name == "actorq.scheduler" and r.exc_info]
    assert failures
    assert "subscriber" in failures[0].getMessage()


async def test_unsubscribed_subscribers_hear_nothing_more(autojump_clock: MockClock) -> None:
    async with actorq.open_queue(metrics=QueueMetrics()) as q:
        recorder = Recorder()
        unsubscribe = q._scheduler.subscribe(recorder)
        await q.enqueue("t")
        unsubscribe()
        unsubscribe()  # twice is harmless
        await q.enqueue("t")
    assert len(recorder.batches) == 1


class FailingStore(actorq.MemoryStore):
    """Commits until told to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    async def commit(self, changes: Changes) -> None:
        if self.fail:
            raise OSError("disk gone")
        await super().commit(changes)


async def test_events_of_a_failed_commit_are_not_published(autojump_clock: MockClock) -> None:
    store = FailingStore()
    recorder = Recorder()
    with pytest.raises(actorq.QueueClosedError) as stopped:
        async with actorq.open_queue(store, metrics=QueueMetrics()) as q:
            q._scheduler.subscribe(recorder)
            await q.enqueue("t")
            store.fail = True
            with pytest.raises(actorq.QueueClosedError):
                await q.enqueue("lost")
            await trio.sleep_forever()
    assert isinstance(stopped.value.__cause__, OSError)
    published = [e for batch in recorder.batches for e in batch]
    assert [e.job_type for e in published if isinstance(e, JobEnqueued)] == ["t"]


async def test_no_events_when_nobody_observes(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="actorq.jobs")
    caplog.set_level(logging.WARNING, logger="actorq.workers")
    async with actorq.open_queue() as q:
        recorder = Recorder()
        q._scheduler.subscribe(recorder)
        await q.enqueue("t")
        assert q._scheduler.state._events is None
    # a subscriber on an unobserved queue still hears of every batch, with no job events
    assert all(isinstance(e, Committed) for batch in recorder.batches for e in batch)
