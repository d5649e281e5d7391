"""Upgrades for the job lifecycle: stores written by schema version 1, clients of protocol 1 and 2.

A database of schema version 1 is built with version 1's own DDL (the first,
never edited, migration step) and rows in version 1's columns, as the
release before the lifecycle wrote them; opening it migrates it, and what it
held reads back unchanged. A client that speaks protocol 1 or 2 is held to
exactly the reply shapes those versions define: a failed job reads as
finished there.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import pgserver
import psycopg
import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream

import actorq
from actorq import JobState
from actorq._remote import _wire as w
from actorq._remote._server import QueueServer
from actorq._stores import _postgres_schema, _sqlite_schema
from actorq._stores._postgres import PostgresStore

if TYPE_CHECKING:
    from pathlib import Path

ERROR = {"error": {"type": "E", "message": "boom", "traceback": None}}
T0 = datetime(2026, 1, 1, tzinfo=UTC)
MICROS = int(T0.timestamp()) * 1_000_000

FINISHED, PENDING, RUNNING, CANCELED = (uuid.UUID(int=n) for n in range(1, 5))
TOKEN = uuid.UUID(int=99)


# ------------------------------------------------------------------ SQLite


def write_version_1_sqlite(path: Path) -> None:
    """A queue file exactly as schema version 1 left it: a finished job, its
    pending dependent, a running job and a canceled one."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE actorq_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO actorq_schema (version) VALUES (1)")
        for statement in _sqlite_schema._MIGRATIONS[0]:
            conn.execute(statement)
        rows = [
            (1, FINISHED.bytes, "build", "", "{}", b"", MICROS, MICROS, MICROS + 1, 0, '"ok"', 0,
             None, None),
            (2, PENDING.bytes, "test", "", "null", FINISHED.bytes, MICROS, None, None, 0, None, 0,
             None, None),
            (3, RUNNING.bytes, "build", "", "null", b"", MICROS, MICROS, None, 0, None, 1,
             TOKEN.bytes, None),
            (4, CANCELED.bytes, "build", "c", "null", b"", MICROS, None, None, 1, None, 0,
             None, None),
        ]  # fmt: skip
        conn.executemany(
            "INSERT INTO jobs (seq, id, type, channel, args, dependencies, queued, started,"
            " finished, canceled, result, retries, token, worker_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def check_upgraded(queue: actorq.LocalQueue) -> None:
    """What a version 1 queue held reads back as it was, and the new states work on it."""
    states = {j.id: j.state for j in await queue.list_jobs()}
    assert states == {
        FINISHED: JobState.FINISHED,
        PENDING: JobState.PENDING,
        RUNNING: JobState.RUNNING,
        CANCELED: JobState.CANCELED,
    }
    finished = await queue.job_status(FINISHED)
    assert (finished.result, finished.failed, finished.failed_dependency) == ("ok", False, None)
    assert (await queue.job_status(RUNNING)).retries == 1
    assert await queue.id_from_token(TOKEN) == RUNNING
    await queue.finish_job(RUNNING, ERROR, failed=True)
    job = await queue.dequeue(["test"], timeout=0)
    assert job.id == PENDING


async def check_failure_kept(queue: actorq.LocalQueue) -> None:
    status = await queue.job_status(RUNNING)
    assert (status.state, status.result) == (JobState.FAILED, ERROR)
    assert (await queue.stats()).failed == 1


async def test_a_version_1_sqlite_queue_is_upgraded_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    write_version_1_sqlite(path)
    async with actorq.open_queue(f"sqlite:///{path}", maintenance=None) as queue:
        await check_upgraded(queue)
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("SELECT version FROM actorq_schema").fetchall()
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    finally:
        conn.close()
    assert version == [(_sqlite_schema.SCHEMA_VERSION,)]
    assert {"failed", "cancel_on_failed_dependency", "failed_dependency"} <= columns
    async with actorq.open_queue(f"sqlite:///{path}", maintenance=None) as queue:
        await check_failure_kept(queue)


async def test_failed_dependency_marks_survive_a_sqlite_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    async with actorq.open_queue(url, maintenance=None) as queue:
        dep = await queue.enqueue("build")
        dependent = await queue.enqueue("test", None, [dep], cancel_on_failed_dependency=True)
        later = await queue.enqueue("test", None, [dep], cancel_on_failed_dependency=True)
    async with actorq.open_queue(url, maintenance=None) as queue:
        await queue.fail_job(dep, ERROR)
    async with actorq.open_queue(url, maintenance=None) as queue:
        for job_id in (dependent, later):
            status = await queue.job_status(job_id)
            assert (status.state, status.failed_dependency) == (JobState.CANCELED, dep)
        assert (await queue.job_status(dep)).state is JobState.FAILED
        # the opt-in was kept too: a job enqueued now after the failure is born canceled
        again = await queue.enqueue("test", None, [dep], cancel_on_failed_dependency=True)
        assert (await queue.job_status(again)).state is JobState.CANCELED


# -------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg() -> pgserver.PgServer:
    return pgserver.require_server()


def write_version_1_postgres(pg: pgserver.PgServer, schema: str) -> None:
    with psycopg.connect(pg.url(), autocommit=False) as conn:
        conn.execute(_postgres_schema.q("CREATE SCHEMA {s}", schema))
        conn.execute(
            _postgres_schema.q("CREATE TABLE {s}.actorq_schema (version integer NOT NULL)", schema)
        )
        conn.execute(_postgres_schema.q("INSERT INTO {s}.actorq_schema VALUES (1)", schema))
        for statement in _postgres_schema._MIGRATIONS[0]:
            conn.execute(_postgres_schema.q(statement, schema))
        insert = _postgres_schema.q(
            "INSERT INTO {s}.jobs (id, seq, type, channel, args, queued, started, finished,"
            " canceled, result, retries, token, worker_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            schema,
        )
        conn.execute(insert, (FINISHED, 1, "build", "", "{}", T0, T0, T0, False, '"ok"', 0,
                              None, None))  # fmt: skip
        conn.execute(insert, (PENDING, 2, "test", "", "null", T0, None, None, False, None, 0,
                              None, None))  # fmt: skip
        conn.execute(insert, (RUNNING, 3, "build", "", "null", T0, T0, None, False, None, 1,
                              TOKEN, None))  # fmt: skip
        conn.execute(insert, (CANCELED, 4, "build", "c", "null", T0, None, None, True, None, 0,
                              None, None))  # fmt: skip
        conn.execute(
            _postgres_schema.q("INSERT INTO {s}.job_dependencies VALUES (%s, 2, 0, %s, 1)", schema),
            (PENDING, FINISHED),
        )
        conn.commit()


async def test_a_version_1_postgres_queue_is_upgraded_and_keeps_its_jobs(
    pg: pgserver.PgServer,
) -> None:
    schema = f"q_{uuid.uuid4().hex[:16]}"
    await trio.to_thread.run_sync(write_version_1_postgres, pg, schema)
    async with actorq.open_queue(PostgresStore(pg.url(), schema=schema), maintenance=None) as q:
        await check_upgraded(q)
    with psycopg.connect(pg.url()) as conn:
        version = conn.execute(
            _postgres_schema.q("SELECT version FROM {s}.actorq_schema", schema)
        ).fetchall()
        assert version == [(_postgres_schema.SCHEMA_VERSION,)]
        # the new columns keep the rules: a failed job has finished
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                _postgres_schema.q("UPDATE {s}.jobs SET failed = true WHERE seq = 2", schema)
            )
    # a job that finished successfully stays final, retries or not
    with psycopg.connect(pg.url()) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            _postgres_schema.q(
                "UPDATE {s}.jobs SET finished = NULL, started = NULL, result = NULL WHERE seq = 1",
                schema,
            )
        )
    async with actorq.open_queue(PostgresStore(pg.url(), schema=schema), maintenance=None) as q:
        await check_failure_kept(q)
        # the upgraded trigger lets a retry through
        assert await q.retry_job(RUNNING) == [RUNNING]  # retries 1 -> 0
    async with actorq.open_queue(PostgresStore(pg.url(), schema=schema), maintenance=None) as q:
        assert (await q.job_status(RUNNING)).state is actorq.JobState.PENDING


