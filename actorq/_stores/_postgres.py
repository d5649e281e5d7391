"""The PostgreSQL store: durable records in a database that many processes share.

Several processes may open a store on the same database and schema; exactly
one of them is the *leader* and runs the queue, the others are hot standbys
waiting in :meth:`PostgresStore.load`:

* **Election.** The leader holds a session-level advisory lock on a dedicated
  connection (the *lock connection*). PostgreSQL releases it the moment that
  session ends, so a leader that dies (or whose connection drops) frees it
  without anyone's help; a standby polls ``pg_try_advisory_lock`` and wins.
* **Fencing.** Winning the lock bumps an epoch in the one-row ``leader`` table
  before anything is read. Every commit starts with ``UPDATE leader ... WHERE
  epoch = <mine>`` inside its own transaction: once a newer leader exists,
  that matches no row and the whole batch rolls back with
  :class:`~actorq.StoreError`. The row lock also orders the two: a new leader
  bumps the epoch only after an in-flight commit of the old one has ended, and
  loads only after that, so it sees every batch the old leader acknowledged.
* **Watch.** A leader polls its lock connection from a thread of its own;
  when the session is gone, :meth:`PostgresStore.watch` raises and the queue
  shuts down (``open_queue`` runs ``watch`` beside the scheduler). The server
  ends an idle lock session after ``lease_timeout`` seconds
  (``idle_session_timeout``), so a leader that hangs or is cut off also loses
  the lock in bounded time.

Why sync psycopg on worker threads and not psycopg's async API: that API is
built on asyncio and does not run under trio without a bridge. A commit is one
thread hop per *batch* (group commit), so the hop costs nothing next to the
transaction, and a thread that is waiting for PostgreSQL never stalls the
scheduler. See docs/ha.md.

Args and results are stored as ``json``, not ``jsonb``: ``json`` keeps the
text as given, so ``"\\u0000"`` and key order survive (jsonb rejects ``\\u0000``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

import psycopg
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from .._core._errors import StoreError
from .._core._records import Changes, JobRecord, WorkerRecord
from ._threads import run_sync

__all__ = ["SCHEMA_VERSION", "PostgresStore", "store_from_url"]

log = logging.getLogger("actorq.postgres")

T = TypeVar("T")

#: First key of the leadership advisory lock ("actq"); the second is derived
#: from the schema name, so queues in different schemas elect separately.
LOCK_CLASS: Final = 0x61637471

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
)

#: The schema version this code writes. Older schemas are migrated when a
#: process becomes leader; newer ones are refused.
SCHEMA_VERSION: Final = len(_MIGRATIONS)

# The version table, created (at version 0) together with the schema itself.
_VERSION_TABLE: Final = "actorq_schema"


def _q(text: str, schema: str) -> sql.Composed:
    return sql.SQL(text).format(s=sql.Identifier(schema))


# ----------------------------------------------------------------- queries

# A fencing failure raises this SQLSTATE (see the fence function).
_DEPOSED: Final = "AQ001"
_FENCE = "SELECT {s}.fence(%b)"
_ELECT = """
    UPDATE {s}.leader
    SET epoch = epoch + 1, holder = %s, elected = statement_timestamp(),
        renewed = statement_timestamp()
    RETURNING epoch
"""
# New jobs are inserted whole; for known ones only what can change is set.
_UPSERT_JOBS = """
    INSERT INTO {s}.jobs (id, seq, type, channel, args, queued, started, finished,
                          canceled, result, retries, token, worker_id)
    SELECT id, seq, type, channel, args::json, queued, started, finished,
           canceled, result::json, retries, token, worker_id
    FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::text[], %b::text[],
                %b::timestamptz[], %b::timestamptz[], %b::timestamptz[], %b::boolean[],
                %b::text[], %b::bigint[], %b::uuid[], %b::uuid[])
        AS u(id, seq, type, channel, args, queued, started, finished,
             canceled, result, retries, token, worker_id)
    ORDER BY seq
    ON CONFLICT (id) DO UPDATE
    SET started = EXCLUDED.started, finished = EXCLUDED.finished, canceled = EXCLUDED.canceled,
        result = EXCLUDED.result, retries = EXCLUDED.retries, token = EXCLUDED.token,
        worker_id = EXCLUDED.worker_id
