"""State-change events: what the core tells observers, as plain immutable values.

A :class:`~actorq._core._state.QueueState` built with ``track_events=True``
appends one event per state change to a list that
:meth:`~actorq._core._state.QueueState.take_events` hands over; one built
without it makes none and pays one ``if`` per change. The scheduler actor
publishes each committed batch's events to its subscribers, followed by a
:class:`Committed` event of its own (see :mod:`actorq._actor._scheduler`).

Every job event names the job's ``job_type`` and ``channel``, so an observer
can count by them without keeping a record per job. The phase a job left is
given where it can be more than one (:attr:`JobFinished.before`,
:attr:`JobCanceled.before`, :attr:`JobDeleted.phase`), so gauges such as queue
depth follow from the events alone:

- :class:`JobEnqueued` enters ``READY`` (or ``BLOCKED``, waiting on
  dependencies); :class:`JobReady` moves ``BLOCKED`` to ``READY``;
- :class:`JobStarted` moves ``READY`` to ``RUNNING``, also for a job handed to
  a parked dequeuer the moment it became ready (it follows the event that
  made it ready);
- :class:`JobRequeued` and :class:`JobReleased` move ``RUNNING`` to ``READY``;
- :class:`JobFinished` and :class:`JobCanceled` end in ``FINISHED`` and
  ``CANCELED``; :class:`JobDeleted` removes the job;
- :class:`JobRetried` moves a job back to ``READY`` or ``BLOCKED``: from
  ``FAILED`` or ``CANCELED`` (``retry_job``), or from ``READY`` (a ready
  dependent of a retried job, which waits for it again).

Durations are measured on the core's monotonic clock at the change. They are
``None`` when the job entered its phase before the queue was restored from a
store: the core does not know when that was.
"""

from __future__ import annotations

import enum
from typing import TypeAlias
from uuid import UUID

import attrs
import orjson

__all__ = [
    "Committed",
    "Event",
    "JobCanceled",
    "JobDeleted",
    "JobEnqueued",
    "JobFinished",
    "JobReady",
    "JobReleased",
    "JobRequeued",
    "JobRetried",
    "JobStarted",
    "Phase",
    "WorkerDeleted",
    "WorkerSeen",
    "is_error_result",
]


class Phase(enum.Enum):
    """Where a job is in its life; ``BLOCKED`` and ``READY`` are both pending."""

    BLOCKED = "blocked"  # pending, some dependency unfinished
    READY = "ready"  # pending, every dependency finished: it can be dequeued
    RUNNING = "running"
    FINISHED = "finished"
    CANCELED = "canceled"
    FAILED = "failed"  # settled as a failure


def is_error_result(text: str) -> bool:
    """Whether a result (JSON text) is an error result: an object with a non-null ``"error"``.

    Parsed only when the text mentions ``"error"`` at all, so plain results cost
    one substring search. Text that is not JSON is not an error result.
    """
    if '"error"' not in text:
        return False
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and value.get("error") is not None


@attrs.frozen
class JobEnqueued:
    """A job was added; ``ready`` is False while some dependency is unfinished."""

    job_id: UUID
    job_type: str
    channel: str
    ready: bool


@attrs.frozen
class JobReady:
    """A blocked job's last unfinished dependency finished: it can be dequeued now."""

    job_id: UUID
    job_type: str
    channel: str


@attrs.frozen
class JobStarted:
    """A ready job was handed to a dequeuer (for ``worker_id``, if it named one).

    ``waited`` is the queue latency: seconds from the job becoming ready
    (enqueued, its dependencies finished, requeued or given back) to now.
    ``dequeue_wait`` is how long the dequeuer that got it had been parked
    waiting, 0.0 if it found the job ready.
    """

    job_id: UUID
    job_type: str
    channel: str
    worker_id: UUID | None
    waited: float | None
    dequeue_wait: float


@attrs.frozen
class JobFinished:
    """A job finished with a result.

    ``before`` is ``RUNNING``, or ``READY``/``BLOCKED`` for a job failed before
    it started (``fail_job``). ``error`` tells a failure: a job settled as
    failed (``fail_job``, or a finish that said ``failed=True``), never a
    guess from the result's shape. ``ran``
    is seconds from start to finish, ``None`` for a job that never started.
    """

    job_id: UUID
    job_type: str
    channel: str
    worker_id: UUID | None
    before: Phase
    error: bool
    ran: float | None


@attrs.frozen
class JobRequeued:
    """A running job went back to the ready jobs to be retried; ``retries`` counts this one."""

    job_id: UUID
    job_type: str
    channel: str
    worker_id: UUID | None
    retries: int


@attrs.frozen
class JobReleased:
    """A job handed out was given back undelivered: it is ready again, its token void."""

    job_id: UUID
    job_type: str
    channel: str
    worker_id: UUID | None


@attrs.frozen
class JobCanceled:
    """A pending or running job was canceled (directly, or as a dependent of one)."""

    job_id: UUID
    job_type: str
    channel: str
    worker_id: UUID | None
    before: Phase


@attrs.frozen
class JobRetried:
    """A job went back to pending through ``retry_job``: the job retried, a
    dependent canceled on its account, or (``before`` ``READY``, ``ready``
    False) a ready dependent that waits for the retried job again."""

    job_id: UUID
    job_type: str
    channel: str
    before: Phase
    ready: bool


@attrs.frozen
class JobDeleted:
    """A job was deleted while in ``phase`` (never ``RUNNING``)."""

    job_id: UUID
    job_type: str
    channel: str
    phase: Phase


@attrs.frozen
class WorkerSeen:
    """A worker was registered (``new``) or reported its status."""

    worker_id: UUID
    channel: str
    arch: str
    new: bool


@attrs.frozen
class WorkerDeleted:
    """A worker was removed."""

    worker_id: UUID


@attrs.frozen
class Committed:
    """Made by the scheduler, last in every batch it publishes: the batch is durable.

    ``requests`` counts the requests the batch applied (0 for a follow-up
    round that only puts back jobs whose requesters went away). ``seconds`` is
    how long the store's commit took, ``None`` if nothing was written (no
    store, or nothing changed). ``waiting`` is the number of parked dequeuers
    once the batch was applied.
    """

    requests: int
    seconds: float | None
    waiting: int


Event: TypeAlias = (
    JobEnqueued
    | JobReady
    | JobStarted
    | JobFinished
    | JobRequeued
    | JobReleased
    | JobCanceled
    | JobRetried
    | JobDeleted
    | WorkerSeen
    | WorkerDeleted
    | Committed
)
