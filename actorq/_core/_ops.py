"""Every queue operation, defined once.

An operation is a frozen attrs class: its fields are the operation's
arguments, exactly as they travel on the wire (``NAME`` is both the method
name and the wire ``kind``), and its methods are the rest of its definition:

- :meth:`~Operation.checked` validates and normalises the arguments. Every
  front end calls it in the caller's task, before anything is sent or changed,
  so a bad argument raises :class:`TypeError` or :class:`ValueError` at once;
  the server calls it again, since a remote peer is not trusted.
- :meth:`~Operation.access` says which jobs, channels and workers the
  operation touches: the tenancy rules (:func:`check_access`) hang on it.
- :meth:`~Operation.apply` runs it on the core, inside the scheduler actor.
  ``scope`` is the set of channels the caller may see (``None``: every one),
  for the operations that list things.
- :meth:`~Operation.present` turns the core's result into what the in-process
  API returns; :meth:`~Operation.to_wire` into what the server sends (stored
  JSON text is embedded as it is, never parsed and written again); ``RESULT``
  is the type a remote client structures the reply's value into.

Operations that wait for a job (:class:`Dequeue`, :class:`FinishAndDequeue`)
are :class:`WaitingOperation`\\ s: :meth:`~WaitingOperation.prelude` runs
first (finishing a job, say), then the scheduler hands over a matching ready
job or parks the caller until one is ready (:meth:`~WaitingOperation.matching`).

Nothing here does I/O or knows about trio: the in-process queue
(:mod:`actorq._actor._local`), the server and the remote client dispatch over
:data:`OPERATIONS`, and the wire messages are derived from it
(:mod:`actorq._remote._wire`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs
import orjson

from . import _validate as v
from ._errors import WaitTimeoutError
from ._json import converter, loads
from ._models import (
    DequeuedJob,
    JobInfo,
    JobState,
    JobStatus,
    JobSummary,
    QueueStats,
    ScheduleInfo,
    WorkerInfo,
)
from ._operation import (
    NOTHING,
    NULL,
    REGISTRY,
    SINCE_3,
    Access,
    JsonText,
    Operation,
    P,
    R,
    Scope,
    WaitingOperation,
    check_access,
    dequeued,
    dequeued_for_wire,
    run,
    token_visible,
)
from ._records import Assignment
from ._schedules import check_catch_up, check_cron, check_schedule_name, check_timezone

if TYPE_CHECKING:
    from collections.abc import Callable

    import cattrs

    from ._state import QueueState

__all__ = [
    "OPERATIONS",
    "Access",
    "JsonText",
    "Operation",
    "Scope",
    "WaitingOperation",
    "check_access",
    "run",
]


# ------------------------------------------------------------------ jobs


def _args(job_type: str, dependencies: tuple[UUID, ...], channel: str) -> tuple[Any, ...]:
    return (
        v.check_job_type(job_type),
        v.check_uuids(dependencies, "dependencies"),
        v.check_channel(channel),
    )


@attrs.frozen(kw_only=True)
class Enqueue(Operation[UUID, UUID]):
    NAME = "enqueue"
    RESULT = UUID

    job_type: str
    args: JsonText = NULL
    dependencies: tuple[UUID, ...] = ()
    channel: str = ""
    cancel_on_failed_dependency: bool = attrs.field(default=False, metadata=SINCE_3)
    priority: int = attrs.field(default=0, metadata=SINCE_3)
    delay: float | None = attrs.field(default=None, metadata=SINCE_3)
    not_before: datetime | None = attrs.field(default=None, metadata=SINCE_3)
    unique_key: str | None = attrs.field(default=None, metadata=SINCE_3)

    def checked(self) -> Enqueue:
        job_type, deps, channel = _args(self.job_type, self.dependencies, self.channel)
        v.check_bool(self.cancel_on_failed_dependency, "cancel_on_failed_dependency")
        v.check_priority(self.priority)
        delay = v.check_delay(self.delay)
        v.check_not_before(self.not_before)
        v.check_unique_key(self.unique_key)
        if delay is not None and self.not_before is not None:
            raise ValueError("give delay or not_before, not both")
        if (
            job_type is self.job_type
            and deps is self.dependencies
            and channel is self.channel
            and delay is self.delay
        ):
            return self
        return attrs.evolve(
            self, job_type=job_type, dependencies=deps, channel=channel, delay=delay
        )

    def access(self) -> Access:
        return Access(jobs=self.dependencies, channels=(self.channel,))

    def apply(self, state: QueueState, scope: Scope) -> UUID:
        return state.enqueue(
            self.job_type,
            self.args,
            self.dependencies,
            self.channel,
            cancel_on_failed_dependency=self.cancel_on_failed_dependency,
            priority=self.priority,
            delay=self.delay,
            not_before=self.not_before,
            unique_key=self.unique_key,
        )


@attrs.frozen
class JobSpec:
    """One job of an ``enqueue_many`` request, as it travels on the wire.

    Each dependency is a job id, or the index of an earlier job of the same
    request (an integer on the wire).
    """

    job_type: str
    args: JsonText = NULL
    dependencies: tuple[UUID | int, ...] = ()
    channel: str = ""
    cancel_on_failed_dependency: bool = attrs.field(default=False, metadata=SINCE_3)


def _dependency_ref_hook(_: Any, conv: cattrs.Converter) -> Callable[[object, object], UUID | int]:
    # A dependency in a frame is a UUID string or an integer index. cattrs has
    # no strategy for a union of UUID and int, so dispatch on the JSON type,
    # to the converter's own hooks (the wire's are strict about both forms).
    as_uuid = conv.get_structure_hook(UUID)
    as_int = conv.get_structure_hook(int)

    def structure(value: object, _: object) -> UUID | int:
        if type(value) is str:
            return as_uuid(value, UUID)  # type: ignore[no-any-return]
        if type(value) is int:
            return as_int(value, int)  # type: ignore[no-any-return]
        raise TypeError("expected a UUID string or the integer index of an earlier job")

    return structure


converter.register_structure_hook_factory(lambda tp: tp == UUID | int, _dependency_ref_hook)


@attrs.frozen(kw_only=True)
class EnqueueMany(Operation[list[UUID], list[UUID]]):
    """Enqueue several jobs at once: all of them, or (on an error) none.

    A job may depend on earlier jobs of the same request, by index, so a
    whole dependency graph goes in one step. A forward or self reference is a
    :class:`ValueError`, an unknown job id a :class:`NotExistError`; either
    way nothing is added.
    """

    NAME = "enqueue_many"
    RESULT = list[UUID]

    jobs: tuple[JobSpec, ...]

    def checked(self) -> EnqueueMany:
        if not isinstance(self.jobs, tuple | list):
            raise TypeError(f"jobs must be a sequence, not {type(self.jobs).__name__}")
        specs = []
        for index, spec in enumerate(self.jobs):
            if not isinstance(spec, JobSpec):
                raise TypeError(f"each job must be a JobSpec, not {type(spec).__name__}")
            specs.append(
                JobSpec(
                    v.check_job_type(spec.job_type),
                    spec.args,
                    v.check_dependency_refs(spec.dependencies, index),
                    v.check_channel(spec.channel),
                    v.check_bool(spec.cancel_on_failed_dependency, "cancel_on_failed_dependency"),
                )
            )
        return EnqueueMany(jobs=tuple(specs))

    def access(self) -> Access:
        return Access(
            jobs=tuple(
                dict.fromkeys(
                    dep for spec in self.jobs for dep in spec.dependencies if isinstance(dep, UUID)
                )
            ),
            channels=tuple(dict.fromkeys(spec.channel for spec in self.jobs)),
        )

    def apply(self, state: QueueState, scope: Scope) -> list[UUID]:
        return state.enqueue_many(
            [
                (s.job_type, s.args, s.dependencies, s.channel, s.cancel_on_failed_dependency)
                for s in self.jobs
            ]
        )


@attrs.frozen(kw_only=True)
class Dequeue(WaitingOperation):
    """Take a job. ``any_channel`` ignores ``channels`` and matches every channel."""

    NAME = "dequeue"

    def checked(self) -> Dequeue:
        types, channels, any_channel, timeout, worker_id = self._checked_wait()
        return Dequeue(
            job_types=types,
            channels=channels,
            any_channel=any_channel,
            timeout=timeout,
            worker_id=worker_id,
        )

    def access(self) -> Access:
        return self._wait_access()


@attrs.frozen(kw_only=True)
class FinishAndDequeue(WaitingOperation):
    """Finish ``job_id`` (as ``finish_job``), then dequeue (as ``dequeue``): one round trip.

    If the finish fails, its error is the reply and nothing is dequeued; any
    later error (``dequeue_timeout`` included) means the finish took effect.
    """

    NAME = "finish_and_dequeue"
    TOKEN = True
    SETTLES = True

    job_id: UUID
    token: UUID | None = None
    result: JsonText = NULL
    failed: bool = attrs.field(default=False, metadata=SINCE_3)

    def checked(self) -> FinishAndDequeue:
        types, channels, any_channel, timeout, worker_id = self._checked_wait()
        return FinishAndDequeue(
            job_id=v.check_uuid(self.job_id, "job_id"),
            token=v.check_optional_uuid(self.token, "token"),
            result=self.result,
            failed=v.check_bool(self.failed, "failed"),
            job_types=types,
            channels=channels,
            any_channel=any_channel,
            timeout=timeout,
            worker_id=worker_id,
        )

    def access(self) -> Access:
        return self._wait_access((self.job_id,))

    def prelude(self, state: QueueState) -> None:
        state.check_token(self.job_id, self.token)
        state.finish_job(self.job_id, self.result, failed=self.failed)


@attrs.frozen(kw_only=True)
class DequeueById(Operation[Assignment, DequeuedJob]):
    NAME = "dequeue_by_id"
    RESULT = DequeuedJob

    job_id: UUID
    worker_id: UUID | None = None

    def checked(self) -> DequeueById:
        return DequeueById(
            job_id=v.check_uuid(self.job_id, "job_id"),
            worker_id=v.check_optional_uuid(self.worker_id, "worker_id"),
        )

    def access(self) -> Access:
        workers = () if self.worker_id is None else (self.worker_id,)
        return Access(jobs=(self.job_id,), workers=workers)

    def apply(self, state: QueueState, scope: Scope) -> Assignment:
        return state.dequeue_by_id(self.job_id, self.worker_id)

    def present(self, raw: Assignment) -> DequeuedJob:
        return dequeued(raw)

    def to_wire(self, raw: Assignment) -> DequeuedJob:
        return dequeued_for_wire(raw)


@attrs.frozen(kw_only=True)
class _JobOperation(Operation[R, P]):
    """An operation on one job, named by ``job_id``."""

    job_id: UUID

    def checked(self) -> _JobOperation[R, P]:
        v.check_uuid(self.job_id, "job_id")
        return self

    def access(self) -> Access:
        return Access(jobs=(self.job_id,))


@attrs.frozen(kw_only=True)
class _TokenOperation(_JobOperation[R, P]):
    """An operation on a job that a worker may hold: with ``token``, it applies only
    while that token still names the job."""

    TOKEN = True

    token: UUID | None = None

    def checked(self) -> _TokenOperation[R, P]:
        v.check_uuid(self.job_id, "job_id")
        v.check_optional_uuid(self.token, "token")
        return self


@attrs.frozen(kw_only=True)
class FinishJob(_TokenOperation[None, None]):
    """Finish a running job with ``result``; ``failed`` settles it as a failure."""

    NAME = "finish_job"
    SETTLES = True

    result: JsonText = NULL
    failed: bool = attrs.field(default=False, metadata=SINCE_3)

    def checked(self) -> FinishJob:
        v.check_uuid(self.job_id, "job_id")
        v.check_optional_uuid(self.token, "token")
        v.check_bool(self.failed, "failed")
        return self

    def apply(self, state: QueueState, scope: Scope) -> None:
        state.check_token(self.job_id, self.token)
        state.finish_job(self.job_id, self.result, failed=self.failed)


@attrs.frozen(kw_only=True)
class RequeueOrFinishJob(_TokenOperation[bool, bool]):
    NAME = "requeue_or_finish_job"
    RESULT = bool
    SETTLES = True

    max_retries: int
    result: JsonText = NULL
    failed: bool = attrs.field(default=False, metadata=SINCE_3)
    delay: float | None = attrs.field(default=None, metadata=SINCE_3)

    def checked(self) -> RequeueOrFinishJob:
        return RequeueOrFinishJob(
            job_id=v.check_uuid(self.job_id, "job_id"),
            token=v.check_optional_uuid(self.token, "token"),
            max_retries=v.check_max_retries(self.max_retries),
            result=self.result,
            failed=v.check_bool(self.failed, "failed"),
            delay=v.check_delay(self.delay),
        )

    def apply(self, state: QueueState, scope: Scope) -> bool:
        state.check_token(self.job_id, self.token)
        return state.requeue_or_finish_job(
            self.job_id, self.max_retries, self.result, failed=self.failed, delay=self.delay
        )


@attrs.frozen(kw_only=True)
class UpdateJobResult(_TokenOperation[None, None]):
    NAME = "update_job_result"

    result: JsonText = NULL

    def apply(self, state: QueueState, scope: Scope) -> None:
        state.check_token(self.job_id, self.token)
        state.update_job_result(self.job_id, self.result)


@attrs.frozen(kw_only=True)
class FailJob(_JobOperation[None, None]):
    NAME = "fail_job"

    result: JsonText = NULL

    def apply(self, state: QueueState, scope: Scope) -> None:
        state.fail_job(self.job_id, self.result)


@attrs.frozen(kw_only=True)
class CancelJob(_JobOperation[None, None]):
    NAME = "cancel_job"
    SETTLES = True

    def apply(self, state: QueueState, scope: Scope) -> None:
        state.cancel_job(self.job_id)


@attrs.frozen(kw_only=True)
class RetryJob(_JobOperation[list[UUID], list[UUID]]):
    """Put a failed or canceled job back to pending, with the dependents canceled
    on its account (docs/lifecycle.md); the result lists the jobs put back, the
    job's id first, then its dependents in enqueue order (a tenant's only those
    of its channels)."""

    NAME = "retry_job"
    RESULT = list[UUID]

    def apply(self, state: QueueState, scope: Scope) -> list[UUID]:
        revived = state.retry_job(self.job_id)
        if scope is None:
            return revived
        return [j for j in revived if state.job_channel(j) in scope]


@attrs.frozen(kw_only=True)
class DeleteJob(_JobOperation[None, None]):
    NAME = "delete_job"
    SETTLES = True

    def apply(self, state: QueueState, scope: Scope) -> None:
        state.delete_job(self.job_id, scope)


@attrs.frozen(kw_only=True)
class GetJobStatus(_JobOperation[JobStatus, JobStatus]):
    NAME = "job_status"
    RESULT = JobStatus

    def apply(self, state: QueueState, scope: Scope) -> JobStatus:
        return state.job_status(self.job_id)

    def present(self, raw: JobStatus) -> JobStatus:
        # The core keeps results as JSON text; callers get JSON values.
        return attrs.evolve(raw, result=None if raw.result is None else loads(raw.result))

    def to_wire(self, raw: JobStatus) -> JobStatus:
        return attrs.evolve(raw, result=None if raw.result is None else orjson.Fragment(raw.result))


@attrs.frozen(kw_only=True)
class WaitForJob(GetJobStatus):
    """The status of ``job_id`` once it has settled (finished, failed or canceled).

    In the actor, :meth:`apply` answers at once for a settled job and raises
    :class:`WaitTimeoutError` otherwise; the front ends (``LocalQueue``, the
    server) then park the caller until the job settles or ``timeout`` passes.
    """

    NAME = "wait"

    timeout: float | None = None

    def checked(self) -> WaitForJob:
        return WaitForJob(
            job_id=v.check_uuid(self.job_id, "job_id"), timeout=v.check_timeout(self.timeout)
        )

    def apply(self, state: QueueState, scope: Scope) -> JobStatus:
        if not state.is_settled(self.job_id):
            raise WaitTimeoutError()
        return state.job_status(self.job_id)


@attrs.frozen(kw_only=True)
class GetJob(_JobOperation[JobInfo, JobInfo]):
    NAME = "job"
    RESULT = JobInfo

    def apply(self, state: QueueState, scope: Scope) -> JobInfo:
        return state.job(self.job_id)

    def present(self, raw: JobInfo) -> JobInfo:
        return attrs.evolve(raw, args=loads(raw.args))

    def to_wire(self, raw: JobInfo) -> JobInfo:
        return attrs.evolve(raw, args=orjson.Fragment(raw.args))


@attrs.frozen(kw_only=True)
class AllRootJobIds(Operation[list[UUID], list[UUID]]):
    NAME = "all_root_job_ids"
    RESULT = list[UUID]

    def apply(self, state: QueueState, scope: Scope) -> list[UUID]:
        roots = state.all_root_job_ids()
        if scope is None:
            return roots
        return [j for j in roots if state.job_channel(j) in scope]


@attrs.frozen(kw_only=True)
class ListJobs(Operation[list[JobSummary], list[JobSummary]]):
    """Jobs in enqueue order (``newest_first``: newest first), filtered by state,
    type, channel and the start of the id (``id_prefix``, hex digits and dashes,
    any case); the first ``offset`` matches skipped, at most ``limit`` returned."""

    NAME = "list_jobs"
    RESULT = list[JobSummary]

    state: JobState | None = None
    job_type: str | None = None
    channel: str | None = None
    limit: int | None = None
    offset: int = attrs.field(default=0, metadata=SINCE_3)
    id_prefix: str = attrs.field(default="", metadata=SINCE_3)
    newest_first: bool = attrs.field(default=False, metadata=SINCE_3)

    def checked(self) -> ListJobs:
        return type(self)(
            state=v.check_state(self.state),
            job_type=None if self.job_type is None else v.check_str(self.job_type, "job_type"),
            channel=None if self.channel is None else v.check_channel(self.channel),
            limit=v.check_limit(self.limit),
            offset=v.check_int(self.offset, "offset", minimum=0),
            id_prefix=v.check_id_prefix(self.id_prefix),
            newest_first=v.check_bool(self.newest_first, "newest_first"),
        )

    def access(self) -> Access:
        return NOTHING if self.channel is None else Access(channels=(self.channel,))

    def _states(self) -> JobState | frozenset[JobState] | None:
        return self.state

    def apply(self, state: QueueState, scope: Scope) -> list[JobSummary]:
        return state.list_jobs(
            self._states(),
            self.job_type,
            self.channel,
            self.limit,
            offset=self.offset,
            id_prefix=self.id_prefix,
            newest_first=self.newest_first,
            channels=None if self.channel is not None else scope,
        )


_FINISHED_OR_FAILED = frozenset((JobState.FINISHED, JobState.FAILED))


@attrs.frozen(kw_only=True)
class ListJobsBefore3(ListJobs):
    """``list_jobs`` as a client of protocol 1 or 2 sends it. Such a client knows no
    failed state, and a failed job reads as finished to it: its ``finished``
    filter lists failed jobs too. Not an operation of its own (no ``NAME``)."""

    def _states(self) -> JobState | frozenset[JobState] | None:
        return _FINISHED_OR_FAILED if self.state is JobState.FINISHED else self.state


@attrs.frozen(kw_only=True)
class GetStats(Operation[QueueStats, QueueStats]):
    NAME = "stats"
    RESULT = QueueStats

    def access(self) -> Access:
        return Access(forbidden="queue statistics")

    def apply(self, state: QueueState, scope: Scope) -> QueueStats:
        return state.stats()


# ---------------------------------------------------------------- tokens


@attrs.frozen(kw_only=True)
class IdFromToken(Operation[UUID, UUID]):
    NAME = "id_from_token"
    RESULT = UUID

    token: UUID

    def checked(self) -> IdFromToken:
        return IdFromToken(token=v.check_uuid(self.token, "token"))

    def access(self) -> Access:
        return Access(tokens=(self.token,))

    def apply(self, state: QueueState, scope: Scope) -> UUID:
        return state.id_from_token(self.token)


@attrs.frozen(kw_only=True)
class GetHeartbeats(Operation[list[UUID], list[UUID]]):
    """Tokens of running jobs whose last heartbeat is at least ``older_than`` seconds old."""

    NAME = "heartbeats"
    RESULT = list[UUID]

    older_than: float

    def checked(self) -> GetHeartbeats:
        return GetHeartbeats(older_than=v.check_seconds(self.older_than, "older_than"))

    def apply(self, state: QueueState, scope: Scope) -> list[UUID]:
        tokens = state.heartbeats(self.older_than)
        if scope is None:
            return tokens
        return [t for t in tokens if state.job_channel(state.id_from_token(t)) in scope]


@attrs.frozen(kw_only=True)
class RefreshHeartbeat(Operation[None, None]):
    NAME = "refresh_heartbeat"

    token: UUID

    def checked(self) -> RefreshHeartbeat:
        return RefreshHeartbeat(token=v.check_uuid(self.token, "token"))

    def access(self) -> Access:
        return Access(tokens=(self.token,))

    def apply(self, state: QueueState, scope: Scope) -> None:
        state.refresh_heartbeat(self.token)


@attrs.frozen(kw_only=True)
class RefreshHeartbeats(Operation[list[UUID], list[UUID]]):
    """Refresh many tokens; the result lists those that no longer name a running job."""

    NAME = "refresh_heartbeats"
    RESULT = list[UUID]

    tokens: tuple[UUID, ...]

    def checked(self) -> RefreshHeartbeats:
        return RefreshHeartbeats(tokens=v.check_uuids(self.tokens, "tokens"))

    def apply(self, state: QueueState, scope: Scope) -> list[UUID]:
        if scope is None:
            return state.refresh_heartbeats(self.tokens)
        # a token of another tenant's job is reported gone, like an unknown one
        visible = {t for t in self.tokens if token_visible(state, t, scope)}
        gone = set(state.refresh_heartbeats(visible))
        return [t for t in self.tokens if t in gone or t not in visible]


# --------------------------------------------------------------- workers


@attrs.frozen(kw_only=True)
class InsertWorker(Operation[UUID, UUID]):
    NAME = "insert_worker"
    RESULT = UUID

    channel: str
    arch: str
    channels: tuple[str, ...] = attrs.field(default=(), metadata=SINCE_3)

    def checked(self) -> InsertWorker:
        channels = v.check_strings(self.channels, "channels", allow_empty_items=True)
        return InsertWorker(
            channel=v.check_channel(self.channel),
            arch=v.check_str(self.arch, "arch"),
            channels=tuple(v.check_channel(c) for c in channels),
        )

    def access(self) -> Access:
        return Access(channels=tuple(dict.fromkeys((self.channel, *self.channels))))

    def apply(self, state: QueueState, scope: Scope) -> UUID:
        return state.insert_worker(self.channel, self.arch, self.channels)


@attrs.frozen(kw_only=True)
class _WorkerOperation(Operation[None, None]):
    worker_id: UUID

    def checked(self) -> _WorkerOperation:
        v.check_uuid(self.worker_id, "worker_id")
        return self

    def access(self) -> Access:
        return Access(workers=(self.worker_id,))


@attrs.frozen(kw_only=True)
class UpdateWorkerStatus(_WorkerOperation):
    NAME = "update_worker_status"

    def apply(self, state: QueueState, scope: Scope) -> None:
        state.update_worker_status(self.worker_id)


@attrs.frozen(kw_only=True)
class DeleteWorker(_WorkerOperation):
    NAME = "delete_worker"

    def apply(self, state: QueueState, scope: Scope) -> None:
        state.delete_worker(self.worker_id)


@attrs.frozen(kw_only=True)
class GetWorkers(Operation[list[WorkerInfo], list[WorkerInfo]]):
    """Workers whose last status update is at least ``older_than`` seconds old."""

    NAME = "workers"
    RESULT = list[WorkerInfo]

    older_than: float = 0.0

    def checked(self) -> GetWorkers:
        return GetWorkers(older_than=v.check_seconds(self.older_than, "older_than"))

    def apply(self, state: QueueState, scope: Scope) -> list[WorkerInfo]:
        found = state.workers(older_than=self.older_than)
        if scope is None:
            return found
        return [worker for worker in found if worker.channel in scope]


# ------------------------------------------------------------- schedules


def _schedule_for_api(info: ScheduleInfo) -> ScheduleInfo:
    return attrs.evolve(info, args=loads(info.args))


def _schedule_for_wire(info: ScheduleInfo) -> ScheduleInfo:
    return attrs.evolve(info, args=orjson.Fragment(info.args))


@attrs.frozen(kw_only=True)
class Schedule(Operation[ScheduleInfo, ScheduleInfo]):
    """Define the durable periodic job ``name``: at every slot of ``cron`` (in
    ``timezone``), enqueue ``job_type`` with ``args`` in ``channel``.

    The slot's enqueue and the schedule's last-fired mark commit together, so
    a slot fires once. ``catch_up`` says what happens to slots missed while
    the queue was not serving (``"last"``, ``"none"`` or ``"all"``,
    docs/lifecycle.md). Defining a schedule again exactly as it is changes
    nothing; a different definition replaces it, counting slots from now.
    """

    NAME = "schedule"
    RESULT = ScheduleInfo

    name: str
    cron: str
    job_type: str
    args: JsonText = NULL
    channel: str = ""
    timezone: str = "UTC"
    catch_up: str = "last"

    def checked(self) -> Schedule:
        return Schedule(
            name=check_schedule_name(self.name),
            cron=check_cron(self.cron),
            job_type=v.check_job_type(self.job_type),
            args=self.args,
            channel=v.check_channel(self.channel),
            timezone=check_timezone(self.timezone),
            catch_up=check_catch_up(self.catch_up),
        )

    def access(self) -> Access:
        return Access(channels=(self.channel,))

    def apply(self, state: QueueState, scope: Scope) -> ScheduleInfo:
        return state.schedule(
            self.name,
            self.cron,
            self.job_type,
            self.args,
            self.channel,
            timezone=self.timezone,
            catch_up=self.catch_up,
            scope=scope,
        )

    def present(self, raw: ScheduleInfo) -> ScheduleInfo:
        return _schedule_for_api(raw)

    def to_wire(self, raw: ScheduleInfo) -> ScheduleInfo:
        return _schedule_for_wire(raw)


@attrs.frozen(kw_only=True)
class Unschedule(Operation[bool, bool]):
    """Remove the schedule ``name``: no slot fires after it. False if there is none
    (a tenant sees only the schedules of its channels)."""

    NAME = "unschedule"
    RESULT = bool

    name: str

    def checked(self) -> Unschedule:
        return Unschedule(name=check_schedule_name(self.name))

    def apply(self, state: QueueState, scope: Scope) -> bool:
        return state.unschedule(self.name, scope)


@attrs.frozen(kw_only=True)
class ListSchedules(Operation[list[ScheduleInfo], list[ScheduleInfo]]):
    """Every schedule, by name (a tenant's: those of its channels)."""

    NAME = "schedules"
    RESULT = list[ScheduleInfo]

    def apply(self, state: QueueState, scope: Scope) -> list[ScheduleInfo]:
        return state.schedules(scope)

    def present(self, raw: list[ScheduleInfo]) -> list[ScheduleInfo]:
        return [_schedule_for_api(info) for info in raw]

    def to_wire(self, raw: list[ScheduleInfo]) -> list[ScheduleInfo]:
        return [_schedule_for_wire(info) for info in raw]


OPERATIONS: dict[str, type[Operation[Any, Any]]] = dict(REGISTRY)
"""Every operation by ``NAME``: the table every front end dispatches over."""
