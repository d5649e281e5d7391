"""The SQLite store: a queue's durable log in one local database file.

:class:`SqliteStore` implements :class:`actorq.Store` on the standard
library's :mod:`sqlite3`. The scheduler commits each batch of requests through
:meth:`SqliteStore.commit` in one transaction, and the database runs in WAL
mode with ``synchronous=FULL``, so a commit that returned has been fsynced:
it survives a crash of the process and, as far as the disk honours fsync, of
the machine. See ``docs/durability.md`` for the whole promise.

Every database call runs on a worker thread (through
:func:`actorq._stores._threads.run_sync`, which keeps a mock clock still
meanwhile) so the event loop never waits on the disk. There is one connection per
store, and one call at a time uses it.

The connection holds SQLite's exclusive lock from open to close: a second
queue (in this process or another) that opens the same file gets a
:class:`~actorq.StoreError` instead of silently sharing, and corrupting, the
queue.

Layout (schema version 1): ``jobs`` keyed by the enqueue sequence number (the
rowid, so a full scan comes back in enqueue order), with a unique index on the
job id; ``workers`` in insertion order; ``actorq_schema`` holding the schema
version. UUIDs are 16-byte blobs, a job's dependencies one blob of 16 bytes
per dependency, timestamps integer microseconds since the Unix epoch (UTC),
and arguments and results the queue's JSON text, stored as ``TEXT`` unchanged.
"""

from __future__ import annotations

import gc
import operator
import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, SafeUUID

import attrs
import trio

from .._core._errors import StoreError
from .._core._records import Changes, JobRecord, WorkerRecord
from ._threads import run_sync

__all__ = [
    "SCHEMA_VERSION",
    "SqliteStore",
    "decode_time",
    "encode_time",
    "store_from_url",
    "uuid_from_bytes",
    "uuid_from_int",
]

T = TypeVar("T")

