"""The SQLite store's schema: its migrations, the version check, and its SQL text.

Layout (schema version 5, whose last step adds ``workers.channels``): ``jobs``
keyed by the enqueue sequence number (the rowid, so a full scan comes back in
enqueue order), with a unique index on the job id; ``workers`` in insertion
order; ``actorq_schema`` holding the schema version. UUIDs are 16-byte blobs,
a job's dependencies one blob of 16 bytes per dependency, timestamps integer
microseconds since the Unix epoch (UTC), and arguments and results the
queue's JSON text, stored as ``TEXT`` unchanged.
Version 2 adds the job lifecycle's columns: ``failed`` (settled as a failure),
``cancel_on_failed_dependency`` and ``failed_dependency`` (the dependency
whose failure canceled the job). Version 3 adds ``priority``, ``not_before``
(integer microseconds, like every timestamp) and ``unique_key``. Version 4
adds the ``schedules`` table, keyed by name: a schedule's definition, when it
was defined (``created``) and the last slot it fired for (``last_slot``),
timestamps as integer microseconds.
"""

from __future__ import annotations

import sqlite3

from .._core._errors import StoreError

__all__ = [
    "INSERT_JOB",
    "JOB_COLUMNS",
    "SCHEMA_VERSION",
    "UPDATE_JOB",
    "UPSERT_SCHEDULE",
    "UPSERT_WORKER",
    "VERSION_TABLE",
    "corrupt_error",
    "migrate",
]

# Every channel of a worker, as a JSON array of strings (``[]`` in a row
# written before: the row's one ``channel``). Kept as one entry of its own so
# that it can take whichever version is next.
_WORKER_CHANNELS_MIGRATION: tuple[str, ...] = (
    "ALTER TABLE workers ADD COLUMN channels TEXT NOT NULL DEFAULT '[]'",
)

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
    (
        "ALTER TABLE jobs ADD COLUMN failed INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN cancel_on_failed_dependency INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN failed_dependency BLOB",
    ),
    (
        "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN not_before INTEGER",
        "ALTER TABLE jobs ADD COLUMN unique_key TEXT",
    ),
    (
        """
        CREATE TABLE schedules (
            name TEXT PRIMARY KEY,
            cron TEXT NOT NULL,
            job_type TEXT NOT NULL,
            args TEXT NOT NULL,
            channel TEXT NOT NULL,
            timezone TEXT NOT NULL,
            catch_up TEXT NOT NULL,
            created INTEGER NOT NULL,
            last_slot INTEGER
        )
        """,
    ),
    _WORKER_CHANNELS_MIGRATION,
)

#: The schema version this code writes. Older databases are migrated on open;
#: newer ones are refused.
SCHEMA_VERSION = len(_MIGRATIONS)

VERSION_TABLE = "actorq_schema"

JOB_COLUMNS = (
    "seq, id, type, channel, args, dependencies, queued, started, finished,"
    " canceled, result, retries, token, worker_id, failed, cancel_on_failed_dependency,"
    " failed_dependency, priority, not_before, unique_key"
)
INSERT_JOB = f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join(['?'] * 20)})"
# The other columns of a job never change after its insert.
UPDATE_JOB = (
    "UPDATE jobs SET started = ?, finished = ?, canceled = ?, result = ?, retries = ?,"
    " token = ?, worker_id = ?, failed = ?, failed_dependency = ?, not_before = ?"
    " WHERE seq = ?"
)
UPSERT_WORKER = (
    "INSERT INTO workers (id, channel, arch, updated, channels) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET channel = excluded.channel, arch = excluded.arch,"
    " updated = excluded.updated, channels = excluded.channels"
)

UPSERT_SCHEDULE = (
    "INSERT INTO schedules (name, cron, job_type, args, channel, timezone, catch_up, created,"
    " last_slot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, job_type = excluded.job_type,"
    " args = excluded.args, channel = excluded.channel, timezone = excluded.timezone,"
    " catch_up = excluded.catch_up, created = excluded.created, last_slot = excluded.last_slot"
)


def corrupt_error(path: str) -> StoreError:
    """The error for a damaged database file.

    One sentence naming the file: what SQLite's checks found is no use to
    whoever restores the file, and could quote the jobs' data.
    """
    return StoreError(f"{path} is corrupt; restore it from a backup")


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema in an empty database, or migrate an older one to :data:`SCHEMA_VERSION`.

    Runs inside the caller's transaction. Raises :class:`StoreError` for a
    database that is not an actorq queue, has a newer or corrupt version
    record, fails its structural check, or fails to migrate (the caller's
    rollback then leaves it as it was).
    """
    tables = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if not tables:
        conn.execute(f"CREATE TABLE {VERSION_TABLE} (version INTEGER NOT NULL)")
        conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (0)")
    elif VERSION_TABLE not in tables:
        raise StoreError(
            f"{path} is a SQLite database but not an actorq queue (it has no {VERSION_TABLE} table)"
        )
    rows = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchall()
    if len(rows) != 1 or type(rows[0][0]) is not int or rows[0][0] < 0:
        raise StoreError(f"{path}: the schema version record is corrupt ({rows!r})")
    version: int = rows[0][0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this actorq supports"
            f" ({SCHEMA_VERSION}); it was written by a newer actorq: upgrade to open it"
        )
    # Structural damage (a torn page, a truncated file) is found here,
    # at open, rather than by a later commit; a full scan of the jobs
    # follows anyway, so this costs one more pass over the file.
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(1)")]
    if problems != ["ok"]:
        raise corrupt_error(path)
    if version == SCHEMA_VERSION:
        return
    try:
        for step in _MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
    except sqlite3.Error as exc:
        raise StoreError(
            f"{path}: migrating the schema from version {version} to"
            f" {SCHEMA_VERSION} failed, and nothing was changed: {exc}"
        ) from exc
    conn.execute(f"UPDATE {VERSION_TABLE} SET version = ?", (SCHEMA_VERSION,))
