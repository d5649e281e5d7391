"""The PostgreSQL store's SQL: its statements, and records to and from rows.

Every statement names the queue's schema as ``{s}``; the store binds it once
(``PostgresStore._sql``). Batches go out as arrays through ``unnest``, one
statement per table, so a commit's cost hardly grows with its size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import orjson

from .._core._records import Changes, JobRecord, ScheduleRecord, WorkerRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from uuid import UUID

    import psycopg
    from psycopg.sql import Composed

__all__ = [
    "DEPOSED",
    "ELECT",
    "FENCE",
    "LOCK_HELD",
    "ROW_HOLDERS",
    "read_records",
    "write_changes",
]

# A fencing failure raises this SQLSTATE (see the fence function).
DEPOSED: Final = "AQ001"
FENCE = "SELECT {s}.fence(%b)"
ELECT = """
    UPDATE {s}.leader
    SET epoch = epoch + 1, holder = %s, elected = statement_timestamp(),
        renewed = statement_timestamp()
    RETURNING epoch
"""
# The server processes whose open transaction holds the leader row: the
# transaction that last updated it and has not ended (its xid is the row's
# xmax while it runs).
ROW_HOLDERS = """
    SELECT l.pid FROM {s}.leader r
    JOIN pg_locks l ON l.locktype = 'transactionid' AND l.transactionid = r.xmax
                       AND l.mode = 'ExclusiveLock' AND l.granted
    WHERE l.pid <> pg_backend_pid()
"""
# New jobs are inserted whole; for known ones only what can change is set.
UPSERT_JOBS = """
    INSERT INTO {s}.jobs (id, seq, type, channel, args, queued, started, finished,
                          canceled, result, retries, token, worker_id, failed,
                          cancel_on_failed_dependency, failed_dependency, priority,
                          not_before, unique_key)
    SELECT id, seq, type, channel, args::json, queued, started, finished,
           canceled, result::json, retries, token, worker_id, failed,
           cancel_on_failed_dependency, failed_dependency, priority, not_before, unique_key
    FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::text[], %b::text[],
                %b::timestamptz[], %b::timestamptz[], %b::timestamptz[], %b::boolean[],
                %b::text[], %b::bigint[], %b::uuid[], %b::uuid[], %b::boolean[],
                %b::boolean[], %b::uuid[], %b::integer[], %b::timestamptz[], %b::text[])
        AS u(id, seq, type, channel, args, queued, started, finished,
             canceled, result, retries, token, worker_id, failed,
             cancel_on_failed_dependency, failed_dependency, priority, not_before, unique_key)
    ORDER BY seq
    ON CONFLICT (id) DO UPDATE
    SET started = EXCLUDED.started, finished = EXCLUDED.finished, canceled = EXCLUDED.canceled,
        result = EXCLUDED.result, retries = EXCLUDED.retries, token = EXCLUDED.token,
        worker_id = EXCLUDED.worker_id, failed = EXCLUDED.failed,
        failed_dependency = EXCLUDED.failed_dependency, not_before = EXCLUDED.not_before
"""
# A job's dependencies never change: rows already stored are skipped. A
# dependency that does not exist finds no seq, and the NOT NULL on
# dependency_seq rejects the row rather than dropping it quietly.
INSERT_DEPENDENCIES = """
    INSERT INTO {s}.job_dependencies (job_id, job_seq, position, dependency_id, dependency_seq)
    SELECT u.job_id, u.job_seq, u.position, u.dependency_id, d.seq
    FROM unnest(%b::uuid[], %b::bigint[], %b::integer[], %b::uuid[])
        AS u(job_id, job_seq, position, dependency_id)
    LEFT JOIN {s}.jobs d ON d.id = u.dependency_id
    ON CONFLICT (job_id, position) DO NOTHING
"""
UPSERT_WORKERS = """
    INSERT INTO {s}.workers (id, channel, arch, updated, channels)
    SELECT id, channel, arch, updated,
           ARRAY(SELECT jsonb_array_elements_text(channels::jsonb))
    FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::timestamptz[], %b::text[])
        WITH ORDINALITY AS u(id, channel, arch, updated, channels, n)
    ORDER BY n
    ON CONFLICT (id) DO UPDATE SET updated = EXCLUDED.updated
"""
UPSERT_SCHEDULES = """
    INSERT INTO {s}.schedules
        (name, cron, job_type, args, channel, timezone, catch_up, created, last_slot)
    SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::json[], %b::text[], %b::text[],
                         %b::text[], %b::timestamptz[], %b::timestamptz[])
    ON CONFLICT (name) DO UPDATE SET cron = EXCLUDED.cron, job_type = EXCLUDED.job_type,
        args = EXCLUDED.args, channel = EXCLUDED.channel, timezone = EXCLUDED.timezone,
        catch_up = EXCLUDED.catch_up, created = EXCLUDED.created, last_slot = EXCLUDED.last_slot
"""
DELETE_SCHEDULES = "DELETE FROM {s}.schedules WHERE name = ANY(%b::text[])"
LOAD_SCHEDULES = """
    SELECT name, cron, job_type, args::text, channel, timezone, catch_up, created, last_slot
    FROM {s}.schedules ORDER BY name
"""
DELETE_JOBS = "DELETE FROM {s}.jobs WHERE id = ANY(%b::uuid[])"
DELETE_WORKERS = "DELETE FROM {s}.workers WHERE id = ANY(%b::uuid[])"
LOAD_WORKERS = "SELECT id, channel, arch, updated, channels FROM {s}.workers ORDER BY seq"
LOAD_JOBS = """
    SELECT id, seq, type, channel, args::text, queued, started, finished, canceled,
           result::text, retries, token, worker_id, failed, cancel_on_failed_dependency,
           failed_dependency, priority, not_before, unique_key
    FROM {s}.jobs ORDER BY seq