# Each migration takes the schema from version ``i`` to ``i + 1`` and runs in
# the same transaction as the version bump, so an interrupted upgrade leaves
# the database at the old version. Append, never edit: released databases
# exist at every version listed here.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY,
            id BLOB NOT NULL UNIQUE,
            type TEXT NOT NULL,
            channel TEXT NOT NULL,
            args TEXT NOT NULL,
            dependencies BLOB NOT NULL,
            queued INTEGER NOT NULL,
            started INTEGER,
            finished INTEGER,
            canceled INTEGER NOT NULL,
            result TEXT,
            retries INTEGER NOT NULL,
            token BLOB,
            worker_id BLOB
        )
        """,
        """
        CREATE TABLE workers (
            rowid INTEGER PRIMARY KEY,
            id BLOB NOT NULL UNIQUE,
            channel TEXT NOT NULL,
            arch TEXT NOT NULL,
            updated INTEGER NOT NULL
        )
        """,
    ),
)

#: The schema version this code writes. Older databases are migrated on open;
#: newer ones are refused.
SCHEMA_VERSION = len(_MIGRATIONS)

_VERSION_TABLE = "actorq_schema"

_JOB_COLUMNS = (
    "seq, id, type, channel, args, dependencies, queued, started, finished,"
    " canceled, result, retries, token, worker_id"
)
_INSERT_JOB = f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# The other columns of a job never change after its insert.
_UPDATE_JOB = (
    "UPDATE jobs SET started = ?, finished = ?, canceled = ?, result = ?, retries = ?,"
    " token = ?, worker_id = ? WHERE seq = ?"
)
_UPSERT_WORKER = (
    "INSERT INTO workers (id, channel, arch, updated) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET channel = excluded.channel, arch = excluded.arch,"
    " updated = excluded.updated"
)

_FETCH_ROWS = 16384
_CACHE_KIB = 16384


# ---------------------------------------------------------------- encoding

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


def _job_row(rec: JobRecord) -> tuple[Any, ...]:
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
    )


def _job_update_row(rec: JobRecord) -> tuple[Any, ...]:
    return (
        _optional_time(rec.started),
        _optional_time(rec.finished),
        1 if rec.canceled else 0,
        rec.result,
        rec.retries,
        _optional_bytes(rec.token),
        _optional_bytes(rec.worker_id),
        rec.seq,
    )


def _make_fast_record() -> Callable[..., JobRecord]:
    # JobRecord is frozen, so its attrs __init__ sets each of its 14 slots
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
        (s_started, s_finished, s_canceled, s_result, s_retries, s_token, s_worker) = setters[7:]
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
    )
    try:
        made, real = fast_record(*values), JobRecord(*values)
        if made == real and hash(made) == hash(real) and repr(made) == repr(real):
            return fast_record
    except Exception:  # an attrs that lays classes out differently
        pass
    return JobRecord


_new_record = _make_fast_record()


_first = operator.itemgetter(0)
_last = operator.itemgetter(-1)


def _worker_row(rec: WorkerRecord) -> tuple[Any, ...]:
    return (rec.id.bytes, rec.channel, rec.arch, encode_time(rec.updated))


# ------------------------------------------------------------- the store


class SqliteStore:
    """A :class:`actorq.Store` in a SQLite database file.

    ``path`` is the database file; it is created, with its schema, on first
    use. A relative path is resolved against the working directory now, not
    at open. Nothing touches the file until :meth:`load` (or a first
    :meth:`commit`), so constructing a store never blocks.

    Only one store may have a file open at a time, in any process: a second
    one fails to open with :class:`StoreError`. :meth:`close` releases it.
    A store can be opened again after it was closed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        text = os.fspath(path)
        if not isinstance(text, str):
            raise TypeError("path must be a str or os.PathLike[str]")
        if text in ("", ":memory:"):
            raise ValueError(
                f"{text!r} is not a database file; use memory:// for a queue that keeps nothing"
            )
        self._path = os.path.abspath(text)
        self._conn: sqlite3.Connection | None = None
        # Only one thread may use the connection at a time; the scheduler
        # already commits one batch at a time, this also covers close().
        self._limiter = trio.CapacityLimiter(1)
        self._failure: str | None = None
        self._last_seq = 0  # the highest job seq in the file

    @property
    def path(self) -> str:
        """The absolute path of the database file."""
        return self._path

    def __repr__(self) -> str:
        return f"SqliteStore({self._path!r})"

    # ------------------------------------------------------------ Store API

    async def load(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        """Open the database (creating or migrating its schema) and read it.

        Returns every job in enqueue order and every worker in insertion
        order. Raises :class:`StoreError`, with the store closed again, if the
        file cannot be opened, is in use by another queue, is not an actorq
        database, was written by a newer actorq, or holds inconsistent
        records: a queue is rebuilt from all of it or not at all.

        The read runs to completion on a worker thread even if the caller is
        cancelled; the cancellation then takes effect and the store is closed.
        A connection this store already had open is closed first.
        """
        try:
            return await self._run(self._load_sync)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.close()
            raise

    async def commit(self, changes: Changes) -> None:
        """Write one batch of changes in one transaction, durable when this returns.

        Opens the database first if :meth:`load` has not. Raises
        :class:`StoreError` if the write fails; then nothing of the batch is
        in the file, and every later commit fails too, because the queue's
        memory has moved past what the file holds: reopen the queue to carry
        on from the last good commit. The write runs to completion on a
        worker thread even if the caller is cancelled.
        """
        if not changes:
            return
        await self._run(self._commit_sync, changes)

    async def watch(self) -> None:
        """Wait forever: the file's exclusive lock keeps this store the only writer.

        Returns only by cancellation (when the queue closes).
        """
        await trio.sleep_forever()

    async def close(self) -> None:
        """Close the database, releasing its lock. Waits for a write in flight; idempotent."""
        await self._run(self._close_sync)

    # --------------------------------------------------------------- threads

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_sync(fn, *args, limiter=self._limiter)

    def _open_sync(self) -> sqlite3.Connection:
        self._close_sync()
        try:
            conn = sqlite3.connect(
                self._path, timeout=0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc
        try:
            # Exclusive locking first: the lock is then held from the first
            # write below until close, and WAL keeps its index in this
            # process's memory instead of a shared -shm file.
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self._path}: cannot use WAL journaling (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            conn.execute("BEGIN EXCLUSIVE")
            try:
                self._migrate(conn)
                self._last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM jobs").fetchone()[
                    0
                ]
                conn.execute("COMMIT")
            except BaseException:
                conn.rollback()
                raise
        except sqlite3.Error as exc:
            conn.close()
            raise self._open_error(exc) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._failure = None
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            conn.execute(f"CREATE TABLE {_VERSION_TABLE} (version INTEGER NOT NULL)")
            conn.execute(f"INSERT INTO {_VERSION_TABLE} (version) VALUES (0)")
        elif _VERSION_TABLE not in tables:
            raise StoreError(
                f"{self._path} is a SQLite database but not an actorq queue"
                f" (it has no {_VERSION_TABLE} table)"
            )
        rows = conn.execute(f"SELECT version FROM {_VERSION_TABLE}").fetchall()
        if len(rows) != 1 or type(rows[0][0]) is not int or rows[0][0] < 0:
            raise StoreError(f"{self._path}: the schema version record is corrupt ({rows!r})")
        version: int = rows[0][0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._path} has schema version {version}, newer than this actorq supports"
                f" ({SCHEMA_VERSION}); it was written by a newer actorq: upgrade to open it"
            )
        # Structural damage (a torn page, a truncated file) is found here,
        # at open, rather than by a later commit; a full scan of the jobs
        # follows anyway, so this costs one more pass over the file.
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreError(f"{self._path} is corrupt: {'; '.join(map(str, problems))}")
        if version == SCHEMA_VERSION:
            return
        try:
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
        except sqlite3.Error as exc:
            raise StoreError(
                f"{self._path}: migrating the schema from version {version} to"
                f" {SCHEMA_VERSION} failed, and nothing was changed: {exc}"
            ) from exc
        conn.execute(f"UPDATE {_VERSION_TABLE} SET version = ?", (SCHEMA_VERSION,))

    def _open_error(self, exc: sqlite3.Error) -> StoreError:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return StoreError(
                f"{self._path} is in use by another queue; only one queue may open a"
                " database file at a time"
            )
        if code == sqlite3.SQLITE_NOTADB:
            return StoreError(f"{self._path} is not a SQLite database (or its header is corrupt)")
        if code == sqlite3.SQLITE_CORRUPT:
            return StoreError(f"{self._path} is corrupt: {exc}")
        if code == sqlite3.SQLITE_CANTOPEN:
            return StoreError(f"{self._path} cannot be opened: {exc}")
        return StoreError(f"{self._path} cannot be opened: {exc}")

    def _load_sync(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        conn = self._open_sync()
        try:
            workers = self._read_workers(conn)
            jobs = self._read_jobs(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path} cannot be read: {exc}") from exc
        return jobs, workers

    def _read_workers(self, conn: sqlite3.Connection) -> list[WorkerRecord]:
        out: list[WorkerRecord] = []
        for raw_id, channel, arch, updated in conn.execute(
            "SELECT id, channel, arch, updated FROM workers ORDER BY rowid"
        ):
            try:
                if type(channel) is not str or type(arch) is not str:
                    raise TypeError("channel and arch must be text")
                out.append(
                    WorkerRecord(uuid_from_bytes(raw_id), channel, arch, decode_time(updated))
                )
            except (TypeError, ValueError, OverflowError) as exc:
                raise StoreError(f"{self._path}: corrupt worker record: {exc}") from exc
        return out

    def _read_jobs(self, conn: sqlite3.Connection) -> list[JobRecord]:
        # A reopen creates millions of objects, none of them garbage, and the
        # cyclic collector would rescan the growing heap again and again
        # (a third of the time at a million jobs): pause it meanwhile.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._read_jobs_unpaused(conn)
        finally:
            if collecting:
                gc.enable()

    def _read_jobs_unpaused(self, conn: sqlite3.Connection) -> list[JobRecord]:
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
        cursor = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY seq")
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
                        )
                    )
        except KeyError as exc:
            raise StoreError(
                f"{self._path}: corrupt job record (seq {seq}): it depends on a job"
                " that does not precede it"
            ) from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"{self._path}: corrupt job record (seq {seq}): {exc}") from exc
        return out

    def _commit_sync(self, changes: Changes) -> None:
        if self._failure is not None:
            raise StoreError(
                f"{self._path}: an earlier commit failed ({self._failure}); reopen the queue"
            )
        conn = self._conn if self._conn is not None else self._open_sync()
        # Encode before the transaction: a bad record then aborts nothing. A
        # job is new exactly when its seq is above every seq in the file (the
        # queue numbers jobs upwards from the last one it loaded); an old one
        # has only its mutable columns rewritten.
        last_seq = self._last_seq
        inserts = []
        updates = []
        for rec in changes.jobs:
            if rec.seq > last_seq:
                inserts.append(_job_row(rec))
            else:
                updates.append(_job_update_row(rec))
        # In seq order, the rows go to neighbouring pages of the table, and a
        # big batch appends to its end instead of splitting pages all over it.
        inserts.sort(key=_first)
        updates.sort(key=_last)
        deleted_jobs = [(job_id.bytes,) for job_id in changes.deleted_jobs]
        deleted_workers = [(worker_id.bytes,) for worker_id in changes.deleted_workers]
        workers = [_worker_row(rec) for rec in changes.workers]
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if deleted_jobs:
                    conn.executemany("DELETE FROM jobs WHERE id = ?", deleted_jobs)
                if inserts:
                    conn.executemany(_INSERT_JOB, inserts)
                if updates:
                    changed = conn.executemany(_UPDATE_JOB, updates).rowcount
                    if changed != len(updates):
                        raise StoreError(
                            f"{self._path}: {len(updates) - changed} changed jobs are not in"
                            " the file; was it written by another queue?"
                        )
                if deleted_workers:
                    conn.executemany("DELETE FROM workers WHERE id = ?", deleted_workers)
                if workers:
                    conn.executemany(_UPSERT_WORKER, workers)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._failure = str(exc)
            raise StoreError(f"{self._path}: commit failed: {exc}") from exc
        except StoreError as exc:
            self._failure = str(exc)
            raise
        if inserts:
            self._last_seq = max(last_seq, max(row[0] for row in inserts))

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def store_from_url(url: str) -> SqliteStore:
    """A :class:`SqliteStore` for a ``sqlite:`` URL.

    As in SQLAlchemy: ``sqlite:///queue.db`` (three slashes) names a path
    relative to the working directory at this call, ``sqlite:////abs/queue.db``
    (four) an absolute one, so ``f"sqlite:///{path}"`` works for either kind
    of ``path``. ``sqlite:relative.db`` is relative too. The rest of the URL
    is the file name, taken literally (no percent-decoding, no query). Raises
    :class:`ValueError` for any other form (a host, say).
    """
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() != "sqlite":
        raise ValueError(f"not a sqlite: URL: {url!r}")
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host or not slash:
            raise ValueError(
                f"unsupported sqlite URL {url!r}:"
                " use sqlite:///RELATIVE/PATH or sqlite:////ABSOLUTE/PATH"
            )
    else:
        path = rest
    if path in ("", "/"):
        raise ValueError(f"sqlite URL {url!r} names no file")
    return SqliteStore(path)
