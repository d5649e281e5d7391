"""Durable periodic jobs: the schedule rules of :class:`~actorq._core.QueueState`.

A schedule names a cron expression (parsed by croniter), a time zone and the
job it enqueues. Its slots are wall-clock times; the scheduler actor waits for
the next one on its monotonic clock (trio's, so a MockClock drives it), like
a delayed job, and fires it by enqueueing the job and marking the slot fired
in the same batch, so the slot's job and its mark are committed together and
no slot fires twice, across restarts and failovers.

A slot that passed while the queue was not serving (closed, or not yet taken
over by a standby) is *missed*; the schedule's ``catch_up`` policy says what
happens to missed slots when the queue next serves:

- ``"last"`` (the default): the last missed slot fires once, at once;
- ``"none"``: missed slots are skipped; the next slot fires on time;
- ``"all"``: every missed slot fires, oldest first, at most
  :data:`MAX_CATCH_UP` of them (the latest ones).
"""

from __future__ import annotations

import heapq
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from ._errors import ProtocolError
from ._models import ScheduleInfo
from ._records import ScheduleRecord
from ._validate import check_storable

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable
    from uuid import UUID

__all__ = [
    "CATCH_UP_POLICIES",
    "MAX_CATCH_UP",
    "ScheduleEntry",
    "ScheduleRules",
    "check_catch_up",
    "check_cron",
    "check_schedule_name",
    "check_timezone",
]

CATCH_UP_POLICIES = ("last", "none", "all")
"""What a schedule does with the slots it missed (see the module docstring)."""

MAX_CATCH_UP = 100
"""The most missed slots one schedule with ``catch_up="all"`` fires at once."""

_TICK = timedelta(microseconds=1)
_REFERENCE = datetime(2001, 1, 1, tzinfo=UTC)


