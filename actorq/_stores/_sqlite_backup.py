"""Online copies of a SQLite store through SQLite's backup API.

A copy is made in one step of :meth:`sqlite3.Connection.backup` (``pages=-1``),
so it is one read of the database at one commit: every change committed
before it began is in the copy, none half-way. It is written next to ``dest``
under a temporary name, checked (``PRAGMA integrity_check``, actorq's tables),
fsynced and renamed into place, so ``dest`` is either the whole checked copy
or as it was. The copy is a single file in rollback-journal mode (no ``-wal``
beside it): open it as a store, or copy it anywhere.
"""

from __future__ import annotations

import os
import sqlite3

import attrs

from .._core._errors import StoreError

__all__ = [
    "BackupError",
    "BackupResult",
    "backup_connection",
    "backup_file",
    "copy_to_temp",
    "finish_copy",
    "remove_partial",
]


class BackupError(StoreError):
    """The copy could not be made; ``dest`` is as it was. The message is one sentence."""


@attrs.frozen
class BackupResult:
    """A finished copy: where it is, what it holds, its size in bytes."""

    path: str
    jobs: int
    workers: int
    size: int


def backup_file(source: str, dest: str, *, overwrite: bool = False) -> BackupResult:
    """Copy the store file ``source``, which no queue may have open (blocking).

    A queue holds its file's lock while open: copy it through
    :meth:`SqliteStore.backup <actorq.SqliteStore.backup>` in that process
    instead (``actorq serve`` does so for ``actorq backup``). Raises
    :class:`BackupError` when ``source`` is missing, in use or no actorq store.
    """
    source = os.path.abspath(source)
    if not os.path.isfile(source):
        raise BackupError(f"{source} does not exist")
    try:
        conn = sqlite3.connect(f"file:{_quote(source)}?mode=ro", uri=True, timeout=0)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {source}: {exc}") from None
    try:
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise BackupError(
                    f"{source} is open in a queue; back it up through that queue's server"
                ) from None
            raise BackupError(f"cannot read {source}: {exc}") from None
        except sqlite3.DatabaseError:
            raise BackupError(f"{source} is not an actorq store") from None
        return backup_connection(conn, source, dest, overwrite=overwrite)
    finally:
        conn.close()


def backup_connection(
    conn: sqlite3.Connection, source: str, dest: str, *, overwrite: bool = False
) -> BackupResult:
    """Copy the database of the open connection ``conn`` (the file ``source``) to ``dest``.

    Blocking; the connection must not be used by another thread meanwhile.
    Raises :class:`BackupError` if ``dest`` exists (unless ``overwrite``), is
    ``source`` itself or lies in no existing directory, or if the copy fails.
    """
    return finish_copy(copy_to_temp(conn, source, dest, overwrite=overwrite), source, dest)


def copy_to_temp(
    conn: sqlite3.Connection, source: str, dest: str, *, overwrite: bool = False
) -> str:
    """The first half of :func:`backup_connection`, the only one that reads ``conn``.

    Copies the database to a temporary file beside ``dest`` and returns its
    path; hand it to :func:`finish_copy` (or :func:`remove_partial`).
    """
    dest = os.path.abspath(dest)
    if os.path.exists(dest):
        if os.path.samefile(source, dest):
            raise BackupError("the backup cannot overwrite its own source")
        if not overwrite:
            raise BackupError(f"{dest} exists already (pass --force to replace it)")
    directory = os.path.dirname(dest)
    if not os.path.isdir(directory):
        raise BackupError(f"the directory of {dest} does not exist")
    temp = f"{dest}.partial-{os.getpid()}"
    try:
        target = sqlite3.connect(temp)
        try:
            # pages=-1: the whole database in one step, so one consistent read
            conn.backup(target, pages=-1)
        finally:
            target.close()
    except sqlite3.Error as exc:
        remove_partial(temp)
        raise BackupError(f"cannot back up {source}: {exc}") from None
    except BaseException:
        remove_partial(temp)
        raise
    return temp


def finish_copy(temp: str, source: str, dest: str) -> BackupResult:
    """Check the copy ``temp``, make it a single file, fsync it and rename it to ``dest``.

    Needs no connection to the source, so a queue's commits go on meanwhile.
    Removes ``temp`` if anything fails.
    """
    dest = os.path.abspath(dest)
    try:
        conn = sqlite3.connect(temp)
        try:
            conn.execute("PRAGMA journal_mode = DELETE")
        finally:
            conn.close()
        jobs, workers = _verify(temp, source)
        _fsync(temp)
        os.replace(temp, dest)
        _fsync(os.path.dirname(dest))
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {source}: {exc}") from None
    except OSError as exc:
        raise BackupError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        remove_partial(temp)
    return BackupResult(path=dest, jobs=jobs, workers=workers, size=os.path.getsize(dest))


def remove_partial(temp: str) -> None:
    """Remove a temporary copy and whatever SQLite left beside it; idempotent."""
    for leftover in (temp, f"{temp}-journal", f"{temp}-wal", f"{temp}-shm"):
        if os.path.exists(leftover):
            os.remove(leftover)


def _verify(temp: str, source: str) -> tuple[int, int]:
    from ._sqlite_schema import VERSION_TABLE

    conn = sqlite3.connect(temp)
    try:
        (check,) = conn.execute("PRAGMA integrity_check").fetchone()
        if check != "ok":
            raise BackupError(f"the copy of {source} fails SQLite's integrity check")
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not {VERSION_TABLE, "jobs", "workers"} <= tables:
            raise BackupError(f"{source} is not an actorq store")
        (jobs,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
        (workers,) = conn.execute("SELECT count(*) FROM workers").fetchone()
    finally:
        conn.close()
    return int(jobs), int(workers)


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
