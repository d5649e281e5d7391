"""Rows of the SQLite store: encoding records for writing, and decoding them on load.

Encoding is plain; decoding is the hot loop of a reopen (a million jobs), so
it takes shortcuts, each used only after a self-check at import shows that it
builds exactly what the plain constructor would. Every check that
:meth:`QueueState.restore` would fail on is made while decoding, so a bad file
is a :class:`StoreError` and never half a queue.
"""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID, SafeUUID

import attrs
import orjson

from .._core._errors import StoreError
from .._core._records import JobRecord, ScheduleRecord, WorkerRecord
from ._sqlite_schema import JOB_COLUMNS

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable

__all__ = [
    "decode_time",
    "encode_time",
    "job_row",
    "job_update_row",
    "read_jobs",
    "read_workers",
    "uuid_from_bytes",
    "uuid_from_int",
    "worker_row",
]

_FETCH_ROWS = 16384

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Below 2**33 seconds (the year 2242) a float timestamp is within half a
# microsecond of the stored integer, and fromtimestamp rounds to the nearest
# microsecond, so the fast path is exact there; anything else takes the
# integer path.
_FAST_TIME_LIMIT = 2**33 * 1_000_000
_from_timestamp = datetime.fromtimestamp


def encode_time(value: datetime) -> int:
    """A timezone-aware datetime as integer microseconds since the Unix epoch.

    Raises :class:`TypeError` for a naive datetime.
    """
    return (value - _EPOCH) // _MICROSECOND


def decode_time(value: int) -> datetime:
    """The inverse of :func:`encode_time`: an aware UTC datetime, exactly."""
    if type(value) is not int:
        raise TypeError(f"timestamp is {type(value).__name__}, not an integer")
    if 0 <= value < _FAST_TIME_LIMIT:
        return _from_timestamp(value / 1e6, UTC)
    return _EPOCH + timedelta(0, 0, value)


def _exact_uuid(value: int) -> UUID:
    return UUID(int=value)


def _make_fast_uuid() -> Callable[[int], UUID]:
    # UUID(int=...) validates its arguments in Python and costs about three
    # times this; a million jobs make that seconds of a reopen. The shortcut
    # sets the same two slots UUID.__init__ sets, and is used only if it
    # builds a UUID indistinguishable from the real constructor's.
    new = object.__new__
    set_slot = object.__setattr__
    unknown = SafeUUID.unknown

    def fast_uuid(value: int) -> UUID:
        made = new(UUID)
        set_slot(made, "int", value)
        set_slot(made, "is_safe", unknown)
        return made

    probe = int.from_bytes(bytes(range(16)))
    try:
        made, real = fast_uuid(probe), UUID(int=probe)
        if made == real and str(made) == str(real) and made.is_safe is real.is_safe:
            return fast_uuid
    except Exception:  # a Python whose UUID is laid out differently
        pass
    return _exact_uuid


#: A UUID from its 128-bit integer (which must be in range), fast.
uuid_from_int = _make_fast_uuid()


def uuid_from_bytes(raw: object) -> UUID:
    """A UUID from a 16-byte blob; :class:`ValueError` for anything else."""
    if type(raw) is not bytes or len(raw) != 16:
        raise ValueError("id is not a 16-byte blob")
    return uuid_from_int(int.from_bytes(raw))


def _optional_time(value: datetime | None) -> int | None:
    return None if value is None else encode_time(value)


def _optional_bytes(value: UUID | None) -> bytes | None:
    return None if value is None else value.bytes


def job_row(rec: JobRecord) -> tuple[Any, ...]:
    return (
        rec.seq,
        rec.id.bytes,
        rec.type,
        rec.channel,
        rec.args,
        b"".join([dep.bytes for dep in rec.dependencies]),
        encode_time(rec.queued),
        _optional_time(rec.started),
        _optional_time(rec.finished),
        1 if rec.canceled else 0,
        rec.result,
        rec.retries,
        _optional_bytes(rec.token),
        _optional_bytes(rec.worker_id),
        1 if rec.failed else 0,
        1 if rec.cancel_on_failed_dependency else 0,
        _optional_bytes(rec.failed_dependency),
        rec.priority,
        _optional_time(rec.not_before),
        rec.unique_key,
    )


def job_update_row(rec: JobRecord) -> tuple[Any, ...]:
    return (
        _optional_time(rec.started),
        _optional_time(rec.finished),
        1 if rec.canceled else 0,
        rec.result,
        rec.retries,
        _optional_bytes(rec.token),
        _optional_bytes(rec.worker_id),
        1 if rec.failed else 0,
        _optional_bytes(rec.failed_dependency),
        _optional_time(rec.not_before),
        rec.seq,
    )