def check_schedule_name(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"name must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError("name must not be empty")
    return check_storable(value, "name")


def check_timezone(value: object) -> str:
    """An IANA time zone name (zoneinfo), such as ``"UTC"`` or ``"Europe/Berlin"``."""
    if not isinstance(value, str):
        raise TypeError(f"timezone must be a str, not {type(value).__name__}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {value!r} is not a known IANA time zone") from None
    return value


def check_cron(value: object) -> str:
    """A cron expression croniter accepts and that has at least one future slot."""
    if not isinstance(value, str):
        raise TypeError(f"cron must be a str, not {type(value).__name__}")
    check_storable(value, "cron")
    if not croniter.is_valid(value):
        raise ValueError(f"cron {value!r} is not a valid cron expression")
    if len(value.split()) > 6:
        # a year field could run out of slots, and a schedule always has a next one
        raise ValueError(f"cron {value!r} has a year field, which schedules do not take")
    try:
        # without a year field, the slots repeat: any start finds one if there is one
        croniter(value, _REFERENCE).get_next(datetime)
    except (CroniterBadCronError, CroniterBadDateError, CroniterError):
        raise ValueError(f"cron {value!r} names no time that ever comes") from None
    return value


def check_catch_up(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"catch_up must be a str, not {type(value).__name__}")
    if value not in CATCH_UP_POLICIES:
        raise ValueError(f"catch_up must be one of {', '.join(CATCH_UP_POLICIES)}, not {value!r}")
    return value


class ScheduleEntry:
    """A schedule in the queue: its definition, its last fired slot, and its timer."""

    __slots__ = (
        "args",
        "catch_up",
        "channel",
        "created",
        "cron",
        "due",
        "generation",
        "job_type",
        "last_slot",
        "name",
        "next_slot",
        "timezone",
        "zone",
    )

    def __init__(self, record: ScheduleRecord) -> None:
        self.name = record.name
        self.cron = record.cron
        self.job_type = record.job_type
        self.args = record.args
        self.channel = record.channel
        self.timezone = record.timezone
        self.catch_up = record.catch_up
        self.created = record.created
        self.last_slot = record.last_slot
        self.zone = ZoneInfo(record.timezone)
        self.next_slot = record.created
        self.due = 0.0
        self.generation = 0

    def record(self) -> ScheduleRecord:
        return ScheduleRecord(
            name=self.name,
            cron=self.cron,
            job_type=self.job_type,
            args=self.args,
            channel=self.channel,
            timezone=self.timezone,
            catch_up=self.catch_up,
            created=self.created,
            last_slot=self.last_slot,
        )

    def info(self) -> ScheduleInfo:
        return ScheduleInfo(
            name=self.name,
            cron=self.cron,
            job_type=self.job_type,
            args=self.args,
            channel=self.channel,
            timezone=self.timezone,
            catch_up=self.catch_up,
            next_slot=self.next_slot,
            last_slot=self.last_slot,
        )

    def same_definition(self, other: ScheduleEntry) -> bool:
        return (
            self.cron,
            self.job_type,
            self.args,
            self.channel,
            self.timezone,
            self.catch_up,
        ) == (other.cron, other.job_type, other.args, other.channel, other.timezone, other.catch_up)

    def local(self, moment: datetime) -> datetime:
        """``moment`` as the schedule's zone's clock reads it (naive)."""
        return moment.astimezone(self.zone).replace(tzinfo=None)

    def slot_after(self, moment: datetime) -> datetime:
        """The first slot after ``moment``, in UTC.

        A slot fires only when the zone's clock reads later than it did at
        ``moment``: when clocks go back, the repeated hour's slots (which the
        clock has read already) are skipped, so ``30 2 * * *`` fires once.
        """
        it = croniter(self.cron, moment.astimezone(self.zone))
        floor = self.local(moment)
        while True:
            found: datetime = it.get_next(datetime)
            if found.replace(tzinfo=None) > floor:
                return found.astimezone(UTC)

    def slots_up_to(self, moment: datetime, after: datetime, limit: int) -> list[datetime]:
        """The latest ``limit`` slots in ``(after, moment]``, oldest first, in UTC
        (the repeated hour's skipped, as by :meth:`slot_after`)."""
        it = croniter(self.cron, (moment + _TICK).astimezone(self.zone))
        raw: list[datetime] = []
        # some slack for the repeated hour's slots, dropped below
        while len(raw) < 2 * limit + 60:
            slot: datetime = it.get_prev(datetime)
            if slot.astimezone(UTC) <= after:
                break
            raw.append(slot)
        raw.reverse()
        found: list[datetime] = []
        floor = self.local(after)
        for slot in raw:
            if slot.replace(tzinfo=None) > floor:
                found.append(slot.astimezone(UTC))
                floor = slot.replace(tzinfo=None)
        return found[-limit:]


class ScheduleRules:
    """The schedule half of :class:`~actorq._core.QueueState` (a mixin).

    The state owns ``_schedules`` (name -> entry) and ``_schedule_timers``, a
    heap of ``(due on the monotonic clock, generation, name)``, deleted lazily:
    an entry is live while its generation matches the schedule's (generations
    come from one counter, ``_schedule_generation``).
    """

    _wall: Callable[[], datetime]
    _monotonic: Callable[[], float]
    _track: bool
    _schedules: dict[str, ScheduleEntry]
    _schedule_timers: list[tuple[float, int, str]]
    _schedule_generation: int
    _changed_schedules: set[str]
    _deleted_schedules: set[str]

    if TYPE_CHECKING:

        def enqueue(
            self, job_type: str, args: str, dependencies: Iterable[UUID] = (), channel: str = ""
        ) -> UUID: ...

    def schedule(
        self,
        name: str,
        cron: str,
        job_type: str,
        args: str,
        channel: str,
        *,
        timezone: str = "UTC",
        catch_up: str = "last",
        scope: Collection[str] | None = None,
    ) -> ScheduleInfo:
        """Define (or redefine) the schedule ``name``; its first slot is the first after now.

        Defining it again exactly as it is changes nothing (so an application
        may declare its schedules at every start); a different definition
        replaces it, counting slots from now. A name held by a schedule in a
        channel outside ``scope`` is :class:`ProtocolError` ``forbidden``.
        """
        existing = self._schedules.get(name)
        if existing is not None and scope is not None and existing.channel not in scope:
            raise ProtocolError(
                f"schedule {name!r} belongs to a channel not open to this token", "forbidden"
            )
        now = self._wall()
        entry = ScheduleEntry(
            ScheduleRecord(
                name=name,
                cron=cron,
                job_type=job_type,
                args=args,
                channel=channel,
                timezone=timezone,
                catch_up=catch_up,
                created=now.astimezone(UTC),
                last_slot=None,
            )
        )
        if existing is not None and existing.same_definition(entry):
            return existing.info()
        self._arm(entry, now)  # first: the definition is checked, but croniter decides
        self._schedules[name] = entry
        self._touch_schedule(name)
        return entry.info()

    def unschedule(self, name: str, scope: Collection[str] | None = None) -> bool:
        """Remove the schedule ``name``; False if there is none (in ``scope``)."""
        entry = self._schedules.get(name)
        if entry is None or (scope is not None and entry.channel not in scope):
            return False
        del self._schedules[name]
        if self._track:
            self._changed_schedules.discard(name)
            self._deleted_schedules.add(name)
        return True

    def schedules(self, scope: Collection[str] | None = None) -> list[ScheduleInfo]:
        """Every schedule (in ``scope``), by name."""
        return [
            self._schedules[name].info()
            for name in sorted(self._schedules)
            if scope is None or self._schedules[name].channel in scope
        ]

    def next_schedule_due(self) -> float | None:
        """When (monotonic clock) the next schedule fires, or ``None``."""
        timers = self._schedule_timers
        while timers:
            due, generation, name = timers[0]
            entry = self._schedules.get(name)
            if entry is not None and entry.generation == generation:
                return due
            heapq.heappop(timers)  # removed or redefined since
        return None

    def fire_due_schedules(self) -> int:
        """Fire every schedule whose slot has come: enqueue its job (every missed
        slot's with ``catch_up="all"``) and mark the slot fired, in this step,
        so one commit holds both. Returns how many jobs it enqueued."""
        timers = self._schedule_timers
        now = self._monotonic()
        fired = 0
        while timers and timers[0][0] <= now:
            _, generation, name = heapq.heappop(timers)
            entry = self._schedules.get(name)
            if entry is None or entry.generation != generation:
                continue
            after = entry.last_slot if entry.last_slot is not None else entry.created
            slot = entry.next_slot
            slots = (
                entry.slots_up_to(slot, after, MAX_CATCH_UP) if entry.catch_up == "all" else [slot]
            )
            for _ in slots:
                self.enqueue(entry.job_type, entry.args, (), entry.channel)
                fired += 1
            entry.last_slot = slot
            self._touch_schedule(name)
            self._arm(entry, self._wall())
        return fired

    def _arm(self, entry: ScheduleEntry, now: datetime) -> None:
        """Set the schedule's next slot and its timer, from the wall clock's ``now``."""
        after = entry.last_slot if entry.last_slot is not None else entry.created
        # The wall clock may lag the last slot fired (a clock that does not
        # move with trio's, or one set back): count from whichever is later,
        # so the next slot is never armed early or twice.
        reference = max(now, after)
        missed = entry.slots_up_to(now, after, 1) if now > after else []
        # one counter for every schedule: a timer left by a removed or replaced
        # schedule never matches whatever takes its name later
        self._schedule_generation += 1
        entry.generation = self._schedule_generation
        if missed and entry.catch_up != "none":
            entry.next_slot = missed[-1]
            entry.due = self._monotonic()  # it fires at once
        else:
            entry.next_slot = entry.slot_after(reference)
            entry.due = self._monotonic() + (entry.next_slot - reference).total_seconds()
        heapq.heappush(self._schedule_timers, (entry.due, entry.generation, entry.name))

    def _touch_schedule(self, name: str) -> None:
        if self._track:
            self._changed_schedules.add(name)
            self._deleted_schedules.discard(name)

    def _restore_schedules(self, records: Iterable[ScheduleRecord]) -> None:
        now = self._wall()
        for record in records:
            entry = ScheduleEntry(record)
            self._schedules[record.name] = entry
            self._arm(entry, now)

    def _take_schedule_changes(self) -> tuple[list[ScheduleRecord], list[str]]:
        changed = [self._schedules[name].record() for name in self._changed_schedules]
        deleted = list(self._deleted_schedules)
        self._changed_schedules = set()
        self._deleted_schedules = set()
        return changed, deleted
