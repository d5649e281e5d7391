"""The core's mutable entries: jobs, workers, waiters and the heaps that index them.

Private to :mod:`actorq._core`; only :class:`~actorq._core._state.QueueState`
changes them.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

import attrs

from ._events import Phase
from ._models import JobState
from ._records import JobRecord, WorkerRecord

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "ANY_CHANNEL",
    "COMPACT_SLACK",
    "COUNT_SLOTS",
    "JobEntry",
    "ReadyHeap",
    "StateAttributes",
    "TypeKey",
    "Waiter",
    "WaiterQueue",
    "WorkerEntry",
    "add_dependent",
    "count_slot",
    "is_delayed",
    "remove_dependent",
    "state_of",
]

COMPACT_SLACK = 32


@attrs.define(slots=True, eq=False)
class JobEntry:
    id: UUID
    seq: int
    type: str
    channel: str
    args: str
    dependencies: tuple[UUID, ...]
    queued: datetime
    # Most jobs never get a dependent: they share the empty tuple until their
    # first one, which saves a list per job (a reopen builds a million jobs).
    dependents: list[UUID] | tuple[()] = ()
    started: datetime | None = None
    finished: datetime | None = None
    canceled: bool = False
    result: str | None = None
    retries: int = 0
    token: UUID | None = None
    worker_id: UUID | None = None
    waiting_on: int = 0
    heartbeat: float = 0.0
    failed: bool = False  # settled as a failure (finished is set too)
    cancel_on_failed_dependency: bool = False
    failed_dependency: UUID | None = None  # canceled because this dependency failed
    priority: int = 0
    not_before: datetime | None = None
    unique_key: str | None = None
    due: float = 0.0  # monotonic time it may become ready; 0.0 once it may
    ready_key: int = 0  # nonzero while the job sits in the ready index
    since: float = math.nan  # monotonic time it became ready or started; kept for events only

    @property
    def pending(self) -> bool:
        return self.started is None and not self.canceled

    @property
    def running(self) -> bool:
        return self.started is not None and self.finished is None and not self.canceled

    def record(self) -> JobRecord:
        return JobRecord(
            id=self.id,
            seq=self.seq,
            type=self.type,
            channel=self.channel,
            args=self.args,
            dependencies=self.dependencies,
            queued=self.queued,
            started=self.started,
            finished=self.finished,
            canceled=self.canceled,
            result=self.result,
            retries=self.retries,
            token=self.token,
            worker_id=self.worker_id,
            failed=self.failed,
            cancel_on_failed_dependency=self.cancel_on_failed_dependency,
            failed_dependency=self.failed_dependency,
            priority=self.priority,
            not_before=self.not_before,
            unique_key=self.unique_key,
        )


@attrs.define(slots=True, eq=False)
class WorkerEntry:
    id: UUID
    channel: str
    arch: str
    updated: datetime
    heartbeat: float
    active_jobs: set[UUID] = attrs.field(factory=set)
    channels: tuple[str, ...] = ()  # every channel, ``channel`` first

    def record(self) -> WorkerRecord:
        return WorkerRecord(
            id=self.id,
            channel=self.channel,
            arch=self.arch,
            updated=self.updated,
            channels=self.channels,
        )


@attrs.define(slots=True, eq=False)
class Waiter:
    id: int
    types: tuple[str, ...]
    channels: tuple[str, ...] | None  # None: any channel
    worker_id: UUID | None
    active: bool = True
    parked: float = 0.0  # monotonic time it was parked; kept for events only


class ReadyHeap:
    """Ready jobs of one key, oldest first, with lazy deletion."""

    __slots__ = ("entries", "live")

    def __init__(self) -> None:
        # (-priority, seq, ready_key, job id): highest priority first, then oldest
        self.entries: list[tuple[int, int, int, UUID]] = []
        self.live = 0


class WaiterQueue:
    """Waiters of one key, oldest first, with lazy deletion."""

    __slots__ = ("live", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[Waiter] = deque()
        self.live = 0


def add_dependent(job: JobEntry, dependent: UUID) -> None:
    if isinstance(job.dependents, list):
        job.dependents.append(dependent)
    else:
        job.dependents = [dependent]


def remove_dependent(job: JobEntry, dependent: UUID) -> None:
    # only called for a dependent the job has, so they are in a list
    assert isinstance(job.dependents, list)
    job.dependents.remove(dependent)


def state_of(job: JobEntry) -> JobState:
    if job.canceled:
        return JobState.CANCELED
    if job.finished is not None:
        return JobState.FAILED if job.failed else JobState.FINISHED
    if job.started is not None:
        return JobState.RUNNING
    return JobState.PENDING


#: Where each state's count sits in ``QueueState._counts`` (a list: an enum
#: member hashes in Python code, an index does not).
PENDING_SLOT, RUNNING_SLOT, FINISHED_SLOT, FAILED_SLOT, CANCELED_SLOT = range(5)
COUNT_SLOTS: dict[JobState, int] = {
    JobState.PENDING: PENDING_SLOT,
    JobState.RUNNING: RUNNING_SLOT,
    JobState.FINISHED: FINISHED_SLOT,
    JobState.FAILED: FAILED_SLOT,
    JobState.CANCELED: CANCELED_SLOT,
}


def count_slot(job: JobEntry) -> int:
    """The slot of the job's state in ``QueueState._counts`` (as :func:`state_of`)."""
    if job.canceled:
        return CANCELED_SLOT
    if job.finished is not None:
        return FAILED_SLOT if job.failed else FINISHED_SLOT
    if job.started is not None:
        return RUNNING_SLOT
    return PENDING_SLOT


def is_delayed(job: JobEntry) -> bool:
    """Pending, every dependency settled, its time not come (``stats().delayed``)."""
    return bool(job.due) and not job.waiting_on and job.started is None and not job.canceled


def phase_of(job: JobEntry) -> Phase:
    """The :class:`Phase` of ``job``: its state, with pending split into ready and blocked."""
    if job.canceled:
        return Phase.CANCELED
    if job.finished is not None:
        return Phase.FAILED if job.failed else Phase.FINISHED
    if job.started is not None:
        return Phase.RUNNING
    return Phase.READY if job.ready_key else Phase.BLOCKED


ANY_CHANNEL = None
TypeKey = tuple[str, str | None]


class StateAttributes:
    """The attributes :class:`~actorq._core._state.QueueState` keeps, declared once for
    the mixins that make it up (its reads, its indexes, its restore loop)."""

    _wall: Callable[[], datetime]
    _monotonic: Callable[[], float]
    _jobs: dict[UUID, JobEntry]
    _tokens: dict[UUID, UUID]
    _running: dict[UUID, JobEntry]
    _workers: dict[UUID, WorkerEntry]
    _ready: dict[TypeKey, ReadyHeap]
    _waiters: dict[TypeKey, WaiterQueue]
    _waiters_by_id: dict[int, Waiter]
    _next_seq: int
    _next_ready_key: int
    _timers: list[tuple[float, int, UUID]]
    _unique: dict[tuple[str, str], UUID]
    _counts: list[int]  # jobs per state (by COUNT_SLOTS), kept at every transition
    _delayed: int  # pending jobs with every dependency settled, waiting for their time
