"""The PostgreSQL store's schema: its migrations and the version check.

Tables (schema version 1): ``leader`` (the fencing row), ``workers``,
``jobs`` (with the core's invariants as constraints and a trigger against
transitions no job may make) and ``job_dependencies``, plus
``actorq_schema`` with the version. See ``docs/ha.md``. Version 2 adds the
job lifecycle's columns (``failed``, ``cancel_on_failed_dependency``,
``failed_dependency``) and checks them in the transition trigger; version 3
``priority``, ``not_before`` and ``unique_key``; version 4 the ``schedules``
table (a schedule's definition and the last slot it fired for); version 5
lets the trigger pass a retry (``retry_job``: a failed or canceled job back
to pending); version 6 keeps every channel of a worker (``workers.channels``).
"""

from __future__ import annotations

import logging
from typing import Any, Final

import psycopg
from psycopg import sql

from .._core._errors import StoreError

__all__ = ["SCHEMA_VERSION", "VERSION_TABLE", "check_version", "q"]

log = logging.getLogger("actorq.postgres")

# retry_job: a failed or canceled job may go back to pending, every mark of
# its settling cleared and its retries count set back to 0; a job that
# finished successfully stays final, and so do the other rules. (A failed or
# canceled job that never retried has 0 retries already: for it the trigger
# cannot tell a retry from another change, and the core's rules stand alone.)
# Kept as one entry of its own so that it can take whichever version is next.
_RETRY_MIGRATION: Final[tuple[str, ...]] = (
    """
    CREATE OR REPLACE FUNCTION {s}.check_job_transition() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        -- one commit may hold a retry and what came after it in the same batch
        -- (handed out, settled again), so a retried row is told by its
        -- retries count, which only a retry sets back to 0
        retried boolean := (OLD.failed OR OLD.canceled) AND NEW.retries = 0;
    BEGIN
        IF (NEW.id, NEW.seq, NEW.type, NEW.channel, NEW.args::text, NEW.queued,
            NEW.cancel_on_failed_dependency)
           IS DISTINCT FROM (OLD.id, OLD.seq, OLD.type, OLD.channel, OLD.args::text,
                             OLD.queued, OLD.cancel_on_failed_dependency)
        THEN
            RAISE EXCEPTION 'job %: id, seq, type, channel, args and queued never change',
                OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        IF retried THEN
            RETURN NEW;
        END IF;
        IF NEW.retries < OLD.retries THEN
            RAISE EXCEPTION 'job %: retries never decrease (but in a retry)', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        IF (OLD.finished IS NOT NULL OR OLD.canceled)
           AND (NEW.started, NEW.finished, NEW.canceled, NEW.result::text, NEW.retries,
                NEW.token, NEW.worker_id, NEW.failed, NEW.failed_dependency)
               IS DISTINCT FROM (OLD.started, OLD.finished, OLD.canceled, OLD.result::text,
                                 OLD.retries, OLD.token, OLD.worker_id, OLD.failed,
                                 OLD.failed_dependency)
        THEN
            RAISE EXCEPTION 'job %: a finished or canceled job never changes but by a retry',
                OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END
    $$
    """,
)

# Every channel of a worker ('{}' in a row written before: the row's one
# channel). Kept as one entry of its own so that it can take whichever version
# is next.
_WORKER_CHANNELS_MIGRATION: Final[tuple[str, ...]] = (
    "ALTER TABLE {s}.workers ADD COLUMN channels text[] NOT NULL DEFAULT '{{}}'",
)

