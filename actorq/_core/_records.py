"""The records a store keeps, and what the core hands out: plain, immutable values."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, TypeAlias
from uuid import UUID

import attrs

__all__ = [
    "Assignment",
    "Changes",
    "JobRecord",
    "JobTuple",
    "ScheduleRecord",
    "WorkerRecord",
    "new_uuid4",
]

_VERSION_4_MASK = ~((0xC000 << 48) | (0xF000 << 64))
_VERSION_4_BITS = (0x8000 << 48) | (0x4000 << 64)


_SAFE_UNKNOWN = uuid.SafeUUID.unknown  # an enum member's lookup costs as much as the rest
_POOL_SIZE = 256  # UUIDs' worth of random bits per os.urandom call
_pool: list[int] = []  # random version 4 UUID values, taken from the end


def _refill() -> None:
    data = os.urandom(16 * _POOL_SIZE)
    _pool.extend(
        (int.from_bytes(data[i : i + 16]) & _VERSION_4_MASK) | _VERSION_4_BITS
        for i in range(0, len(data), 16)
    )


def _forget_pool() -> None:
    # a forked child must not hand out the ids its parent will
    _pool.clear()


os.register_at_fork(after_in_child=_forget_pool)


def new_uuid4() -> UUID:
    """A random (version 4) UUID, made without ``uuid.UUID.__init__``'s argument parsing.

    Every job and token needs one, on the queue's hottest path; this builds
    the same object ``uuid.uuid4()`` does in a fraction of the time. The
    random bits come from ``os.urandom``, as ``uuid.uuid4()``'s do, read for
    many UUIDs at once; a forked child reads its own.
    """
    try:
        value = _pool.pop()
    except IndexError:
        _refill()
        value = _pool.pop()
    made = object.__new__(UUID)
    object.__setattr__(made, "int", value)
    object.__setattr__(made, "is_safe", _SAFE_UNKNOWN)
    return made


JobTuple: TypeAlias = tuple[str, str, Sequence[UUID | int], str, bool]
"""One job of :meth:`QueueState.enqueue_many`: type, args JSON text, dependencies
(ids, or indexes of earlier jobs), channel, ``cancel_on_failed_dependency``."""


class Assignment(NamedTuple):
    """A job handed to a dequeuer. ``args`` is JSON text.

    A named tuple rather than an attrs class: one is made for every job handed
    out, and tuples are the cheapest immutable record Python has.
    """

    id: UUID
    token: UUID
    dependencies: tuple[UUID, ...]
    type: str
    args: str
    channel: str


@attrs.frozen
class JobRecord:
    """The durable form of a job: everything a store keeps, nothing derived."""

    id: UUID
    seq: int
    type: str
    channel: str
    args: str
    dependencies: tuple[UUID, ...]
    queued: datetime
    started: datetime | None
    finished: datetime | None
    canceled: bool
    result: str | None
    retries: int
    token: UUID | None
    worker_id: UUID | None
    failed: bool = False
    cancel_on_failed_dependency: bool = False
    failed_dependency: UUID | None = None
    priority: int = 0
    not_before: datetime | None = None
    unique_key: str | None = None


@attrs.frozen
class WorkerRecord:
    """The durable form of a worker."""

    id: UUID
    channel: str
    arch: str
    updated: datetime
    # every channel, ``channel`` first; empty in a record stored before
    # workers kept them all, which means ``(channel,)``
    channels: tuple[str, ...] = ()


@attrs.frozen
class ScheduleRecord:
    """The durable form of a schedule.

    ``created`` is when it was defined (or last redefined): its first slot is
    the first after it. ``last_slot`` is the last slot it fired for, committed
    with that slot's jobs, so no slot fires twice.
    """

    name: str
    cron: str
    job_type: str
    args: str
    channel: str
    timezone: str
    catch_up: str
    created: datetime
    last_slot: datetime | None


@attrs.frozen
class Changes:
    """What changed since the last :meth:`~actorq._core._state.QueueState.take_changes`."""

    jobs: list[JobRecord]
    deleted_jobs: list[UUID]
    workers: list[WorkerRecord]
    deleted_workers: list[UUID]
    schedules: list[ScheduleRecord] = attrs.field(factory=list)
    deleted_schedules: list[str] = attrs.field(factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.jobs
            or self.deleted_jobs
            or self.workers
            or self.deleted_workers
            or self.schedules
            or self.deleted_schedules
        )