"""
LOAD_DEPENDENCIES = (
    "SELECT job_id, dependency_id FROM {s}.job_dependencies ORDER BY job_id, position"
)
LOCK_HELD = """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND classid = %s::oid AND objid = %s::oid AND objsubid = 2
      AND pid = pg_backend_pid() AND granted
"""


def write_changes(
    cur: psycopg.Cursor[Any], changes: Changes, sql: Callable[[str], Composed]
) -> None:
    """Send one batch's statements on ``cur``, inside the caller's transaction."""
    # Workers first and deletions last, so that rows exist before they
    # are referenced (the foreign keys that could trip on order are
    # deferred to COMMIT anyway).
    if changes.workers:
        ws = changes.workers
        cur.execute(
            sql(UPSERT_WORKERS),
            ([w.id for w in ws], [w.channel for w in ws], [w.arch for w in ws],
             [w.updated for w in ws], [orjson.dumps(list(w.channels)).decode() for w in ws]),
        )  # fmt: skip
    if changes.jobs:
        jobs = changes.jobs
        cur.execute(sql(UPSERT_JOBS), _job_columns(jobs))
        deps = [(r, pos, dep) for r in jobs for pos, dep in enumerate(r.dependencies)]
        if deps:
            cur.execute(
                sql(INSERT_DEPENDENCIES),
                ([r.id for r, _, _ in deps], [r.seq for r, _, _ in deps],
                 [pos for _, pos, _ in deps], [dep for _, _, dep in deps]),
            )  # fmt: skip
    if changes.deleted_jobs:
        cur.execute(sql(DELETE_JOBS), (list(changes.deleted_jobs),))
    if changes.deleted_workers:
        cur.execute(sql(DELETE_WORKERS), (list(changes.deleted_workers),))
    # in the same transaction as the jobs a slot enqueued: its mark and its
    # jobs commit together
    if changes.deleted_schedules:
        cur.execute(sql(DELETE_SCHEDULES), (list(changes.deleted_schedules),))
    if changes.schedules:
        ss = changes.schedules
        cur.execute(
            sql(UPSERT_SCHEDULES),
            ([r.name for r in ss], [r.cron for r in ss], [r.job_type for r in ss],
             [r.args for r in ss], [r.channel for r in ss], [r.timezone for r in ss],
             [r.catch_up for r in ss], [r.created for r in ss], [r.last_slot for r in ss]),
        )  # fmt: skip


def read_schedules(
    conn: psycopg.Connection[Any], sql: Callable[[str], Composed]
) -> list[ScheduleRecord]:
    """Every schedule, by name, in the caller's transaction."""
    with conn.cursor() as cur:
        cur.execute(sql(LOAD_SCHEDULES))
        return [ScheduleRecord(*row) for row in cur.fetchall()]


#: Rows per fetch of a load: big enough that round trips do not count, small
#: enough that the session is never idle in its transaction for long.
LOAD_CHUNK: Final = 20_000


def read_records(
    conn: psycopg.Connection[Any], sql: Callable[[str], Composed]
) -> tuple[list[JobRecord], list[WorkerRecord]]:
    """Every worker (insertion order) and job (seq order), in the caller's transaction.

    Jobs come through a server-side cursor, ``LOAD_CHUNK`` rows per fetch:
    memory stays at one chunk of rows beside the records, and the session
    goes back to the server every few milliseconds, so an
    ``idle_in_transaction_session_timeout`` never ends a long load.
    """
    with conn.cursor(binary=True) as cur:
        cur.execute(sql(LOAD_WORKERS))
        workers = [
            WorkerRecord(id, channel, arch, updated, tuple(channels))
            for id, channel, arch, updated, channels in cur.fetchall()
        ]
        cur.execute(sql(LOAD_DEPENDENCIES))
        deps: dict[UUID, list[UUID]] = {}
        for job_id, dep_id in cur.fetchall():
            deps.setdefault(job_id, []).append(dep_id)
    jobs: list[JobRecord] = []
    none = ()
    with conn.cursor(name="actorq_load_jobs", binary=True) as cur:
        cur.execute(sql(LOAD_JOBS))
        while rows := cur.fetchmany(LOAD_CHUNK):
            jobs.extend(
                JobRecord(
                    id=job_id,
                    seq=seq,
                    type=job_type,
                    channel=channel,
                    args=args,
                    dependencies=tuple(deps[job_id]) if job_id in deps else none,
                    queued=queued,
                    started=started,
                    finished=finished,
                    canceled=canceled,
                    result=result,
                    retries=retries,
                    token=token,
                    worker_id=worker_id,
                    failed=failed,
                    cancel_on_failed_dependency=cancel_on_failed_dependency,
                    failed_dependency=failed_dependency,
                    priority=priority,
                    not_before=not_before,
                    unique_key=unique_key,
                )
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
                    failed,
                    cancel_on_failed_dependency,
                    failed_dependency,
                    priority,
                    not_before,
                    unique_key,
                ) in rows
            )
    return jobs, workers


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
        [r.failed for r in records],
        [r.cancel_on_failed_dependency for r in records],
        [r.failed_dependency for r in records],
        [r.priority for r in records],
        [r.not_before for r in records],
        [r.unique_key for r in records],
    )
