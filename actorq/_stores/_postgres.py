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
* **Watch.** A leader polls its lock connection from a thread of its own,
  from the moment it wins the lock (through the election and the load);
  when the session is gone, :meth:`PostgresStore.watch` raises and the queue
  shuts down (``open_queue`` runs ``watch`` beside the scheduler).
* **The lease.** The server ends an idle lock session after
  ``lease_timeout`` seconds (``idle_session_timeout``), so a leader that
  hangs or is cut off loses the lock in bounded time; and the leader steps
  down by itself once ``lease_timeout`` passed since its last confirmed
  poll was sent, cutting its connections (``_postgres_lease``), so it stops
  serving no later than a standby can win, whatever TCP does.
* **Elections** bump the epoch under ``lock_timeout = leader_poll`` and end
  the session of a deposed leader's transaction that holds the ``leader``
  row longer than that.

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
import time
import zlib
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from .._core._errors import StoreError
from ._postgres_lease import Link, Watchdog
from ._postgres_schema import SCHEMA_VERSION, check_version, q
from ._postgres_sql import (
    DEPOSED,
    ELECT,
    FENCE,
    LOCK_HELD,
    ROW_HOLDERS,
    read_records,
    read_schedules,
    write_changes,
)
from ._threads import run_sync

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._core._records import Changes, JobRecord, ScheduleRecord, WorkerRecord

__all__ = ["SCHEMA_VERSION", "PostgresStore", "store_from_url"]

log = logging.getLogger("actorq.postgres")

T = TypeVar("T")

#: First key of the leadership advisory lock ("actq"); the second is derived
#: from the schema name, so queues in different schemas elect separately.
LOCK_CLASS: Final = 0x61637471


