"""``actorq backup``: an online, consistent copy of a SQLite store.

The copy goes through SQLite's online backup API (:meth:`sqlite3.Connection.backup`)
in a single step, so it is one read transaction: a snapshot of the database at one
commit, taken while a server goes on writing (the store runs in WAL mode, where a
reader blocks no writer). Every job whose enqueue (or change) was acknowledged
before the backup started is in the copy; later ones may or may not be.

The copy is written next to ``DEST`` under a temporary name, checked
(``PRAGMA integrity_check`` and actorq's schema table), fsynced and renamed into
place, so ``DEST`` is either the whole verified copy or untouched.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import attrs
import click

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["BackupError", "BackupResult", "backup_command", "backup_sqlite", "sqlite_path"]


class BackupError(Exception):
    """The backup could not be made; the message is one sentence, ``DEST`` is untouched."""


@attrs.frozen
class BackupResult:
    """What a finished backup holds."""

    path: str
    jobs: int
    workers: int
    size: int


def sqlite_path(store: str) -> str:
    """The database file of ``store``: a ``sqlite:`` URL or a plain path.

    Raises :class:`BackupError` for any other kind of store (PostgreSQL has its
    own tools: ``pg_dump``, base backups, a standby).
    """
    scheme, sep, _ = store.partition(":")
    if sep and scheme.lower() == "sqlite":
        from .._stores._sqlite import store_from_url

        try:
            return store_from_url(store).path
        except ValueError as exc:
            raise BackupError(str(exc)) from None
    if sep and "/" not in scheme and len(scheme) > 1:
        raise BackupError(
            f"backup copies SQLite stores only, not {scheme}: stores"
            " (for PostgreSQL use pg_dump or a standby)"
        )
    return os.path.abspath(store)


def backup_sqlite(
    source: str,
    dest: str,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BackupResult:
    """Copy the actorq SQLite database ``source`` to ``dest`` while it may be in use.

    Blocking (call it from a thread under trio). Raises :class:`BackupError`
    when ``source`` is missing or not an actorq store, when ``dest`` exists
    (unless ``overwrite``) or is ``source`` itself, and when the copy fails its
    integrity check; ``dest`` is then left as it was. ``progress(remaining,
    total)`` is called with SQLite's page counts once the copy is done.
    """
    import sqlite3

    source = os.path.abspath(source)
    dest = os.path.abspath(dest)
    if not os.path.isfile(source):
        raise BackupError(f"{source} does not exist")
    if os.path.exists(dest):
        if os.path.samefile(source, dest):
            raise BackupError("the backup cannot overwrite its own source")
        if not overwrite:
            raise BackupError(f"{dest} exists already (pass --force to replace it)")
    if not os.path.isdir(os.path.dirname(dest)):
        raise BackupError(f"the directory of {dest} does not exist")
    temp = f"{dest}.partial-{os.getpid()}"
    try:
        _copy(source, temp, progress)
        jobs, workers = _verify(temp, source)
        _fsync(temp)
        os.replace(temp, dest)
        _fsync(os.path.dirname(dest))
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {source}: {exc}") from None
    finally:
        for leftover in (temp, f"{temp}-journal", f"{temp}-wal", f"{temp}-shm"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return BackupResult(path=dest, jobs=jobs, workers=workers, size=os.path.getsize(dest))


def _copy(source: str, temp: str, progress: Callable[[int, int], None] | None) -> None:
    import sqlite3

    # read-only: a backup never creates, migrates or checkpoints the source
    src = sqlite3.connect(f"file:{_uri_path(source)}?mode=ro", uri=True)
    try:
        # a server holding a write transaction delays the snapshot, not fails it
        src.execute("PRAGMA busy_timeout = 30000")
        dst = sqlite3.connect(temp)
        try:
            # pages=-1: the whole database in one step, so one read snapshot
            src.backup(dst, pages=-1, progress=None if progress is None else _pages(progress))
            # a self-contained single file: no WAL beside it
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def _pages(progress: Callable[[int, int], None]) -> Callable[[int, int, int], object]:
    def report(status: int, remaining: int, total: int) -> None:
        progress(remaining, total)

    return report


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(path)


def _verify(temp: str, source: str) -> tuple[int, int]:
    import sqlite3

    from .._stores._sqlite_schema import VERSION_TABLE

    conn = sqlite3.connect(temp)
    try:
        (check,) = conn.execute("PRAGMA integrity_check").fetchone()
        if check != "ok":
            raise BackupError(f"the copy of {source} fails SQLite's integrity check")
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if VERSION_TABLE not in tables or "jobs" not in tables:
            raise BackupError(f"{source} is not an actorq store")
        (jobs,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
        (workers,) = conn.execute("SELECT count(*) FROM workers").fetchone()
    finally:
        conn.close()
    return int(jobs), int(workers)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@click.command("backup")
@click.argument("source", metavar="SRC")
@click.argument("dest", metavar="DEST")
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
def backup_command(source: str, dest: str, force: bool) -> None:
    """Copy the SQLite store SRC (a path or sqlite:/// URL) to the file DEST.

    Safe while `actorq serve` runs on SRC: the copy is one consistent
    snapshot through SQLite's backup API, holding every job acknowledged
    before it began. It is checked, then renamed into place.
    """
    from ._main import _fail

    try:
        done = backup_sqlite(sqlite_path(source), dest, overwrite=force)
    except BackupError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot back up {source}: {exc.strerror or exc}")
    click.echo(
        f"backed up {done.jobs} jobs and {done.workers} workers to {done.path} ({done.size} bytes)"
    )
