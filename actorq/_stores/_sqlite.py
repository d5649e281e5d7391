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

The schema and its migrations are in :mod:`._sqlite_schema`, the encoding
and decoding of rows in :mod:`._sqlite_rows`.
"""

from __future__ import annotations

import operator
import os
import sqlite3
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .._core._errors import StoreError
from ._sqlite_rows import (
    decode_time,
    encode_time,
    job_row,
    job_update_row,
    read_jobs,
    read_schedules,
    read_workers,
    schedule_row,
    uuid_from_bytes,
    uuid_from_int,
    worker_row,
)
from ._sqlite_schema import (
    INSERT_JOB,
    SCHEMA_VERSION,
    UPDATE_JOB,
    UPSERT_SCHEDULE,
    UPSERT_WORKER,
    corrupt_error,
    migrate,
)
from ._threads import run_sync

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._core._records import Changes, JobRecord, ScheduleRecord, WorkerRecord
    from ._sqlite_backup import BackupResult

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

_CACHE_KIB = 16384

# result codes (primary) with which SQLite reports a file it cannot write
_WRITE_FAILURES = frozenset(
    {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM}
)

_first = operator.itemgetter(0)
_last = operator.itemgetter(-1)


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

    async def load_schedules(self) -> list[ScheduleRecord]:
        """Every schedule, read on the connection :meth:`load` opened.

        Raises :class:`StoreError` (and closes the store) if they cannot be read.
        """
        try:
            return await self._run(self._load_schedules_sync)
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

    async def backup(
        self, dest: str | os.PathLike[str], *, overwrite: bool = False
    ) -> BackupResult:
        """Copy the database to the file ``dest`` while the queue runs; return what it holds.

        The copy goes through SQLite's backup API on this store's own
        connection, between two commits, so it holds every change committed
        before it and is consistent; commits wait while SQLite copies the
        pages (one read of the file), not while the copy is then checked,
        fsynced and renamed into place. Raises
        :class:`~actorq._stores._sqlite_backup.BackupError` (a
        :class:`StoreError`) if ``dest`` exists and ``overwrite`` is false,
        or if the copy cannot be made; ``dest`` is then as it was. Runs to
        completion on the store's thread even if the caller is cancelled.
        """
        from ._sqlite_backup import finish_copy, remove_partial

        target = os.fspath(dest)
        temp = await self._run(self._backup_copy_sync, target, overwrite)
        if not isinstance(temp, str):
            return temp
        # checks, fsync and rename need no connection: commits go on meanwhile
        try:
            return await run_sync(finish_copy, temp, self._path, target)
        except BaseException:
            remove_partial(temp)
            raise

    def _backup_copy_sync(self, dest: str, overwrite: bool) -> str | BackupResult:
        from ._sqlite_backup import backup_file, copy_to_temp

        if self._conn is None:  # not open: nothing holds the file, copy it whole
            return backup_file(self._path, dest, overwrite=overwrite)
        return copy_to_temp(self._conn, self._path, dest, overwrite=overwrite)

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
                raise self._unwritable() or StoreError(
                    f"{self._path}: cannot use WAL journaling (got {mode!r})"
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            conn.execute("BEGIN EXCLUSIVE")
            try:
                migrate(conn, self._path)
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
            return corrupt_error(self._path)
        if code in _WRITE_FAILURES:
            # SQLite says "disk I/O error" or "attempt to write a readonly
            # database"; the reason is most often the file's permissions
            unwritable = self._unwritable()
            if unwritable is not None:
                return unwritable
        return StoreError(f"{self._path} cannot be opened: {exc}")

    def _unwritable(self) -> StoreError | None:
        """The error for a database file (or directory) this process may not write, if so.

        Asked only once SQLite failed: a file that the permissions seem to
        forbid but SQLite could write is never refused.
        """
        if os.path.exists(self._path) and not os.access(self._path, os.W_OK):
            return StoreError(f"{self._path} is read-only; the queue needs to write to it")
        directory = os.path.dirname(self._path)
        if os.path.isdir(directory) and not os.access(directory, os.W_OK | os.X_OK):
            return StoreError(
                f"{self._path} is in a read-only directory; the queue needs to create"
                f" {os.path.basename(self._path)}-wal next to it"
            )
        return None

    def _load_sync(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        conn = self._open_sync()
        try:
            workers = read_workers(conn, self._path)
            jobs = read_jobs(conn, self._path)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_CORRUPT:
                raise corrupt_error(self._path) from exc
            raise StoreError(f"{self._path} cannot be read: {exc}") from exc
        return jobs, workers

    def _load_schedules_sync(self) -> list[ScheduleRecord]:
        conn = self._conn if self._conn is not None else self._open_sync()
        try:
            return read_schedules(conn, self._path)
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path} cannot be read: {exc}") from exc

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
                inserts.append(job_row(rec))
            else:
                updates.append(job_update_row(rec))
        # In seq order, the rows go to neighbouring pages of the table, and a
        # big batch appends to its end instead of splitting pages all over it.
        inserts.sort(key=_first)
        updates.sort(key=_last)
        deleted_jobs = [(job_id.bytes,) for job_id in changes.deleted_jobs]
        deleted_workers = [(worker_id.bytes,) for worker_id in changes.deleted_workers]
        workers = [worker_row(rec) for rec in changes.workers]
        deleted_schedules = [(name,) for name in changes.deleted_schedules]
        schedules = [schedule_row(rec) for rec in changes.schedules]
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if deleted_jobs:
                    conn.executemany("DELETE FROM jobs WHERE id = ?", deleted_jobs)
                if inserts:
                    conn.executemany(INSERT_JOB, inserts)
                if updates:
                    changed = conn.executemany(UPDATE_JOB, updates).rowcount
                    if changed != len(updates):
                        raise StoreError(
                            f"{self._path}: {len(updates) - changed} changed jobs are not in"
                            " the file; was it written by another queue?"
                        )
                if deleted_workers:
                    conn.executemany("DELETE FROM workers WHERE id = ?", deleted_workers)
                if workers:
                    conn.executemany(UPSERT_WORKER, workers)
                if deleted_schedules:
                    conn.executemany("DELETE FROM schedules WHERE name = ?", deleted_schedules)
                if schedules:
                    conn.executemany(UPSERT_SCHEDULE, schedules)
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
