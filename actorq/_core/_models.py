"""The values the queue hands back: frozen attrs classes, safe to share."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs


class JobState(enum.Enum):
    """Where a job is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    """Settled as a failure (``fail_job``, or a finish that said ``failed=True``).
    Its ``finished`` time is set, as for any settled job."""
    CANCELED = "canceled"


@attrs.frozen
class DequeuedJob:
    """A job handed to a worker. ``token`` authorises the worker's later calls for it."""

    id: UUID
    token: UUID
    dependencies: list[UUID]
    type: str
    args: Any
    channel: str


@attrs.frozen
class JobStatus:
    """What the queue knows about a job. Times are timezone-aware UTC; unset ones are ``None``."""

    type: str
    channel: str
    result: Any
    queued: datetime
    started: datetime | None
    finished: datetime | None
    canceled: bool
    dependencies: list[UUID]
    dependents: list[UUID]
    retries: int
    #: Settled as a failure (``finished`` is set too). Protocol 3 and later.
    failed: bool = attrs.field(default=False, metadata={"since": 3})
    #: For a job canceled because a dependency failed (it was enqueued with
    #: ``cancel_on_failed_dependency=True``): that dependency. Protocol 3 and later.
    failed_dependency: UUID | None = attrs.field(default=None, metadata={"since": 3})
    #: Its priority: higher goes first among ready jobs. Protocol 3 and later.
    priority: int = attrs.field(default=0, metadata={"since": 3})
    #: Not ready before then (``delay`` or ``not_before``). Protocol 3 and later.
    not_before: datetime | None = attrs.field(default=None, metadata={"since": 3})
    #: Its unique key in its channel, if it was given one. Protocol 3 and later.
    unique_key: str | None = attrs.field(default=None, metadata={"since": 3})

    @property
    def state(self) -> JobState:
        if self.canceled:
            return JobState.CANCELED
        if self.finished is not None:
            return JobState.FAILED if self.failed else JobState.FINISHED
        if self.started is not None:
            return JobState.RUNNING
        return JobState.PENDING


@attrs.frozen
class JobInfo:
    """Everything given to ``enqueue`` for a job."""

    type: str
    args: Any
    dependencies: list[UUID]
    channel: str


@attrs.frozen
class WorkerInfo:
    """A registered worker and when it last reported.

    ``channel`` is its first channel; ``channels`` all of them, in the order it
    registered them (``channel`` first).
    """

    id: UUID
    channel: str
    arch: str
    updated: datetime
    channels: tuple[str, ...] = attrs.field(default=(), metadata={"since": 3})


@attrs.frozen
class JobSummary:
    """One line of a job listing; ``worker_id`` names the worker of a running job
    that was dequeued for one (else ``None``)."""

    id: UUID
    type: str
    channel: str
    state: JobState
    queued: datetime
    started: datetime | None
    finished: datetime | None
    retries: int
    dependencies: list[UUID]
    worker_id: UUID | None = attrs.field(default=None, metadata={"since": 3})


@attrs.frozen
class QueueStats:
    """A snapshot of the queue's size, for dashboards and ``actorq watch``.

    ``ready`` counts pending jobs whose dependencies have all finished, per
    ``"type"`` and ``"channel"`` (as ``[type, channel, count]`` rows, oldest
    type first); ``blocked`` counts pending jobs still waiting on dependencies.
    """

    jobs: int
    pending: int
    ready: list[tuple[str, str, int]]
    blocked: int
    running: int
    finished: int
    canceled: int
    waiting_dequeuers: int
    workers: int
    #: Jobs settled as failures; ``finished`` counts only the others. Protocol 3 and later.
    failed: int = attrs.field(default=0, metadata={"since": 3})
    #: Pending jobs whose dependencies have settled but whose ``not_before`` has
    #: not come yet (counted in ``blocked`` too). Protocol 3 and later.
    delayed: int = attrs.field(default=0, metadata={"since": 3})


@attrs.frozen
class NewJob:
    """One job of an :meth:`~actorq.JobQueue.enqueue_many` call.

    ``args`` is a JSON value (or an attrs class / dataclass, unstructured
    through :data:`actorq.converter`). Each of ``dependencies`` is either the
    :class:`~uuid.UUID` of a job that exists already, or the ``int`` index of
    an *earlier* job of the same call (``0`` is the call's first job), so one
    call can enqueue a whole dependency graph.
    """

    job_type: str
    args: Any = None
    dependencies: Sequence[UUID | int] = ()
    channel: str = ""
    cancel_on_failed_dependency: bool = False


@attrs.frozen
class ScheduleInfo:
    """A durable periodic job (:meth:`~actorq.JobQueue.schedule`) and where it stands.

    ``next_slot`` is the next time it fires; ``last_slot`` the last slot it
    fired for (``None`` before the first). Times are timezone-aware, in the
    schedule's ``timezone``.
    """

    name: str
    cron: str
    job_type: str
    args: Any
    channel: str
    timezone: str
    catch_up: str
    next_slot: datetime
    last_slot: datetime | None
