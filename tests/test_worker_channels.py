"""Every channel of a worker: registered, listed, stored, and kept from older peers.

The first tests run on every queue kind (the ``queue`` fixture: memory, the
stores, reopened stores, PostgreSQL, remote).
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import trio
from click.testing import CliRunner

import actorq
from actorq import ProtocolError
from actorq._cli._main import main
from actorq._core import _ops as ops
from actorq._core._models import WorkerInfo
from actorq._core._state import QueueState
from actorq._remote import _wire as w
from actorq._stores import _sqlite_schema

if TYPE_CHECKING:
    from pathlib import Path

Q = Any  # an actorq.JobQueue


async def test_a_worker_keeps_every_channel_it_registers(queue: Q) -> None:
    many = await queue.insert_worker("red", "x86_64", channels=["blue", "red", ""])
    one = await queue.insert_worker("green", "aarch64")
    found = {worker.id: worker for worker in await queue.workers()}
    assert (found[many].channel, found[many].channels) == ("red", ("red", "blue", ""))
    assert (found[one].channel, found[one].channels) == ("green", ("green",))
    await queue.update_worker_status(many)  # a status report keeps them
    assert {w.id: w.channels for w in await queue.workers()}[many] == ("red", "blue", "")


async def test_bad_channels_raise_and_register_nothing(queue: Q) -> None:
    with pytest.raises(TypeError):
        await queue.insert_worker("red", "x", channels="blue")  # a bare string
    with pytest.raises(TypeError):
        await queue.insert_worker("red", "x", channels=[1])
    assert await queue.workers() == []


def test_a_tenant_registers_only_channels_of_its_own() -> None:
    core = QueueState(wall=lambda: datetime(2026, 1, 1, tzinfo=UTC), monotonic=lambda: 0.0)
    scope = frozenset({"red", "blue"})
    mine = ops.InsertWorker(channel="red", arch="x", channels=("blue",)).checked()
    worker_id = ops.run(mine, core, scope)
    assert core.workers()[0].channels == ("red", "blue")
    theirs = ops.InsertWorker(channel="red", arch="x", channels=("green",)).checked()
    with pytest.raises(ProtocolError) as info:
        ops.run(theirs, core, scope)
    assert info.value.reason == "forbidden"
    assert [worker.id for worker in core.workers()] == [worker_id]


def test_older_peers_see_one_channel() -> None:
    info = WorkerInfo(
        id=uuid.UUID(int=1),
        channel="red",
        arch="x",
        updated=datetime(2026, 1, 1, tzinfo=UTC),
        channels=("red", "blue"),
    )
    # a client of protocol 2 gets the worker as it knows it: no channels field
    assert "channels" not in w.unstructure_value([info], 2)[0]
    assert w.unstructure_value([info], 3)[0]["channels"] == ["red", "blue"]
    # a server of protocol 2 is sent a registration it reads
    request = w.Request(id=1, op=ops.InsertWorker(channel="red", arch="x", channels=("blue",)))
    assert '"channels"' not in w.encode(w.request_for_server(request, 2))
    assert '"channels":["blue"]' in w.encode(w.request_for_server(request, 3))


async def test_the_worker_runtime_registers_all_its_channels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue() as queue:
        worker = actorq.Worker(queue, channels=["red", "blue"])

        @worker.handler("build")
        async def build(job: actorq.Job) -> None:
            return None

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            (registered,) = await queue.workers()
            worker.shutdown(grace=0)
        assert registered.channels == ("red", "blue")


def test_actorq_workers_shows_every_channel(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"

    async def register() -> None:
        async with actorq.open_queue(url) as queue:
            await queue.insert_worker("red", "x86_64", channels=["", "blue"])

    trio.run(register)
    result = CliRunner().invoke(main, ["--store", url, "workers"])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if "x86_64" in line]
    assert row.split()[1] == "red,'',blue"


async def test_a_worker_stored_before_channels_has_its_one_channel(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    worker_id = uuid.UUID(int=7)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # a database of the schema before every channel was kept
        before = _sqlite_schema._MIGRATIONS.index(_sqlite_schema._WORKER_CHANNELS_MIGRATION)
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE actorq_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO actorq_schema (version) VALUES (?)", (before,))
        for step in _sqlite_schema._MIGRATIONS[:before]:
            for statement in step:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO workers (id, channel, arch, updated) VALUES (?, ?, ?, ?)",
            (worker_id.bytes, "red", "x86_64", 1_767_225_600_000_000),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    async with actorq.open_queue(f"sqlite:///{path}", maintenance=None) as queue:
        (worker,) = await queue.workers()
        assert (worker.id, worker.channels) == (worker_id, ("red",))
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("SELECT version FROM actorq_schema").fetchall()
    finally:
        conn.close()
    assert version == [(_sqlite_schema.SCHEMA_VERSION,)]


async def test_a_postgres_worker_stored_before_channels_has_its_one_channel() -> None:
    import pgserver
    import psycopg

    from actorq._stores._postgres import PostgresStore

    server = await trio.to_thread.run_sync(pgserver.require_server)
    schema = f"q_{uuid.uuid4().hex[:16]}"
    async with actorq.open_queue(PostgresStore(server.url(), schema=schema)) as queue:
        worker_id = await queue.insert_worker("red", "x86_64", channels=["blue"])

    def forget_channels() -> None:
        # what the migration leaves in a row written before: no channels
        with psycopg.connect(server.url()) as conn:
            conn.execute(f"UPDATE \"{schema}\".workers SET channels = '{{}}'")

    await trio.to_thread.run_sync(forget_channels)
    async with actorq.open_queue(PostgresStore(server.url(), schema=schema)) as queue:
        (worker,) = await queue.workers()
        assert (worker.id, worker.channels) == (worker_id, ("red",))
