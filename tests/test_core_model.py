"""Property tests of the pure queue state against a small reference model.

The model is deliberately naive (scan everything, every time); the core's
indexes, lazy deletion and compaction must agree with it on every result,
every error and every hand-out to a parked dequeuer.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actorq import CanceledError as Canceled
from actorq import FinishedError as Finished
from actorq import HasDependentsError as HasDependents
from actorq import JobQueueError
from actorq import NotExistError as NotExist
from actorq import NotPendingError as NotPending
from actorq import NotRunningError as NotRunning
from actorq import RunningError as Running
from actorq._core._records import Assignment
from actorq._core._state import QueueState

TYPES = ("a", "b", "c")
CHANNELS = ("", "x", "y")


@attrs.define
class MJob:
    id: uuid.UUID
    seq: int
    type: str
    channel: str
    deps: tuple[uuid.UUID, ...]
    state: str = "pending"  # pending | running | finished | failed | canceled
    token: uuid.UUID | None = None
    retries: int = 0
    result: str | None = None
    dependents: list[uuid.UUID] = attrs.field(factory=list)
    cancel_on_failed: bool = False
    failed_dependency: uuid.UUID | None = None
    priority: int = 0
    due: float = 0.0  # when its delay is over (the machine's clock)
    released: bool = True  # its delay is over and the core was told (release_due)
    unique_key: str | None = None


@attrs.define
class MWaiter:
    id: int
    types: tuple[str, ...]
    channels: tuple[str, ...] | None


SETTLED = ("finished", "failed")


class Model:
    def __init__(self) -> None:
        self.jobs: dict[uuid.UUID, MJob] = {}
        self.waiters: list[MWaiter] = []
        self.seq = itertools.count(1)
        self.handed: list[tuple[int, uuid.UUID]] = []

    def is_ready(self, job: MJob) -> bool:
        return job.state == "pending" and job.released and self.deps_settled(job)

    def deps_settled(self, job: MJob) -> bool:
        return all(self.jobs[d].state in SETTLED for d in job.deps)

    def cancel_tree(self, job: MJob, failed_dependency: uuid.UUID | None) -> None:
        stack = [job]
        while stack:
            j = stack.pop()
            if j.state in ("canceled", *SETTLED):
                continue
            j.state = "canceled"
            j.failed_dependency = failed_dependency
            stack.extend(self.jobs[d] for d in j.dependents)

    @staticmethod
    def matches(job: MJob, types: tuple[str, ...], channels: tuple[str, ...] | None) -> bool:
        return job.type in types and (channels is None or job.channel in channels)

    def oldest_ready(
        self, types: tuple[str, ...], channels: tuple[str, ...] | None, now: float | None = None
    ) -> MJob | None:
        ready = [
            j
            for j in self.jobs.values()
            if (
                self.is_ready(j)
                or (
                    now is not None
                    and j.state == "pending"
                    and j.due <= now
                    and self.deps_settled(j)
                )
            )
            and self.matches(j, types, channels)
        ]
        return min(ready, key=lambda j: (-j.priority, j.seq), default=None)

    def settled_dependency(self, job: MJob, now: float) -> None:
        # a dependent whose last dependency settled after its time came is ready at once
        for d in job.dependents:
            dependent = self.jobs[d]
            if not dependent.released and dependent.due <= now and self.deps_settled(dependent):
                dependent.released = True

    def release_due(self, now: float) -> None:
        due = [
            j
            for j in self.jobs.values()
            if not j.released and j.state == "pending" and j.due <= now and self.deps_settled(j)
        ]
        for job in sorted(due, key=lambda j: (j.due, j.seq)):
            job.released = True
            self.wake()

    def wake(self) -> None:
        for job in sorted(self.jobs.values(), key=lambda j: j.seq):
            if not self.is_ready(job):
                continue
            for waiter in self.waiters:
                if self.matches(job, waiter.types, waiter.channels):
                    self.waiters.remove(waiter)
                    job.state = "running"
                    self.handed.append((waiter.id, job.id))
                    break


def fixed_wall() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        # Ids from a counter, not os.urandom: rules draw jobs by id, and a replay
        # of the same choices must pick the same jobs, or hypothesis finds its
        # own data generation flaky.
        ids = itertools.count(1)
        self.core = QueueState(
            wall=self.wall,
            monotonic=lambda: self.now,
            track_changes=True,
            new_id=lambda: uuid.UUID(int=next(ids)),
        )
        self.model = Model()
        self.tokens: dict[uuid.UUID, uuid.UUID] = {}  # job id -> token, as the core handed out
        self.parked: set[int] = set()

    # -------------------------------------------------------------- helpers

    def wall(self) -> datetime:
        # the wall clock moves with the machine's monotonic one, as a real one would
        return fixed_wall() + timedelta(seconds=self.now)

    def both(self, core_call: Any, model_call: Any) -> Any:
        """Run the same operation on both; they must agree on success or error class."""
        failure: JobQueueError | None = None
        try:
            got = core_call()
        except JobQueueError as exc:
            failure = exc
        expected = model_call()
        if failure is not None:
            assert isinstance(expected, type), (failure, expected)
            assert isinstance(failure, expected), (failure, expected)
            return None
        assert not isinstance(expected, type), (got, expected)
        if expected is not None:
            assert got == expected
        return got

    def pick(self, data: st.DataObject) -> uuid.UUID:
        ids = list(self.model.jobs)
        if not ids or data.draw(st.integers(0, 9)) == 0:
            return uuid.uuid4()
        return data.draw(st.sampled_from(ids))

    def record_assignment(self, got: Assignment) -> None:
        self.tokens[got.id] = got.token
        job = self.model.jobs[got.id]
        job.token = got.token

    def absorb_handouts(self) -> None:
        core_handed = self.core.take_assignments()
        got = []
        for waiter_id, assignment in core_handed:
            assert isinstance(assignment, Assignment)
            got.append((waiter_id, assignment.id))
            self.record_assignment(assignment)
            self.parked.discard(waiter_id)
        assert got == self.model.handed
        self.model.handed = []

    def add_model_job(
        self,
        job_id: uuid.UUID,
        job_type: str,
        channel: str,
        deps: tuple[uuid.UUID, ...],
        cancel_on_failed: bool,
    ) -> None:
        job = MJob(job_id, next(self.model.seq), job_type, channel, deps)
        job.cancel_on_failed = cancel_on_failed
        self.model.jobs[job_id] = job
        for d in deps:
            self.model.jobs[d].dependents.append(job_id)
        failed = [d for d in deps if self.model.jobs[d].state == "failed"]
        if cancel_on_failed and failed:
            job.state = "canceled"
            job.failed_dependency = failed[0]

    # ---------------------------------------------------------------- rules

    @rule(
        data=st.data(),
        job_type=st.sampled_from(TYPES),
        channel=st.sampled_from(CHANNELS),
        priority=st.sampled_from([0, 0, 1, -1, 5]),
        delay=st.sampled_from([None, None, 0.0, 5.0, 50.0]),
        unique_key=st.sampled_from([None, None, "k", "n"]),
    )
    def enqueue(
        self,
        data: st.DataObject,
        job_type: str,
        channel: str,
        priority: int,
        delay: float | None,
        unique_key: str | None,
    ) -> None:
        deps = data.draw(
            st.lists(st.sampled_from(list(self.model.jobs) or [uuid.uuid4()]), max_size=3)
        )
        known = all(d in self.model.jobs for d in deps)
        cancel_on_failed = data.draw(st.booleans())
        try:
            job_id = self.core.enqueue(
                job_type,
                "null",
                deps,
                channel,
                cancel_on_failed_dependency=cancel_on_failed,
                priority=priority,
                delay=delay,
                unique_key=unique_key,
            )
        except JobQueueError:
            assert not known
            return
        assert known
        if unique_key is not None:
            holder = [
                j
                for j in self.model.jobs.values()
                if j.unique_key == unique_key
                and j.channel == channel
                and j.state in ("pending", "running")
            ]
            if holder:
                assert job_id == holder[0].id  # nothing changes
                self.absorb_handouts()
                return
        self.add_model_job(job_id, job_type, channel, tuple(dict.fromkeys(deps)), cancel_on_failed)
        job = self.model.jobs[job_id]
        job.priority = priority
        job.unique_key = unique_key
        if delay:
            job.due = self.now + delay
            job.released = False
        self.model.wake()
        self.absorb_handouts()

    @rule(data=st.data(), size=st.integers(0, 4))
    def enqueue_many(self, data: st.DataObject, size: int) -> None:
        specs: list[tuple[str, str, list[uuid.UUID | int], str, bool]] = []
        for index in range(size):
            existing = list(self.model.jobs) or [uuid.uuid4()]
            ref: st.SearchStrategy[uuid.UUID | int] = st.sampled_from(existing)
            if index:
                ref = ref | st.integers(0, index - 1)
            deps: list[uuid.UUID | int] = data.draw(st.lists(ref, max_size=3))
            job_type = data.draw(st.sampled_from(TYPES))
            channel = data.draw(st.sampled_from(CHANNELS))
            specs.append((job_type, "null", deps, channel, data.draw(st.booleans())))
        known = all(isinstance(d, int) or d in self.model.jobs for spec in specs for d in spec[2])
        before = len(self.core._jobs)
        try:
            ids = self.core.enqueue_many(specs)
        except JobQueueError:
            assert not known
            assert len(self.core._jobs) == before  # all or nothing
            assert self.core.take_assignments() == []
            return
        assert known
        assert len(ids) == size
        for job_id, (job_type, _, deps, channel, flag) in zip(ids, specs, strict=True):
            resolved = tuple(dict.fromkeys(ids[d] if isinstance(d, int) else d for d in deps))
            self.add_model_job(job_id, job_type, channel, resolved, flag)
        self.model.wake()
        self.absorb_handouts()

    @rule(
        types=st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True),
        channels=st.one_of(st.none(), st.lists(st.sampled_from(CHANNELS), max_size=3, unique=True)),
        park=st.booleans(),
    )
    def dequeue(self, types: list[str], channels: list[str] | None, park: bool) -> None:
        t, c = tuple(types), None if channels is None else tuple(channels)
        expected = self.model.oldest_ready(t, c)
        if park:
            got: Assignment | int | None = self.core.add_waiter(t, c)
        else:
            got = self.core.dequeue(t, c)
        if expected is None:
            if park:
                assert isinstance(got, int)
                self.model.waiters.append(MWaiter(got, t, c))
                self.parked.add(got)
            else:
                assert got is None
            return
        assert isinstance(got, Assignment)
        assert got.id == expected.id
        expected.state = "running"
        self.record_assignment(got)

    @precondition(lambda self: self.parked)
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        waiter_id = data.draw(st.sampled_from(sorted(self.parked)))
        assert self.core.remove_waiter(waiter_id)
        self.parked.discard(waiter_id)
        self.model.waiters = [w for w in self.model.waiters if w.id != waiter_id]

    @rule(data=st.data())
    def dequeue_by_id(self, data: st.DataObject) -> None:
        job_id = self.pick(data)

        def model() -> Any:
            job = self.model.jobs.get(job_id)
            if job is None:
                return NotExist
            if not self.model.is_ready(job):
                return NotPending
            job.state = "running"
            return None

        got = self.both(lambda: self.core.dequeue_by_id(job_id), model)
        if got is not None:
            self.record_assignment(got)

    def _running_op(self, job_id: uuid.UUID) -> Any:
        job = self.model.jobs.get(job_id)
        if job is None:
            return NotExist
        if job.state == "canceled":
            return Canceled
        if job.state != "running":
            return NotRunning
        return job

    def _finish_model(self, job: MJob, failed: bool = False) -> None:
        job.state = "failed" if failed else "finished"
        job.token = None
        self.model.settled_dependency(job, self.now)
        if failed:
            for d in job.dependents:
                dependent = self.model.jobs[d]
                if dependent.cancel_on_failed:
                    self.model.cancel_tree(dependent, job.id)
        self.model.wake()

    @rule(data=st.data(), failed=st.booleans())
    def finish(self, data: st.DataObject, failed: bool) -> None:
        job_id = self.pick(data)

        def model() -> Any:
            job = self._running_op(job_id)
            if isinstance(job, type):
                return job
            self._finish_model(job, failed)
            return None

        self.both(lambda: self.core.finish_job(job_id, '"done"', failed=failed), model)
        self.absorb_handouts()

    @rule(data=st.data(), max_retries=st.integers(0, 2), failed=st.booleans())
    def requeue(self, data: st.DataObject, max_retries: int, failed: bool) -> None:
        job_id = self.pick(data)

        def model() -> Any:
            job = self._running_op(job_id)
            if isinstance(job, type):
                return job
            if job.retries >= max_retries:
                self._finish_model(job, failed)
                return False
            job.retries += 1
            job.state = "pending"
            job.token = None
            self.model.wake()
            return True

        self.both(
            lambda: self.core.requeue_or_finish_job(job_id, max_retries, "1", failed=failed),
            model,
        )
        self.absorb_handouts()

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if not self.tokens:
            return
        job_id = data.draw(st.sampled_from(sorted(self.tokens)))
        token = self.tokens[job_id]
        job = self.model.jobs.get(job_id)
        expected = job is not None and job.state == "running" and job.token == token
        assert self.core.release(job_id, token) == expected
        if expected:
            assert job is not None
            job.state = "pending"
            job.token = None
            self.model.wake()
        self.absorb_handouts()

    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        job_id = self.pick(data)

        def model() -> Any:
            job = self.model.jobs.get(job_id)
            if job is None:
                return NotExist
            if job.state == "canceled":
                return Canceled
            if job.state in SETTLED:
                return Finished
            if job.state == "running":
                return Running
            self._finish_model(job, failed=True)
            return None

        self.both(lambda: self.core.fail_job(job_id, "{}"), model)
        self.absorb_handouts()

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = self.pick(data)

        def model() -> Any:
            job = self.model.jobs.get(job_id)
            if job is None:
                return NotExist
            if job.state in SETTLED:
                return NotRunning
            self.model.cancel_tree(job, None)
            return None

        self.both(lambda: self.core.cancel_job(job_id), model)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        job_id = self.pick(data)

        def model() -> Any:
            job = self.model.jobs.get(job_id)
            if job is None:
                return NotExist
            if job.state == "running":
                return Running
            if job.dependents:
                return HasDependents
            stack = [job]
            while stack:
                j = stack.pop()
                del self.model.jobs[j.id]
                self.tokens.pop(j.id, None)
                for d in j.deps:
                    dep = self.model.jobs.get(d)
                    if dep is None:
                        continue
                    dep.dependents.remove(j.id)
                    if not dep.dependents and dep.state != "running":
                        stack.append(dep)
            return None

        self.both(lambda: self.core.delete_job(job_id), model)

    @rule(seconds=st.floats(0, 100))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def release_due(self) -> None:
        # what the scheduler does when the first delayed job falls due
        self.core.release_due()
        self.model.release_due(self.now)
        self.absorb_handouts()
        due = self.core.next_due()
        waiting = [
            j.due
            for j in self.model.jobs.values()
            if not j.released and j.state == "pending" and self.model.deps_settled(j)
        ]
        assert due == (min(waiting) if waiting else None)

    # ----------------------------------------------------------- invariants

    @invariant()
    def states_agree(self) -> None:
        for job_id, job in self.model.jobs.items():
            assert self.core.job_state(job_id).value == job.state
            status = self.core.job_status(job_id)
            assert status.retries == job.retries
            assert status.failed_dependency == job.failed_dependency
        assert sorted(self.core.job_ids()) == sorted(self.model.jobs)
        running = {j.token for j in self.model.jobs.values() if j.state == "running"}
        assert set(self.core.heartbeats(0)) == running
        assert self.core.waiter_count == len(self.model.waiters)

    @invariant()
    def restore_is_exact(self) -> None:
        jobs, workers = self.core.records()
        copy = QueueState.restore(jobs, workers, wall=self.wall, monotonic=lambda: self.now)
        assert copy.records() == (jobs, workers)
        for types in (TYPES,):
            assert [j.id for j in copy.list_jobs()] == [j.id for j in self.core.list_jobs()]
            # reopened, a job whose time has come is ready at once
            ready_core = self.model.oldest_ready(types, None, self.now)
            ready_copy = copy.dequeue(types, None)
            assert (ready_copy.id if ready_copy else None) == (
                ready_core.id if ready_core else None
            )

    @invariant()
    def changes_cover_everything(self) -> None:
        # replaying every change onto a store keeps it equal to the state
        changes = self.core.take_changes()
        store = self.store
        for job_id in changes.deleted_jobs:
            store.pop(job_id, None)
        for record in changes.jobs:
            store[record.id] = record
        assert sorted(store.values(), key=lambda r: r.seq) == self.core.records()[0]

    @property
    def store(self) -> dict[uuid.UUID, Any]:
        if not hasattr(self, "_store"):
            self._store: dict[uuid.UUID, Any] = {}
        return self._store


QueueMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestQueueModel = QueueMachine.TestCase


def test_withdrawn_waiters_leave_no_keys_behind() -> None:
    core = QueueState(wall=fixed_wall, monotonic=lambda: 0.0)
    for i in range(1000):
        waiter = core.add_waiter((f"type-{i}",), (f"channel-{i}", ""))
        assert isinstance(waiter, int)
        assert core.remove_waiter(waiter)
    assert core.waiter_count == 0
    assert core._waiters == {}
    # a key in use keeps working after its queue was dropped and made again
    waiter = core.add_waiter(("type-1",), ("",))
    assert isinstance(waiter, int)
    core.enqueue("type-1", "null")
    assert [w for w, _ in core.take_assignments()] == [waiter]


def test_enqueue_many_checks_every_reference_before_adding_any_job() -> None:
    core = QueueState(wall=fixed_wall, monotonic=lambda: 0.0, track_changes=True)
    first = core.enqueue("a", "null")
    core.take_changes()
    for bad, error in (([1], ValueError), ([-1], ValueError), ([uuid.uuid4()], NotExist)):
        with pytest.raises(error):
            core.enqueue_many([("a", "null", [first], ""), ("b", "null", [0, *bad], "")])
        assert list(core.job_ids()) == [first]
        assert core.job_status(first).dependents == []
        assert not core.take_changes()


def test_enqueue_many_tenancy_covers_every_job_id_and_channel() -> None:
    from actorq import ProtocolError
    from actorq._core import _ops as ops
    from actorq._core._operation import NULL

    core = QueueState(wall=fixed_wall, monotonic=lambda: 0.0)
    theirs = core.enqueue("a", "null", (), "other")
    mine = core.enqueue("a", "null", (), "mine")
    scope = frozenset({"mine"})

    def many(*specs: ops.JobSpec) -> list[uuid.UUID]:
        op = ops.EnqueueMany(jobs=specs).checked()
        return ops.run(op, core, scope)

    # another tenant's job does not exist for this one, wherever it is named
    with pytest.raises(NotExist):
        many(ops.JobSpec("b", channel="mine"), ops.JobSpec("c", NULL, (0, theirs), "mine"))
    with pytest.raises(ProtocolError) as info:
        many(ops.JobSpec("b", channel="mine"), ops.JobSpec("c", NULL, (0,), "other"))
    assert info.value.reason == "forbidden"
    assert sorted(core.job_ids()) == sorted([theirs, mine])
    ids = many(ops.JobSpec("b", channel="mine"), ops.JobSpec("c", NULL, (0, mine), "mine"))
    assert core.job_status(ids[1]).dependencies == [ids[0], mine]