# Each migration takes the schema from version ``i`` to ``i + 1`` and runs in
# the same transaction as the version bump, so an interrupted upgrade leaves
# the database at the old version (as in the SQLite store). Append, never
# edit: released databases exist at every version listed here. "{s}" stands
# for the queue's schema.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        # The fencing row. epoch grows by one at every election.
        """
        CREATE TABLE {s}.leader (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            epoch bigint NOT NULL CHECK (epoch >= 0),
            holder text,
            elected timestamptz,
            renewed timestamptz
        )
        """,
        "INSERT INTO {s}.leader (epoch) VALUES (0)",
        # Every commit calls this first, in its own transaction. The row lock
        # it takes also makes an election wait for a commit in flight.
        """
        CREATE FUNCTION {s}.fence(my_epoch bigint) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE {s}.leader SET renewed = statement_timestamp() WHERE epoch = my_epoch;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'epoch % is over: another process leads this queue', my_epoch
                    USING ERRCODE = 'AQ001';
            END IF;
        END
        $$
        """,
        """
        CREATE TABLE {s}.workers (
            id uuid PRIMARY KEY,
            seq bigint GENERATED ALWAYS AS IDENTITY,  -- load in insertion order
            channel text NOT NULL,
            arch text NOT NULL,
            updated timestamptz NOT NULL
        )
        """,
        # The invariants of actorq._core._state, as constraints: a job is pending
        # (started null), running (started, not finished, not canceled),
        # finished (started <= finished, with a result) or canceled (never
        # finished; a job canceled while running keeps its token so its worker
        # learns of the cancel). The token is set exactly while a job has
        # started and not finished; a worker only while it runs.
        """
        CREATE TABLE {s}.jobs (
            id uuid PRIMARY KEY,
            seq bigint NOT NULL UNIQUE CHECK (seq > 0),
            type text NOT NULL CHECK (type <> ''),
            channel text NOT NULL,
            args json NOT NULL,
            queued timestamptz NOT NULL,
            started timestamptz,
            finished timestamptz,
            canceled boolean NOT NULL,
            result json,
            retries bigint NOT NULL CHECK (retries >= 0),
            token uuid UNIQUE,
            worker_id uuid REFERENCES {s}.workers (id) DEFERRABLE INITIALLY DEFERRED,
            UNIQUE (id, seq),
            CONSTRAINT started_after_queued CHECK (started >= queued),
            CONSTRAINT finished_after_started CHECK (finished >= started),
            CONSTRAINT finished_needs_started CHECK (finished IS NULL OR started IS NOT NULL),
            CONSTRAINT finished_has_result CHECK (finished IS NULL OR result IS NOT NULL),
            CONSTRAINT canceled_never_finished CHECK (NOT canceled OR finished IS NULL),
            CONSTRAINT token_iff_started_unfinished
                CHECK ((token IS NOT NULL) = (started IS NOT NULL AND finished IS NULL)),
            CONSTRAINT worker_only_while_running
                CHECK (worker_id IS NULL
                       OR (started IS NOT NULL AND finished IS NULL AND NOT canceled))
        )
        """,
        # for the foreign key check when a worker is deleted
        "CREATE INDEX jobs_worker_id ON {s}.jobs (worker_id) WHERE worker_id IS NOT NULL",
        # A dependency is an earlier job (restore relies on it): the seq columns
        # let a plain CHECK say so, through foreign keys on (id, seq).
        """
        CREATE TABLE {s}.job_dependencies (
            job_id uuid NOT NULL,
            job_seq bigint NOT NULL,
            position integer NOT NULL CHECK (position >= 0),
            dependency_id uuid NOT NULL,
            dependency_seq bigint NOT NULL,
            PRIMARY KEY (job_id, position),
            UNIQUE (job_id, dependency_id),
            CONSTRAINT dependency_is_older CHECK (dependency_seq < job_seq),
            FOREIGN KEY (job_id, job_seq) REFERENCES {s}.jobs (id, seq) ON DELETE CASCADE,
            FOREIGN KEY (dependency_id, dependency_seq) REFERENCES {s}.jobs (id, seq)
                DEFERRABLE INITIALLY DEFERRED
        )
        """,
        # for the foreign key check when a job is deleted
        "CREATE INDEX job_dependencies_dependency ON {s}.job_dependencies (dependency_id)",
        # Transitions no row may make: a job's identity and arguments never
        # change, retries never go down, and a finished or canceled job is final.
        """
        CREATE FUNCTION {s}.check_job_transition() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF (NEW.id, NEW.seq, NEW.type, NEW.channel, NEW.args::text, NEW.queued)
               IS DISTINCT FROM (OLD.id, OLD.seq, OLD.type, OLD.channel, OLD.args::text, OLD.queued)
            THEN
                RAISE EXCEPTION 'job %: id, seq, type, channel, args and queued never change',
                    OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.retries < OLD.retries THEN
                RAISE EXCEPTION 'job %: retries never decrease', OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
            IF (OLD.finished IS NOT NULL OR OLD.canceled)
               AND (NEW.started, NEW.finished, NEW.canceled, NEW.result::text, NEW.retries,
                    NEW.token, NEW.worker_id)
                   IS DISTINCT FROM (OLD.started, OLD.finished, OLD.canceled, OLD.result::text,
                                     OLD.retries, OLD.token, OLD.worker_id)
            THEN
                RAISE EXCEPTION 'job %: a finished or canceled job never changes', OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END
        $$
        """,
        """
        CREATE TRIGGER jobs_transition BEFORE UPDATE ON {s}.jobs
            FOR EACH ROW EXECUTE FUNCTION {s}.check_job_transition()
        """,
    ),
    (
        # A failed job is a finished one; a job canceled because a dependency
        # failed names that dependency.
        """
        ALTER TABLE {s}.jobs
            ADD COLUMN failed boolean NOT NULL DEFAULT false,
            ADD COLUMN cancel_on_failed_dependency boolean NOT NULL DEFAULT false,
            ADD COLUMN failed_dependency uuid,
            ADD CONSTRAINT failed_is_finished CHECK (NOT failed OR finished IS NOT NULL),
            ADD CONSTRAINT failed_dependency_is_canceled
                CHECK (failed_dependency IS NULL OR canceled)
        """,
        # The same rules as version 1's, and the new columns follow them: the
        # opt-in never changes, and a settled job's failure marks are final.
        """
        CREATE OR REPLACE FUNCTION {s}.check_job_transition() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF (NEW.id, NEW.seq, NEW.type, NEW.channel, NEW.args::text, NEW.queued,
                NEW.cancel_on_failed_dependency)
               IS DISTINCT FROM (OLD.id, OLD.seq, OLD.type, OLD.channel, OLD.args::text,
                                 OLD.queued, OLD.cancel_on_failed_dependency)
            THEN
                RAISE EXCEPTION 'job %: id, seq, type, channel, args and queued never change',
                    OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.retries < OLD.retries THEN
                RAISE EXCEPTION 'job %: retries never decrease', OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
            IF (OLD.finished IS NOT NULL OR OLD.canceled)
               AND (NEW.started, NEW.finished, NEW.canceled, NEW.result::text, NEW.retries,
                    NEW.token, NEW.worker_id, NEW.failed, NEW.failed_dependency)
                   IS DISTINCT FROM (OLD.started, OLD.finished, OLD.canceled, OLD.result::text,
                                     OLD.retries, OLD.token, OLD.worker_id, OLD.failed,
                                     OLD.failed_dependency)
            THEN
                RAISE EXCEPTION 'job %: a finished or canceled job never changes', OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END
        $$
        """,
    ),
    (
        # No unique index on (channel, unique_key): the scheduler enforces the
        # rule, and one commit may delete a key's holder (deletions go last)
        # and insert its successor.
        """
        ALTER TABLE {s}.jobs
            ADD COLUMN priority integer NOT NULL DEFAULT 0,
            ADD COLUMN not_before timestamptz,
            ADD COLUMN unique_key text
        """,
    ),
    (
        # A schedule's slot and its last_slot mark are written in the same
        # transaction as the job it enqueued, so a slot fires once, whichever
        # process leads.
        """
        CREATE TABLE {s}.schedules (
            name text PRIMARY KEY CHECK (name <> ''),
            cron text NOT NULL,
            job_type text NOT NULL CHECK (job_type <> ''),
            args json NOT NULL,
            channel text NOT NULL,
            timezone text NOT NULL,
            catch_up text NOT NULL CHECK (catch_up IN ('last', 'none', 'all')),
            created timestamptz NOT NULL,
            last_slot timestamptz
        )
        """,
    ),
    _RETRY_MIGRATION,
    _WORKER_CHANNELS_MIGRATION,
)