def _make_fast_record() -> Callable[..., JobRecord]:
    # JobRecord is frozen, so its attrs __init__ sets each of its 20 slots
    # through object.__setattr__, by name; setting them through the slot
    # descriptors halves the cost of the reopen's hottest line. Used only if
    # JobRecord is still a plain slotted class with these fields, in this
    # order, and the shortcut builds a record equal to the constructor's.
    try:
        fields = attrs.fields(JobRecord)
        if any(f.validator or f.converter or not f.init for f in fields):
            return JobRecord
        setters = [JobRecord.__dict__[f.name].__set__ for f in fields]
        (s_id, s_seq, s_type, s_channel, s_args, s_deps, s_queued) = setters[:7]
        (s_started, s_finished, s_canceled, s_result, s_retries, s_token, s_worker) = setters[7:14]
        (s_failed, s_cancel_on_failed, s_failed_dependency) = setters[14:17]
        (s_priority, s_not_before, s_unique_key) = setters[17:]
    except (KeyError, AttributeError, TypeError, ValueError):
        return JobRecord
    new = object.__new__

    def fast_record(
        id: UUID,
        seq: int,
        type: str,
        channel: str,
        args: str,
        dependencies: tuple[UUID, ...],
        queued: datetime,
        started: datetime | None,
        finished: datetime | None,
        canceled: bool,
        result: str | None,
        retries: int,
        token: UUID | None,
        worker_id: UUID | None,
        failed: bool = False,
        cancel_on_failed_dependency: bool = False,
        failed_dependency: UUID | None = None,
        priority: int = 0,
        not_before: datetime | None = None,
        unique_key: str | None = None,
    ) -> JobRecord:
        made: JobRecord = new(JobRecord)
        s_id(made, id)
        s_seq(made, seq)
        s_type(made, type)
        s_channel(made, channel)
        s_args(made, args)
        s_deps(made, dependencies)
        s_queued(made, queued)
        s_started(made, started)
        s_finished(made, finished)
        s_canceled(made, canceled)
        s_result(made, result)
        s_retries(made, retries)
        s_token(made, token)
        s_worker(made, worker_id)
        s_failed(made, failed)
        s_cancel_on_failed(made, cancel_on_failed_dependency)
        s_failed_dependency(made, failed_dependency)
        s_priority(made, priority)
        s_not_before(made, not_before)
        s_unique_key(made, unique_key)
        return made

    now = datetime.now(UTC)
    values = (
        UUID(int=1),
        7,
        "t",
        "c",
        "[]",
        (UUID(int=2),),
        now,
        now,
        None,
        True,
        "1",
        2,
        None,
        None,
        True,
        True,
        UUID(int=3),
        -4,
        now,
        "k",
    )
    try:
        made, real = fast_record(*values), JobRecord(*values)
        if made == real and hash(made) == hash(real) and repr(made) == repr(real):
            return fast_record
    except Exception:  # an attrs that lays classes out differently
        pass
    return JobRecord


_new_record = _make_fast_record()


def worker_row(rec: WorkerRecord) -> tuple[Any, ...]:
    channels = orjson.dumps(list(rec.channels)).decode()
    return (rec.id.bytes, rec.channel, rec.arch, encode_time(rec.updated), channels)


def schedule_row(rec: ScheduleRecord) -> tuple[Any, ...]:
    return (
        rec.name,
        rec.cron,
        rec.job_type,
        rec.args,
        rec.channel,
        rec.timezone,
        rec.catch_up,
        encode_time(rec.created),
        _optional_time(rec.last_slot),
    )


# ---------------------------------------------------------------- decoding


def read_schedules(conn: sqlite3.Connection, path: str) -> list[ScheduleRecord]:
    """Every schedule row, by name; :class:`StoreError` for a corrupt one."""
    out: list[ScheduleRecord] = []
    for row in conn.execute(
        "SELECT name, cron, job_type, args, channel, timezone, catch_up, created, last_slot"
        " FROM schedules ORDER BY name"
    ):
        try:
            name, cron, job_type, args, channel, timezone, catch_up, created, last_slot = row
            if not all(type(value) is str for value in row[:7]):
                raise TypeError("a schedule's definition must be text")
            out.append(
                ScheduleRecord(
                    name,
                    cron,
                    job_type,
                    args,
                    channel,
                    timezone,
                    catch_up,
                    decode_time(created),
                    None if last_slot is None else decode_time(last_slot),
                )
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"{path}: corrupt schedule record: {exc}") from exc
    return out


def read_workers(conn: sqlite3.Connection, path: str) -> list[WorkerRecord]:
    """Every worker row, in insertion order; :class:`StoreError` for a corrupt one."""
    out: list[WorkerRecord] = []
    for raw_id, channel, arch, updated, raw_channels in conn.execute(
        "SELECT id, channel, arch, updated, channels FROM workers ORDER BY rowid"
    ):
        try:
            if type(channel) is not str or type(arch) is not str or type(raw_channels) is not str:
                raise TypeError("channel, arch and channels must be text")
            channels = orjson.loads(raw_channels)
            if type(channels) is not list or not all(type(c) is str for c in channels):
                raise TypeError("channels must be a JSON array of strings")
            out.append(
                WorkerRecord(
                    uuid_from_bytes(raw_id), channel, arch, decode_time(updated), tuple(channels)
                )
            )
        except (TypeError, ValueError, OverflowError, orjson.JSONDecodeError) as exc:
            raise StoreError(f"{path}: corrupt worker record: {exc}") from exc
    return out