"""
# A job's dependencies never change: rows already stored are skipped. A
# dependency that does not exist finds no seq, and the NOT NULL on
# dependency_seq rejects the row rather than dropping it quietly.
_INSERT_DEPENDENCIES = """
    INSERT INTO {s}.job_dependencies (job_id, job_seq, position, dependency_id, dependency_seq)
    SELECT u.job_id, u.job_seq, u.position, u.dependency_id, d.seq
    FROM unnest(%b::uuid[], %b::bigint[], %b::integer[], %b::uuid[])
        AS u(job_id, job_seq, position, dependency_id)
    LEFT JOIN {s}.jobs d ON d.id = u.dependency_id
    ON CONFLICT (job_id, position) DO NOTHING
"""
_UPSERT_WORKERS = """
    INSERT INTO {s}.workers (id, channel, arch, updated)
    SELECT id, channel, arch, updated
    FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::timestamptz[])
        WITH ORDINALITY AS u(id, channel, arch, updated, n)
    ORDER BY n
    ON CONFLICT (id) DO UPDATE SET updated = EXCLUDED.updated
"""
_DELETE_JOBS = "DELETE FROM {s}.jobs WHERE id = ANY(%b::uuid[])"
_DELETE_WORKERS = "DELETE FROM {s}.workers WHERE id = ANY(%b::uuid[])"
_LOAD_WORKERS = "SELECT id, channel, arch, updated FROM {s}.workers ORDER BY seq"
_LOAD_JOBS = """
    SELECT id, seq, type, channel, args::text, queued, started, finished, canceled,
           result::text, retries, token, worker_id
    FROM {s}.jobs ORDER BY seq
"""
_LOAD_DEPENDENCIES = (
    "SELECT job_id, dependency_id FROM {s}.job_dependencies ORDER BY job_id, position"
)
_LOCK_HELD = """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND classid = %s::oid AND objid = %s::oid AND objsubid = 2
      AND pid = pg_backend_pid() AND granted