#: The schema version this code writes. Older schemas are migrated when a
#: process becomes leader; newer ones are refused.
SCHEMA_VERSION: Final = len(_MIGRATIONS)

# The version table, created (at version 0) together with the schema itself.
VERSION_TABLE: Final = "actorq_schema"


def q(text: str, schema: str) -> sql.Composed:
    """``text`` with ``{s}`` bound to ``schema``, quoted as an identifier."""
    return sql.SQL(text).format(s=sql.Identifier(schema))


def check_version(conn: psycopg.Connection[Any], schema: str, *, migrate: bool) -> None:
    """Raise StoreError for a schema this code cannot use; migrate it if asked.

    With ``migrate``, the caller holds the leadership and a transaction,
    and an empty or missing schema is created.
    """
    row = conn.execute(
        """
        SELECT count(*), count(*) FILTER (WHERE c.relname = %s)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
        """,
        (VERSION_TABLE, schema),
    ).fetchone()
    assert row is not None
    tables, has_version = row
    if tables == 0:
        if not migrate:
            return
        conn.execute(q("CREATE SCHEMA IF NOT EXISTS {s}", schema))
        conn.execute(q(f"CREATE TABLE {{s}}.{VERSION_TABLE} (version integer NOT NULL)", schema))
        conn.execute(q(f"INSERT INTO {{s}}.{VERSION_TABLE} (version) VALUES (0)", schema))
    elif not has_version:
        raise StoreError(
            f"schema {schema!r} holds tables but is not an actorq queue (it has no "
            f"{VERSION_TABLE} table); name another schema with ?actorq_schema=NAME"
        )
    rows = conn.execute(q(f"SELECT version FROM {{s}}.{VERSION_TABLE}", schema)).fetchall()
    if len(rows) != 1 or type(rows[0][0]) is not int or rows[0][0] < 0:
        raise StoreError(f"schema {schema!r}: the schema version record is corrupt ({rows!r})")
    version: int = rows[0][0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"schema {schema!r} has schema version {version}, newer than this actorq "
            f"supports ({SCHEMA_VERSION}); it was written by a newer actorq: upgrade to open it"
        )
    if not migrate or version == SCHEMA_VERSION:
        return
    for step in _MIGRATIONS[version:]:
        for statement in step:
            conn.execute(q(statement, schema))
    conn.execute(q(f"UPDATE {{s}}.{VERSION_TABLE} SET version = %s", schema), (SCHEMA_VERSION,))
    log.info("queue %r: schema migrated from version %d to %d", schema, version, SCHEMA_VERSION)