# ------------------------------------------------ clients of protocol 1 and 2


async def old_client(
    nursery: trio.Nursery, server: QueueServer, version: int
) -> WebSocketConnection:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle_stream, server_stream)
    ws = await wrap_client_stream(nursery, client_stream, "localhost", "/")  # type: ignore[arg-type]
    await ws.send_message(orjson.dumps({"kind": "hello", "id": 0, "versions": [version]}).decode())
    welcome = orjson.loads(await ws.get_message())
    assert (welcome["kind"], welcome["version"]) == ("welcome", version)
    return ws


async def ask(ws: WebSocketConnection, request_id: int, kind: str, **fields: Any) -> Any:
    await ws.send_message(orjson.dumps({"kind": kind, "id": request_id, **fields}).decode())
    reply = orjson.loads(await ws.get_message())
    assert reply["kind"] in ("ok", "dequeued"), reply
    return reply.get("value", reply.get("job"))


# Exactly the fields protocol 2 (and 1) define for these replies.
STATUS_FIELDS_2 = {
    "type", "channel", "result", "queued", "started", "finished", "canceled",
    "dependencies", "dependents", "retries",
}  # fmt: skip
STATS_FIELDS_2 = {
    "jobs", "pending", "ready", "blocked", "running", "finished", "canceled",
    "waiting_dequeuers", "workers",
}  # fmt: skip
STATES_2 = {"pending", "running", "finished", "canceled"}