class PostgresStore:
    """A :class:`~actorq.Store` in a PostgreSQL database, with leader election.

    ``conninfo`` is anything psycopg accepts (a ``postgresql://`` URL or
    ``key=value`` pairs). The queue lives in ``schema`` (created if missing;
    several queues can share a database in different schemas). Timing knobs,
    in seconds of real time:

    * ``standby_poll``: how often a standby tries to take the leadership;
    * ``leader_poll``: how often the leader confirms that it still holds it;
    * ``lease_timeout``: how long a leader may go without confirming its lock
      before it steps down, and how long the server keeps the lock of a
      leader that stopped polling (hung, partitioned) before ending its
      session. The same span on both sides: the leader stops serving no
      later than the server frees the lock for a standby.

    Contract, on top of :class:`~actorq.Store`'s:

    * :meth:`load` returns only once this process is the leader; until then
      it waits (a hot standby). It raises :class:`~actorq.StoreError` at once
      if the database cannot be reached or holds a schema newer than
      :data:`SCHEMA_VERSION` (or one that is not actorq's), if the lease
      runs out while it loads, and releases everything it opened if it fails
      or is cancelled.
    * :meth:`commit` writes one batch in one transaction, or raises
      :class:`~actorq.StoreError`: on any database error, when another
      process has become leader since this one loaded (fencing), when the
      commit takes longer than ``lease_timeout`` and when the lease runs out
      meanwhile (its outcome is then unknown). After a failed commit the
      store refuses further commits.
    * :meth:`watch` raises :class:`~actorq.StoreError` as soon as the
      leadership is lost or can no longer be confirmed; ``open_queue`` runs
      it next to the scheduler, so the queue stops serving.
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
        self._lock_link: Link | None = None
        self._data_link: Link | None = None
        self._links = threading.Lock()  # guards the two links against cut-while-replaced
        self._limiter = trio.CapacityLimiter(1)
        self._failed: str | None = None  # why commits are refused, once they are
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watchdog: Watchdog | None = None
        self._lost: trio.Event | None = None
        self._lost_reason = ""
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._queries: dict[str, sql.Composed] = {}
        self._loaded_schedules: list[ScheduleRecord] = []

    @property
    def lock_backend_pid(self) -> int | None:
        """The server process of the lock connection (for monitoring), if connected."""
        return _backend_pid(self._lock_link)

    @property
    def data_backend_pid(self) -> int | None:
        """The server process of the data connection (for monitoring), if connected."""
        return _backend_pid(self._data_link)

    # ------------------------------------------------------------ the protocol

    async def load(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        """Wait for the leadership, migrate the schema, and return every record.

        From the moment the lock is won, the lock is confirmed every
        ``leader_poll`` seconds, through the election and the load, so a load
        that takes minutes keeps it. A store that was closed can be loaded
        again (it stands for election anew); loading one that is open raises
        :class:`RuntimeError`.
        """
        if self._lock_link is not None or self._data_link is not None:
            raise RuntimeError("this PostgresStore is open; close it before loading it again")
        self._trio_token = trio.lowlevel.current_trio_token()
        self._lost = trio.Event()
        self._lost_reason = ""
        self._stopping = threading.Event()
        self._failed = None
        self.epoch = None
        try:
            self._watchdog = Watchdog(
                f"actorq lease {self.schema}", self.lease_timeout, self._step_down
            )
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

    async def load_schedules(self) -> list[ScheduleRecord]:
        """Every schedule, as :meth:`load` read it (in the same snapshot as the jobs)."""
        schedules, self._loaded_schedules = self._loaded_schedules, []
        return schedules

    async def commit(self, changes: Changes) -> None:
        """Write ``changes`` in one transaction that also checks the fencing epoch."""
        await run_sync(self._commit_sync, changes, limiter=self._limiter)

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

    def _commit_sync(self, changes: Changes) -> None:
        if self._failed is not None:
            raise StoreError(self._failed)
        if self.epoch is None:
            raise StoreError("the store has not been loaded (it is not the leader)")
        watchdog = self._watchdog
        assert watchdog is not None
        if watchdog.remaining() == 0.0:
            # paused past the lease (SIGSTOP, a VM freeze): a standby may lead by now
            self._fail(self._failed or "the leadership lease ran out")
        link = self._data_link
        try:
            if link is None or link.conn.closed or not _idle_and_alive(link.conn):
                # Dropped while idle (a restart, an idle timeout, an admin):
                # nothing of this batch was sent, so a new connection is safe.
                if link is not None:
                    log.warning("queue %r: the data connection was lost; reconnecting", self.schema)
                self._replace_link("data", None)
                link = Link(self._connect("data"))
                self._replace_link("data", link)
            conn = link.conn
            reason = (
                f"queue {self.schema!r}: a commit took longer than lease_timeout "
                f"({self.lease_timeout:g} s); this process stops leading"
            )
            # One round trip: the fence, every write and the COMMIT go out as
            # one pipeline. If the fence fails, the server skips the rest and
            # the COMMIT rolls back.
            with (
                watchdog.deadline(link, self.lease_timeout, reason),
                conn.pipeline(),
                conn.cursor() as cur,
            ):
                cur.execute(self._sql(FENCE), (self.epoch,))
                self._write(cur, changes)
                conn.commit()
        except psycopg.Error as exc:
            conn_now = None if link is None else link.conn
            self._rollback(conn_now)
            if exc.sqlstate == DEPOSED:
                self._fail(
                    f"queue {self.schema!r}: another process has become leader since "
                    f"this one was elected (epoch {self.epoch}); this one stops"
                )
            # A connection lost while the pipeline was out may have committed.
            lost = isinstance(exc, psycopg.OperationalError) and (
                conn_now is None or conn_now.broken
            )
            what = "its outcome is unknown" if lost else "nothing was written"
            if link is not None and link.cut_reason:
                self._fail(f"PostgreSQL commit failed ({what}): {link.cut_reason}")
            self._fail(
                f"queue {self.schema!r}: PostgreSQL commit failed ({what}): {exc}; "
                "this process stops leading"
            )

    def _write(self, cur: psycopg.Cursor[Any], changes: Changes) -> None:
        write_changes(cur, changes, self._sql)

    def _connect(self, role: str) -> psycopg.Connection[Any]:
        params = conninfo_to_dict(self.conninfo)
        defaults: dict[str, Any] = {
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
        extra = {key: value for key, value in defaults.items() if key not in params}
        conn = psycopg.connect(self.conninfo, autocommit=role == "lock", **extra)
        lease_ms = str(int(self.lease_timeout * 1000))
        try:
            # Loaded timestamps come back in UTC, like the core's clock.
            conn.execute("SET TIME ZONE 'UTC'")
            # Acknowledged means durable: a server configured for
            # asynchronous commit would break that promise.
            row = conn.execute("SHOW synchronous_commit").fetchone()
            if row is not None and row[0] == "off":
                conn.execute("SET synchronous_commit = on")
            if role == "lock":
                # The lease on the server's side: a lock session that stops
                # polling (a hung or cut-off leader) ends after lease_timeout.
                self._set_timeout(conn, "idle_session_timeout", lease_ms)
            else:
                # A leader may stay idle for long: a cluster-wide idle
                # timeout must not cut its data connection. A transaction
                # it left open (it died between statements) must not hold
                # the leader row for long: that would block the election.
                self._set_timeout(conn, "idle_session_timeout", "0")
                self._set_timeout(conn, "idle_in_transaction_session_timeout", lease_ms)
            # No statement of the store is cut by a cluster-wide timeout: a
            # load may take minutes; commits have a deadline of their own.
            self._set_timeout(conn, "statement_timeout", "0")
            if not conn.autocommit:
                conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _set_timeout(conn: psycopg.Connection[Any], name: str, ms: str) -> None:
        try:
            with conn.transaction():
                conn.execute("SELECT set_config(%s, %s, false)", (name, ms))
        except psycopg.errors.UndefinedObject:
            # PostgreSQL < 14 has no idle_session_timeout: a hung leader then
            # keeps the lock until TCP gives up on it (keepalives).
            log.warning("this PostgreSQL has no %s; failover may be slower", name)

    def _open_lock_connection(self) -> None:
        try:
            link = Link(self._connect("lock"))
            self._replace_link("lock", link)
            check_version(link.conn, self.schema, migrate=False)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the PostgreSQL store: {exc}") from exc

    def _try_lock(self) -> bool:
        link = self._lock_link
        watchdog = self._watchdog
        assert watchdog is not None
        try:
            if link is None or link.conn.closed:
                link = Link(self._connect("lock"))
                self._replace_link("lock", link)
            asked = time.monotonic()
            # a standby cut off from the server must not wait on it forever
            reason = f"standby: queue {self.schema!r}: the database did not answer"
            with watchdog.deadline(link, self.lease_timeout, reason):
                row = link.conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", self.lock_key
                ).fetchone()
        except psycopg.OperationalError as exc:
            # The database may be restarting: a standby keeps waiting.
            log.warning("standby: lost the database connection (%s); retrying", exc)
            self._replace_link("lock", None)
            return False
        if not (row and row[0]):
            return False
        # Won. From now on the lock is confirmed every leader_poll seconds,
        # through the election and the load: the lock session never idles.
        watchdog.renew(asked)
        self._watcher = threading.Thread(
            target=self._watch_lock, name=f"actorq leader watch {self.schema}", daemon=True
        )
        self._watcher.start()
        return True

    def _lead_and_load(self) -> tuple[list[JobRecord], list[WorkerRecord]]:
        try:
            link = Link(self._connect("data"))
            self._replace_link("data", link)
            conn = link.conn
            with conn.transaction():
                check_version(conn, self.schema, migrate=True)
            self.epoch = self._elect(conn)
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            try:
                with conn.transaction():
                    records = self._read(conn)
                    self._loaded_schedules = read_schedules(conn, self._sql)
            finally:
                if not conn.broken:
                    conn.isolation_level = None
                    conn.read_only = None
        except psycopg.Error as exc:
            if self._lost_reason:
                raise StoreError(f"cannot load the PostgreSQL store: {self._lost_reason}") from exc
            raise StoreError(f"cannot load the PostgreSQL store: {exc}") from exc
        if self._lost_reason:
            raise StoreError(f"cannot load the PostgreSQL store: {self._lost_reason}")
        log.info("queue %r: leader with epoch %d (%s)", self.schema, self.epoch, self.holder)
        return records

    def _elect(self, conn: psycopg.Connection[Any]) -> int:
        """Bump the epoch; end a deposed leader's transaction that holds the row past a grace.

        A commit in flight when the old leader lost its lock finishes within
        ``leader_poll`` and is waited for (its batch is then loaded). One that
        holds the row longer belongs to a leader that died, hangs or was cut
        off between two statements of a commit (no server timeout covers
        that); this process holds the lock, so that leader is deposed and its
        transaction was never acknowledged: its session is ended.
        """
        grace_ms = str(max(1, int(self.leader_poll * 1000)))
        told: set[int] = set()  # holders already logged
        while True:
            try:
                with conn.transaction():
                    conn.execute("SELECT set_config('lock_timeout', %s, true)", (grace_ms,))
                    row = conn.execute(self._sql(ELECT), (self.holder,)).fetchone()
                assert row is not None
                return int(row[0])
            except psycopg.errors.LockNotAvailable:
                pass
            with conn.transaction():
                holders = conn.execute(self._sql(ROW_HOLDERS)).fetchall()
            for (pid,) in holders:
                if pid not in told:
                    log.warning(
                        "queue %r: a deposed leader's transaction (server pid %d) holds the "
                        "leader row; ending its session",
                        self.schema,
                        pid,
                    )
                try:
                    with conn.transaction():
                        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                except psycopg.errors.InsufficientPrivilege as exc:
                    if pid not in told:
                        log.warning("cannot end it (%s); waiting for it", exc)
                told.add(pid)

    def _read(self, conn: psycopg.Connection[Any]) -> tuple[list[JobRecord], list[WorkerRecord]]:
        return read_records(conn, self._sql)

    def _watch_lock(self) -> None:
        # A thread of its own, in real time: trio timers would not do, since
        # tests drive trio's clock by hand. Only this thread uses the lock
        # connection while the store leads; the watchdog cuts it if a probe
        # hangs past the lease.
        link = self._lock_link
        watchdog = self._watchdog
        assert link is not None
        assert watchdog is not None
        reason = ""
        while not self._stopping.wait(self.leader_poll):
            asked = time.monotonic()
            try:
                row = link.conn.execute(LOCK_HELD, self.lock_key).fetchone()
                if row is not None and row[0] == 1:
                    watchdog.renew(asked)
                    continue
                reason = "the leadership lock is no longer held"
            except psycopg.Error as exc:
                if self._stopping.is_set():
                    return
                reason = link.cut_reason or f"the leadership lock connection was lost: {exc}"
            break
        else:
            return
        self._step_down(reason)

    def _step_down(self, reason: str) -> None:
        """Stop leading, from any thread: refuse commits, cut both connections, wake watch()."""
        if self._lost_reason or self._stopping.is_set():
            return
        message = f"queue {self.schema!r}: {reason}; this process stops leading"
        self._lost_reason = message
        log.error("%s", message)
        self._fail(message, raise_=False)
        # whatever was blocked on the database (a commit, the load, a probe)
        # fails now instead of whenever TCP gives up
        with self._links:
            for link in (self._data_link, self._lock_link):
                if link is not None:
                    link.cut(message)
        lost, token = self._lost, self._trio_token
        if lost is not None and token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(lost.set)

    def _close_sync(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(min(1.0, self.lease_timeout))
            if self._watcher.is_alive():  # stuck on a silent network
                with self._links:
                    if self._lock_link is not None:
                        self._lock_link.cut("the store is closing")
                self._watcher.join()
            self._watcher = None
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self._failed is None:
            self._failed = "the store is closed"
        self._replace_link("data", None)
        self._replace_link("lock", None)

    # -------------------------------------------------------------- helpers

    def _replace_link(self, role: str, link: Link | None) -> None:
        """Put ``link`` in place of the ``role`` connection ("lock" or "data"), closing the old."""
        with self._links:
            if role == "lock":
                old, self._lock_link = self._lock_link, link
            else:
                old, self._data_link = self._data_link, link
        if old is not None:
            old.close()

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
            query = self._queries[text] = q(text, self.schema)
        return query

    async def _run(self, fn: Callable[[], T]) -> T:
        return await run_sync(fn, limiter=self._limiter)


def _backend_pid(link: Link | None) -> int | None:
    if link is None or link.conn.closed:
        return None
    return link.conn.info.backend_pid


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


#: actorq's own URL parameters: the schema and the timing knobs of :class:`PostgresStore`.
URL_OPTIONS: Final = {
    "actorq_schema": "schema",
    "actorq_standby_poll": "standby_poll",
    "actorq_leader_poll": "leader_poll",
    "actorq_lease_timeout": "lease_timeout",
}


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """Split off actorq's own URL parameters (``actorq_*``) from a PostgreSQL URL.

    Returns the URL as libpq should see it and the options found, by
    :class:`PostgresStore` argument name.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options: dict[str, str] = {}
    kept = []
    for key, value in query:
        if key in URL_OPTIONS:
            options[URL_OPTIONS[key]] = value
        elif key.startswith("actorq_"):
            known = ", ".join(URL_OPTIONS)
            raise ValueError(f"unknown URL parameter {key!r}; actorq's own are {known}")
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), options


def store_from_url(url: str) -> PostgresStore:
    """Make a store from ``postgresql://user@host:port/db?actorq_schema=NAME``.

    ``actorq_standby_poll``, ``actorq_leader_poll`` and ``actorq_lease_timeout``
    (seconds) set the timings; a value that is not a number raises
    :class:`ValueError`. Every other query parameter goes to libpq as it is
    (``host=/run/postgresql`` for a unix socket, ``sslmode=...``). The schema
    defaults to ``actorq``.
    """
    conninfo, options = split_url(url)

    def seconds(name: str, default: float) -> float:
        value = options.get(name)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"actorq_{name} must be a number of seconds, not {value!r}") from None

    return PostgresStore(
        conninfo,
        schema=options.get("schema") or "actorq",
        standby_poll=seconds("standby_poll", 0.5),
        leader_poll=seconds("leader_poll", 1.0),
        lease_timeout=seconds("lease_timeout", 10.0),
    )