"""


class PostgresStore:
    """A :class:`~actorq.Store` in a PostgreSQL database, with leader election.

    ``conninfo`` is anything psycopg accepts (a ``postgresql://`` URL or
    ``key=value`` pairs). The queue lives in ``schema`` (created if missing;
    several queues can share a database in different schemas). Timing knobs,
    in seconds of real time:

    * ``standby_poll``: how often a standby tries to take the leadership;
    * ``leader_poll``: how often the leader checks that it still holds it;
    * ``lease_timeout``: how long the server keeps the lock of a leader that
      stopped polling (hung, partitioned) before ending its session.

    Contract, on top of :class:`~actorq.Store`'s:

    * :meth:`load` returns only once this process is the leader; until then
      it waits (a hot standby). It raises :class:`~actorq.StoreError` at once
      if the database cannot be reached or holds a schema newer than
      :data:`SCHEMA_VERSION` (or one that is not actorq's), and releases
      everything it opened if it fails or is cancelled.
    * :meth:`commit` writes one batch in one transaction, or raises
      :class:`~actorq.StoreError` with nothing written: on any database error,
      and when another process has become leader since this one loaded
      (fencing). After a failed commit the store refuses further commits.
    * :meth:`watch` raises :class:`~actorq.StoreError` as soon as the
      leadership is lost; ``open_queue`` runs it next to the scheduler, so the
      queue stops serving.
    * :meth:`close` releases the leadership; a standby takes over at once.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "actorq",
        standby_poll: float = 0.5,
        leader_poll: float = 1.0,
        lease_timeout: float = 10.0,
        connect_timeout: int = 10,
    ) -> None:
        if not schema or "\x00" in schema:
            raise ValueError(f"invalid schema name {schema!r}")
        if not 0 < leader_poll < lease_timeout:
            raise ValueError("leader_poll must be positive and shorter than lease_timeout")
        if standby_poll <= 0:
            raise ValueError("standby_poll must be positive")
        self.conninfo = conninfo
        self.schema = schema
        self.standby_poll = standby_poll
        self.leader_poll = leader_poll
        self.lease_timeout = lease_timeout
        self.connect_timeout = connect_timeout
        #: The advisory lock that names the leader of this schema.
        self.lock_key: Final = (LOCK_CLASS, zlib.crc32(schema.encode()) & 0x7FFFFFFF)
        #: This process's epoch once it leads; ``None`` before.
        self.epoch: int | None = None
        self.holder = f"{socket.gethostname()} pid {os.getpid()}"
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._data_conn: psycopg.Connection[Any] | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._failed: str | None = None  # why commits are refused, once they are
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lost: trio.Event | None = None
        self._lost_reason = ""
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._queries: dict[str, sql.Composed] = {}

    @property
    def lock_backend_pid(self) -> int | None:
        """The server process of the lock connection (for monitoring), if connected."""
        conn = self._lock_conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    @property
    def data_backend_pid(self) -> int | None:
        """The server process of the data connection (for monitoring), if connected."""
        conn = self._data_conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    # ------------------------------------------------------------ the protocol

    async def load(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        """Wait for the leadership, migrate the schema, and return every record.

        A store that was closed can be loaded again (it stands for election
        anew); loading one that is open raises :class:`RuntimeError`.
        """
        if self._lock_conn is not None or self._data_conn is not None:
            raise RuntimeError("this PostgresStore is open; close it before loading it again")
        self._trio_token = trio.lowlevel.current_trio_token()
        self._lost = trio.Event()
        self._lost_reason = ""
        self._stopping = threading.Event()
        self._failed = None
        self.epoch = None
        try:
            await self._run(self._open_lock_connection)
            waiting = False
            while not await self._run(self._try_lock):
                if not waiting:
                    log.info("standby: another process leads queue %r; waiting", self.schema)
                    waiting = True
                await trio.sleep(self.standby_poll)
            return await self._run(self._lead_and_load)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._run(self._close_sync)
            raise

    async def commit(self, changes: Changes) -> None:
        """Write ``changes`` in one transaction that also checks the fencing epoch."""
        await run_sync(self.commit_blocking, changes, limiter=self._limiter)

    async def watch(self) -> None:
        """Return never; raise :class:`~actorq.StoreError` once the leadership is lost."""
        if self._lost is None:
            raise RuntimeError("watch() needs a loaded store")
        await self._lost.wait()
        raise StoreError(self._lost_reason)

    async def close(self) -> None:
        """Stop watching, close both connections and so release the leadership. Idempotent."""
        await self._run(self._close_sync)

    # ----------------------------------------------------------- sync parts

    def commit_blocking(self, changes: Changes) -> None:
        """The body of :meth:`commit`, for callers that run it on a thread of their own.

        Never call it while a :meth:`commit` is in flight.
        """
        if self._failed is not None:
            raise StoreError(self._failed)
        if self.epoch is None:
            raise StoreError("the store has not been loaded (it is not the leader)")
        conn = self._data_conn
        try:
            if conn is None or conn.closed or not _idle_and_alive(conn):
                # Dropped while idle (a restart, an idle timeout, an admin):
                # nothing of this batch was sent, so a new connection is safe.
                if conn is not None:
                    log.warning("queue %r: the data connection was lost; reconnecting", self.schema)
                    conn.close()
                conn = self._data_conn = None
                conn = self._data_conn = self._connect("data")
            # One round trip: the fence, every write and the COMMIT go out as
            # one pipeline. If the fence fails, the server skips the rest and
            # the COMMIT rolls back.
            with conn.pipeline(), conn.cursor() as cur:
                cur.execute(self._sql(_FENCE), (self.epoch,))
                self._write(cur, changes)
                conn.commit()
        except psycopg.Error as exc:
            self._rollback(conn)
            if exc.sqlstate == _DEPOSED:
                self._fail(
                    f"queue {self.schema!r}: another process has become leader since "
                    f"this one was elected (epoch {self.epoch}); this one stops"
                )
            # A connection lost while the pipeline was out may have committed.
            lost = isinstance(exc, psycopg.OperationalError) and (conn is None or conn.broken)
            what = "its outcome is unknown" if lost else "nothing was written"
            self._fail(f"PostgreSQL commit failed ({what}): {exc}")

    def _write(self, cur: psycopg.Cursor[Any], changes: Changes) -> None:
        # Workers first and deletions last, so that rows exist before they
        # are referenced (the foreign keys that could trip on order are
        # deferred to COMMIT anyway).
        if changes.workers:
            ws = changes.workers
            cur.execute(
                self._sql(_UPSERT_WORKERS),
                ([w.id for w in ws], [w.channel for w in ws], [w.arch for w in ws],
                 [w.updated for w in ws]),
            )  # fmt: skip
        if changes.jobs:
            jobs = changes.jobs
            cur.execute(self._sql(_UPSERT_JOBS), _job_columns(jobs))
            deps = [(r, pos, dep) for r in jobs for pos, dep in enumerate(r.dependencies)]
            if deps:
                cur.execute(
                    self._sql(_INSERT_DEPENDENCIES),
                    ([r.id for r, _, _ in deps], [r.seq for r, _, _ in deps],
                     [pos for _, pos, _ in deps], [dep for _, _, dep in deps]),
                )  # fmt: skip
        if changes.deleted_jobs:
            cur.execute(self._sql(_DELETE_JOBS), (list(changes.deleted_jobs),))
        if changes.deleted_workers:
            cur.execute(self._sql(_DELETE_WORKERS), (list(changes.deleted_workers),))

    def _connect(self, role: str) -> psycopg.Connection[Any]:
        params = conninfo_to_dict(self.conninfo)
        extra: dict[str, Any] = {}
        defaults = {
            "application_name": f"actorq {role}",
            "connect_timeout": self.connect_timeout,
            # a peer that vanishes without closing (a cut cable) is noticed
            # by the kernel instead of after hours
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": int(self.lease_timeout * 1000),
        }
        for key, value in defaults.items():
            if key not in params:
                extra[key] = value
        conn = psycopg.connect(self.conninfo, autocommit=role == "lock", **extra)
        try:
            # Loaded timestamps come back in UTC, like the core's clock.
            conn.execute("SET TIME ZONE 'UTC'")
            # Acknowledged means durable: a server configured for
            # asynchronous commit would break that promise.
            row = conn.execute("SHOW synchronous_commit").fetchone()
            if row is not None and row[0] == "off":
                conn.execute("SET synchronous_commit = on")
            if role == "lock":
                self._set_idle_timeout(conn, int(self.lease_timeout * 1000))
            else:
                # A leader may stay idle for long: a cluster-wide idle
                # timeout must not cut its data connection.
                self._set_idle_timeout(conn, 0)
            if not conn.autocommit:
                conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _set_idle_timeout(conn: psycopg.Connection[Any], ms: int) -> None:
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('idle_session_timeout', %s, false)", (str(ms),))
        except psycopg.errors.UndefinedObject:
            # PostgreSQL < 14 has no idle_session_timeout: a hung leader then
            # keeps the lock until TCP gives up on it (keepalives).
            log.warning("this PostgreSQL has no idle_session_timeout; failover may be slower")

    def _open_lock_connection(self) -> None:
        try:
            self._lock_conn = self._connect("lock")
            self._check_version(self._lock_conn, migrate=False)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the PostgreSQL store: {exc}") from exc

    def _try_lock(self) -> bool:
        conn = self._lock_conn
        try:
            if conn is None or conn.closed:
                conn = self._lock_conn = self._connect("lock")
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", self.lock_key).fetchone()
        except psycopg.OperationalError as exc:
            # The database may be restarting: a standby keeps waiting.
            log.warning("standby: lost the database connection (%s); retrying", exc)
            if conn is not None:
                conn.close()
            self._lock_conn = None
            return False
        return bool(row and row[0])

    def _lead_and_load(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        try:
            conn = self._data_conn = self._connect("data")
            with conn.transaction():
                self._check_version(conn, migrate=True)
            with conn.transaction():
                row = conn.execute(self._sql(_ELECT), (self.holder,)).fetchone()
            assert row is not None
            self.epoch = int(row[0])
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            try:
                with conn.transaction():
                    records = self._read(conn)
            finally:
                conn.isolation_level = None
                conn.read_only = None
        except psycopg.Error as exc:
            raise StoreError(f"cannot load the PostgreSQL store: {exc}") from exc
        log.info("queue %r: leader with epoch %d (%s)", self.schema, self.epoch, self.holder)
        self._watcher = threading.Thread(
            target=self._watch_lock, name=f"actorq leader watch {self.schema}", daemon=True
        )
        self._watcher.start()
        return records

    def _read(self, conn: psycopg.Connection[Any]) -> tuple[list[JobRecord], list[WorkerRecord]]:
        with conn.cursor(binary=True) as cur:
            cur.execute(self._sql(_LOAD_WORKERS))
            workers = [WorkerRecord(*row) for row in cur]
            cur.execute(self._sql(_LOAD_DEPENDENCIES))
            deps: dict[UUID, list[UUID]] = {}
            for job_id, dep_id in cur:
                deps.setdefault(job_id, []).append(dep_id)
            cur.execute(self._sql(_LOAD_JOBS))
            jobs: list[JobRecord] = []
            for (
                job_id,
                seq,
                job_type,
                channel,
                args,
                queued,
                started,
                finished,
                canceled,
                result,
                retries,
                token,
                worker_id,
            ) in cur:
                jobs.append(
                    JobRecord(
                        id=job_id,
                        seq=seq,
                        type=job_type,
                        channel=channel,
                        args=args,
                        dependencies=tuple(deps.get(job_id, ())),
                        queued=queued,
                        started=started,
                        finished=finished,
                        canceled=canceled,
                        result=result,
                        retries=retries,
                        token=token,
                        worker_id=worker_id,
                    )
                )
        return jobs, workers

    def _check_version(self, conn: psycopg.Connection[Any], *, migrate: bool) -> None:
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
            (_VERSION_TABLE, self.schema),
        ).fetchone()
        assert row is not None
        tables, has_version = row
        if tables == 0:
            if not migrate:
                return
            conn.execute(_q("CREATE SCHEMA IF NOT EXISTS {s}", self.schema))
            conn.execute(
                self._sql(f"CREATE TABLE {{s}}.{_VERSION_TABLE} (version integer NOT NULL)")
            )
            conn.execute(self._sql(f"INSERT INTO {{s}}.{_VERSION_TABLE} (version) VALUES (0)"))
        elif not has_version:
            raise StoreError(
                f"schema {self.schema!r} holds tables but is not an actorq queue (it has no "
                f"{_VERSION_TABLE} table); name another schema with ?actorq_schema=NAME"
            )
        rows = conn.execute(self._sql(f"SELECT version FROM {{s}}.{_VERSION_TABLE}")).fetchall()
        if len(rows) != 1 or type(rows[0][0]) is not int or rows[0][0] < 0:
            raise StoreError(
                f"schema {self.schema!r}: the schema version record is corrupt ({rows!r})"
            )
        version: int = rows[0][0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"schema {self.schema!r} has schema version {version}, newer than this actorq "
                f"supports ({SCHEMA_VERSION}); it was written by a newer actorq: upgrade to open it"
            )
        if not migrate or version == SCHEMA_VERSION:
            return
        for step in _MIGRATIONS[version:]:
            for statement in step:
                conn.execute(self._sql(statement))
        conn.execute(
            self._sql(f"UPDATE {{s}}.{_VERSION_TABLE} SET version = %s"), (SCHEMA_VERSION,)
        )
        log.info(
            "queue %r: schema migrated from version %d to %d", self.schema, version, SCHEMA_VERSION
        )

    def _watch_lock(self) -> None:
        # A thread of its own, in real time: trio timers would not do, since
        # tests drive trio's clock by hand. Only this thread uses the lock
        # connection while the store leads.
        conn = self._lock_conn
        reason = ""
        while not self._stopping.wait(self.leader_poll):
            try:
                assert conn is not None
                row = conn.execute(_LOCK_HELD, self.lock_key).fetchone()
                if row is not None and row[0] == 1:
                    continue
                reason = "the leadership lock is no longer held"
            except psycopg.Error as exc:
                if self._stopping.is_set():
                    return
                reason = f"the leadership lock connection was lost: {exc}"
            break
        else:
            return
        message = f"queue {self.schema!r}: {reason}; this process stops leading"
        log.error("%s", message)
        self._fail(message, raise_=False)
        self._lost_reason = message
        if self._lost is not None and self._trio_token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._lost.set, trio_token=self._trio_token)

    def _close_sync(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self._failed is None:
            self._failed = "the store is closed"
        for conn in (self._data_conn, self._lock_conn):
            if conn is not None:
                conn.close()
        self._data_conn = self._lock_conn = None

    # -------------------------------------------------------------- helpers

    def _fail(self, message: str, *, raise_: bool = True) -> None:
        if self._failed is None:
            self._failed = message
        if raise_:
            raise StoreError(message)

    @staticmethod
    def _rollback(conn: psycopg.Connection[Any] | None) -> None:
        if conn is None or conn.closed:
            return
        try:
            conn.rollback()
        except psycopg.Error:
            conn.close()

    def _sql(self, text: str) -> sql.Composed:
        query = self._queries.get(text)
        if query is None:
            query = self._queries[text] = _q(text, self.schema)
        return query

    async def _run(self, fn: Callable[[], T]) -> T:
        return await run_sync(fn, limiter=self._limiter)


def _idle_and_alive(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection is still usable, without a round trip.

    An idle connection has nothing to read; if its socket is readable, the
    server has closed it (or sent a notice, which is rare): check it then.
    """
    if conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return False
    fd = conn.fileno()
    if hasattr(select, "poll"):  # select.select fails on descriptors past 1023
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        readable = bool(poller.poll(0))
    else:
        readable = bool(select.select([fd], [], [], 0)[0])
    if not readable:
        return True
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _job_columns(records: Sequence[JobRecord]) -> tuple[list[Any], ...]:
    return (
        [r.id for r in records],
        [r.seq for r in records],
        [r.type for r in records],
        [r.channel for r in records],
        [r.args for r in records],
        [r.queued for r in records],
        [r.started for r in records],
        [r.finished for r in records],
        [r.canceled for r in records],
        [r.result for r in records],
        [r.retries for r in records],
        [r.token for r in records],
        [r.worker_id for r in records],
    )


def split_url(url: str) -> tuple[str, str | None]:
    """Split off actorq's own URL parameter (``actorq_schema``) from a PostgreSQL URL.

    Returns the URL as libpq should see it and the schema (``None`` if unset).
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = None
    kept = []
    for key, value in query:
        if key == "actorq_schema":
            schema = value
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), schema


def store_from_url(url: str) -> PostgresStore:
    """Make a store from ``postgresql://user@host:port/db?actorq_schema=NAME``.

    Every other query parameter goes to libpq as it is (``host=/run/postgresql``
    for a unix socket, ``sslmode=...``). The schema defaults to ``actorq``.
    """
    conninfo, schema = split_url(url)
    return PostgresStore(conninfo, schema=schema or "actorq")
