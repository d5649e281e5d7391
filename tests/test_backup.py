"""``actorq backup``: an online copy of a SQLite store, taken while a real server writes."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
from typing import TYPE_CHECKING

import pytest
import trio
from click.testing import CliRunner
from test_cli import start_serve, stop

import actorq
from actorq._cli._main import main

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID


async def test_a_backup_taken_while_the_server_writes_holds_every_acknowledged_job(
    tmp_path: Path,
) -> None:
    db = tmp_path / "live.db"
    copy = tmp_path / "copy.db"
    proc, url, _ = await start_serve(f"sqlite:///{db}")
    acked: list[UUID] = []  # enqueued, in the order the server acknowledged them
    finished: list[UUID] = []  # finished, as acknowledged
    try:
        async with actorq.connect(url) as queue, trio.open_nursery() as nursery:
            enough = trio.Event()

            async def produce() -> None:
                while True:
                    acked.append(await queue.enqueue("t", {"n": len(acked)}, channel="red"))
                    if len(acked) % 2 == 0:
                        job = await queue.dequeue(["t"], ["red"], timeout=0)
                        await queue.finish_job(job.id, {"done": True})
                        finished.append(job.id)
                    if len(acked) == 200:
                        enough.set()

            nursery.start_soon(produce)
            await enough.wait()
            acked_before, finished_before = list(acked), list(finished)
            done = await trio.run_process(
                [sys.executable, "-m", "actorq", "backup", f"sqlite:///{db}", str(copy)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            acked_by_the_end = len(acked)
            nursery.cancel_scope.cancel()
    finally:
        await stop(proc)

    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith("backed up ")
    assert done.stdout.decode().rstrip().endswith("bytes, through the server)")
    # the server went on writing while the copy was taken
    assert acked_by_the_end > len(acked_before)

    # the copy is a sound SQLite file of its own, and an actorq store
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    finally:
        conn.close()
    async with actorq.open_queue(f"sqlite:///{copy}", maintenance=None) as restored:
        for job_id in acked_before:
            status = await restored.job_status(job_id)
            assert status.type == "t"
        for job_id in finished_before:
            assert (await restored.job_status(job_id)).result == {"done": True}
        # nothing is in the copy that the server never had
        jobs = await restored.list_jobs()
        assert {j.id for j in jobs} <= set(acked)
        assert len(jobs) >= len(acked_before)


def write_store(path: Path) -> int:
    async def fill() -> int:
        async with actorq.open_queue(f"sqlite:///{path}", maintenance=None) as queue:
            for n in range(5):
                await queue.enqueue("t", {"n": n})
            await queue.insert_worker("", "x86_64")
            return len(await queue.list_jobs())

    return trio.run(fill)


def test_a_backup_of_a_stopped_store_by_path_replaces_only_with_force(tmp_path: Path) -> None:
    source = tmp_path / "q.db"
    write_store(source)
    dest = tmp_path / "b.db"
    runner = CliRunner()
    result = runner.invoke(main, ["backup", str(source), str(dest)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"backed up 5 jobs and 1 workers to {dest} (")
    assert result.output.rstrip().endswith("bytes, through the file)")
    result = runner.invoke(main, ["backup", str(source), str(dest)])
    assert result.exit_code == 1
    assert result.output == f"actorq: {dest} exists already (pass --force to replace it)\n"
    assert runner.invoke(main, ["backup", "--force", str(source), str(dest)]).exit_code == 0
    # no temporary file is left beside the copy
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("b.db")) == ["b.db"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("memory://", "backup copies SQLite stores only, not memory: stores"),
        ("postgresql://u@h/db", "backup copies SQLite stores only, not postgresql: stores"),
        ("sqlite://host/x.db", "unsupported sqlite URL"),
        ("missing.db", "missing.db does not exist"),
    ],
)
def test_what_cannot_be_backed_up_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["backup", source, str(tmp_path / "out.db")])
    assert result.exit_code == 1
    assert result.output.startswith("actorq: ")
    assert message in result.output
    assert len(result.output.splitlines()) == 1
    assert not (tmp_path / "out.db").exists()


def test_a_database_that_is_not_a_store_is_refused_and_no_copy_is_left(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    result = CliRunner().invoke(main, ["backup", str(other), str(tmp_path / "out.db")])
    assert result.output == f"actorq: {other} is not an actorq store\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_a_backup_never_overwrites_its_source(tmp_path: Path) -> None:
    source = tmp_path / "q.db"
    write_store(source)
    result = CliRunner().invoke(main, ["backup", "--force", str(source), str(source)])
    assert result.output == "actorq: the backup cannot overwrite its own source\n"
    assert write_store(source) == 10  # still the same store, and writable


async def test_the_server_side_answers_requests_on_its_socket(tmp_path: Path) -> None:
    from actorq._cli._backup import control_path, request_backup, serve_backups
    from actorq._stores._sqlite_backup import BackupError

    store = actorq.SqliteStore(tmp_path / "q.db")
    dest = tmp_path / "copy.db"
    async with actorq.open_queue(store, maintenance=None) as queue, trio.open_nursery() as nursery:
        job_id = await queue.enqueue("t", {"n": 1})
        path = await nursery.start(serve_backups, store)
        assert path == control_path(store.path)
        assert os.stat(path).st_mode & 0o777 == 0o600

        done = await trio.to_thread.run_sync(
            lambda: request_backup(store.path, str(dest), overwrite=False)
        )
        assert done is not None
        assert (done.path, done.jobs, done.workers) == (str(dest), 1, 0)
        with pytest.raises(BackupError, match="exists already"):
            await trio.to_thread.run_sync(
                lambda: request_backup(store.path, str(dest), overwrite=False)
            )

        # a malformed request gets one sentence back, and the server goes on
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(path)
        stream = trio.SocketStream(sock)
        await stream.send_all(b'{"dest": "relative.db"}\n')
        reply = json.loads(await stream.receive_some(65536))
        assert reply == {"error": "a backup request is one JSON line with an absolute dest path"}
        await stream.aclose()

        await queue.enqueue("t", {"n": 2})
        done = await trio.to_thread.run_sync(
            lambda: request_backup(store.path, str(dest), overwrite=True)
        )
        assert done is not None
        assert done.jobs == 2
        nursery.cancel_scope.cancel()
    assert not await trio.Path(control_path(store.path)).exists()  # removed as the server stops

    async with actorq.open_queue(f"sqlite:///{dest}", maintenance=None) as restored:
        assert (await restored.job_status(job_id)).type == "t"
        assert len(await restored.list_jobs()) == 2


async def test_a_store_backs_itself_up_in_process(tmp_path: Path) -> None:
    store = actorq.SqliteStore(tmp_path / "q.db")
    async with actorq.open_queue(store, maintenance=None) as queue:
        ids = [await queue.enqueue("t", {"n": n}) for n in range(3)]
        done = await store.backup(tmp_path / "copy.db")
        assert done.jobs == 3
    async with actorq.open_queue(f"sqlite:///{tmp_path / 'copy.db'}") as restored:
        assert [j.id for j in await restored.list_jobs()] == ids