def read_jobs(conn: sqlite3.Connection, path: str) -> list[JobRecord]:
    """Every job row, in enqueue order; :class:`StoreError` for a corrupt or inconsistent one."""
    # A reopen creates millions of objects, none of them garbage, and the
    # cyclic collector would rescan the growing heap again and again
    # (a third of the time at a million jobs): pause it meanwhile.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _read_jobs_unpaused(conn, path)
    finally:
        if collecting:
            gc.enable()


def _read_jobs_unpaused(conn: sqlite3.Connection, path: str) -> list[JobRecord]:
    # The hot loop of a reopen, so names are bound locally and the common
    # cases are inline. Every check that QueueState.restore would fail on
    # with ValueError is made here, so that a bad file is a StoreError and
    # never half a queue.
    out: list[JobRecord] = []
    append = out.append
    make_uuid = uuid_from_int
    from_bytes = int.from_bytes
    from_timestamp = _from_timestamp
    utc = UTC
    fast_limit = _FAST_TIME_LIMIT
    record = _new_record
    strings: dict[str, str] = {}  # one object per distinct type and channel
    intern = strings.setdefault
    known: dict[int, UUID] = {}  # the jobs read so far, by id as an integer
    cursor = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY seq")
    seq: Any = None
    try:
        while rows := cursor.fetchmany(_FETCH_ROWS):
            for (
                seq,
                raw_id,
                job_type,
                channel,
                args,
                raw_deps,
                queued,
                started,
                finished,
                canceled,
                result,
                retries,
                raw_token,
                raw_worker,
                failed,
                cancel_on_failed,
                raw_failed_dependency,
                priority,
                not_before,
                unique_key,
            ) in rows:
                if type(raw_id) is not bytes or len(raw_id) != 16:
                    raise ValueError("job id is not a 16-byte blob")
                key = from_bytes(raw_id)
                if key in known:
                    raise ValueError("job id appears twice")
                job_id = known[key] = make_uuid(key)
                if raw_deps:
                    if type(raw_deps) is not bytes or len(raw_deps) % 16:
                        raise ValueError("dependencies are not a blob of 16-byte ids")
                    # A dependency always precedes its dependent (KeyError
                    # if not); sharing its UUID object saves memory.
                    dependencies: tuple[UUID, ...] = tuple(
                        [
                            known[from_bytes(raw_deps[i : i + 16])]
                            for i in range(0, len(raw_deps), 16)
                        ]
                    )
                else:
                    dependencies = ()
                if type(job_type) is not str or type(channel) is not str:
                    raise TypeError("type and channel must be text")
                if type(args) is not str or (result is not None and type(result) is not str):
                    raise TypeError("args and result must be text")
                if canceled not in (0, 1):
                    raise ValueError(f"canceled is {canceled!r}")
                if failed not in (0, 1) or cancel_on_failed not in (0, 1):
                    raise ValueError(f"failed is {failed!r}")
                if failed and finished is None:
                    raise ValueError("failed but never finished")
                if type(priority) is not int:
                    raise ValueError(f"priority is {priority!r}")
                if unique_key is not None and type(unique_key) is not str:
                    raise TypeError("unique_key must be text")
                if type(retries) is not int or retries < 0:
                    raise ValueError(f"retries is {retries!r}")
                if started is None:
                    if finished is not None:
                        raise ValueError("finished but never started")
                elif finished is None and not canceled and raw_token is None:
                    raise ValueError("running without a token")
                append(
                    record(
                        job_id,
                        seq,
                        intern(job_type, job_type),
                        intern(channel, channel),
                        args,
                        dependencies,
                        from_timestamp(queued / 1e6, utc)
                        if type(queued) is int and 0 <= queued < fast_limit
                        else decode_time(queued),
                        None
                        if started is None
                        else from_timestamp(started / 1e6, utc)
                        if type(started) is int and 0 <= started < fast_limit
                        else decode_time(started),
                        None
                        if finished is None
                        else from_timestamp(finished / 1e6, utc)
                        if type(finished) is int and 0 <= finished < fast_limit
                        else decode_time(finished),
                        canceled == 1,
                        result,
                        retries,
                        None if raw_token is None else uuid_from_bytes(raw_token),
                        None if raw_worker is None else uuid_from_bytes(raw_worker),
                        failed == 1,
                        cancel_on_failed == 1,
                        None
                        if raw_failed_dependency is None
                        else uuid_from_bytes(raw_failed_dependency),
                        priority,
                        None if not_before is None else decode_time(not_before),
                        unique_key,
                    )
                )
    except KeyError as exc:
        raise StoreError(
            f"{path}: corrupt job record (seq {seq}): it depends on a job that does not precede it"
        ) from exc
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"{path}: corrupt job record (seq {seq}): {exc}") from exc
    return out