@pytest.mark.parametrize("version", [1, 2])
async def test_clients_of_protocol_1_and_2_keep_working(version: int) -> None:
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        server = QueueServer(local)
        ws = await old_client(nursery, server, version)
        failed = await ask(ws, 1, "enqueue", job_type="t", args=None, dependencies=[], channel="")
        dependent = await ask(ws, 2, "enqueue", job_type="u", dependencies=[failed])
        job = await ask(ws, 3, "dequeue", job_types=["t"], channels=[""], timeout=0)
        assert job["id"] == failed
        # a failure settled on the server side (a worker of protocol 3, or the reaper)
        await local.finish_job(uuid.UUID(failed), ERROR, failed=True)
        await ask(ws, 4, "fail_job", job_id=dependent, result=ERROR)

        status = await ask(ws, 5, "job_status", job_id=failed)
        assert set(status) == STATUS_FIELDS_2
        assert status["result"] == ERROR
        assert status["finished"] is not None
        summaries = await ask(ws, 6, "list_jobs")
        assert [s["state"] for s in summaries] == ["finished", "finished"]
        assert {s["state"] for s in summaries} <= STATES_2
        assert await ask(ws, 7, "list_jobs", state="finished") == summaries
        stats = await ask(ws, 8, "stats")
        assert set(stats) == STATS_FIELDS_2
        assert stats["finished"] == 2
        # strict as today's clients are: the replies structure into version 2's classes
        for value, cls in ((status, V2Status), (stats, V2Stats)):
            w.structure_value(value, cls)
        nursery.cancel_scope.cancel()


async def test_a_protocol_3_client_sees_the_failed_state() -> None:
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        server = QueueServer(local)
        ws = await old_client(nursery, server, 3)
        job_id = await ask(ws, 1, "enqueue", job_type="t")
        await ask(ws, 2, "fail_job", job_id=job_id, result=ERROR)
        status = await ask(ws, 3, "job_status", job_id=job_id)
        assert status["failed"] is True
        assert "failed_dependency" not in status  # left out at its default
        assert [s["state"] for s in await ask(ws, 4, "list_jobs")] == ["failed"]
        stats = await ask(ws, 5, "stats")
        assert (stats["failed"], stats["finished"]) == (1, 0)
        nursery.cancel_scope.cancel()


async def test_requests_leave_out_lifecycle_fields_at_their_defaults() -> None:
    # so that a server of protocol 1 or 2, which refuses unknown fields, reads them
    from actorq._core import _ops as ops

    plain = orjson.loads(w.encode(w.Request(id=1, op=ops.FinishJob(job_id=FINISHED))))
    assert "failed" not in plain
    failing = orjson.loads(
        w.encode(w.Request(id=1, op=ops.FinishJob(job_id=FINISHED, failed=True)))
    )
    assert failing["failed"] is True
    enqueue = orjson.loads(w.encode(w.Request(id=2, op=ops.Enqueue(job_type="t"))))
    assert "cancel_on_failed_dependency" not in enqueue


# The reply classes of protocol 2, as today's clients define them.


@attrs.frozen
class V2Status:
    type: str
    channel: str
    result: Any
    queued: datetime
    started: datetime | None
    finished: datetime | None
    canceled: bool
    dependencies: list[uuid.UUID]
    dependents: list[uuid.UUID]
    retries: int


@attrs.frozen
class V2Stats:
    jobs: int
    pending: int
    ready: list[tuple[str, str, int]]
    blocked: int
    running: int
    finished: int
    canceled: int
    waiting_dequeuers: int
    workers: int
