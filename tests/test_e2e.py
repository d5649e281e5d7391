"""End to end, with real processes: ``actorq serve``, two ``actorq worker``s, the CLI.

Real time is unavoidable here; the timeouts are small so the whole file runs
in seconds, and every wait is a bounded poll, never a fixed sleep asserted on.
"""

from __future__ import annotations

import functools
import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING
from uuid import UUID

import pytest
import trio

import actorq
from actorq._cli._main import _status_dict

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

PYTHON = sys.executable

# The job command: args on stdin, result on stdout. It records which worker runs
# it (its parent) and, when asked, sleeps; a rerun after a kill is quick.
COMMAND = textwrap.dedent(
    """
    import json, os, sys, time
    args = json.load(sys.stdin) or {}
    marker = args.get("marker")
    if marker:
        first_run = not os.path.exists(marker)
        with open(marker, "a") as f:
            f.write(f"{os.getppid()}\\n")
        if first_run:
            time.sleep(args.get("sleep", 0))
    elif args.get("sleep"):
        time.sleep(args["sleep"])
    if args.get("fail"):
        sys.exit(3)
    print(json.dumps({"job": os.environ["ACTORQ_JOB_ID"], "echo": args.get("text")}))
    """
)


# Jobs handed out but never received when a server dies come back through the
# reaper: a short job timeout brings them back within the test's time.
REAP_FAST = ("--heartbeat-timeout", "2", "--watch-interval", "0.2")


def _has_started(log: Path) -> bool:
    return "actorq worker" in log.read_text()


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [
            *(PYTHON, "-m", "actorq", "--store", f"sqlite:///{tmp_path / 'q.db'}", "serve"),
            *("--port", "0", "--heartbeat-timeout", "1", "--watch-interval", "0.2"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"on (ws://\S+)", line)
    assert match, line
    try:
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def cli(url: str, *args: str) -> str:
    done = subprocess.run(
        [PYTHON, "-m", "actorq", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def status(url: str, job_id: str) -> dict[str, object]:
    """A job's status as ``actorq status`` prints it; polls use the client directly (fast)."""

    async def fetch() -> dict[str, object]:
        async with actorq.connect(url, heartbeat_interval=None) as queue:
            return _status_dict(UUID(job_id), await queue.job_status(UUID(job_id)))

    return trio.run(fetch)


def start_worker(url: str, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "command.py"
    script.write_text(COMMAND)
    with open(tmp_path / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [
                *(PYTHON, "-m", "actorq", "--url", url, "worker", "--type", "work"),
                *("--heartbeat-interval", "0.2", "--grace", "5", "--", PYTHON, str(script)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def test_serve_workers_dependencies_kill_and_drain(server: str, tmp_path: Path) -> None:
    url = server
    workers = [start_worker(url, tmp_path, f"w{i}") for i in range(2)]
    try:
        # a tree of dependent jobs, enqueued from the command line
        a = cli(url, "enqueue", "work", '{"text": "a"}')
        b = cli(url, "enqueue", "work", '{"text": "b"}', "--after", a)
        c = cli(url, "enqueue", "work", '{"text": "c"}', "--after", a, "--after", b)
        failing = cli(url, "enqueue", "work", '{"fail": true}')
        wait_for(lambda: status(url, c)["state"] == "finished")
        assert json.loads(cli(url, "status", c)) == status(url, c)
        for job_id, text in ((a, "a"), (b, "b"), (c, "c")):
            got = status(url, job_id)
            assert got["result"] == {"job": job_id, "echo": text}
        wait_for(lambda: status(url, failing)["state"] == "failed")  # a non-zero exit is a failure
        error = status(url, failing)["result"]
        assert isinstance(error, dict)
        assert "exited with status 3" in json.dumps(error)

        # a worker killed mid-job: the reaper requeues its job, the other worker runs it
        marker = tmp_path / "marker"
        slow = cli(url, "enqueue", "work", json.dumps({"marker": str(marker), "sleep": 30}))
        wait_for(marker.exists)
        victim_pid = int(marker.read_text().split()[0])
        victim = next(w for w in workers if w.pid == victim_pid)
        victim.kill()
        victim.wait()
        wait_for(lambda: status(url, slow)["state"] == "finished")
        final = status(url, slow)
        assert final["retries"] == 1
        assert final["result"] == {"job": slow, "echo": None}
        runners = [int(p) for p in marker.read_text().split()]
        survivor = next(w for w in workers if w.pid != victim_pid)
        assert runners == [victim_pid, survivor.pid]

        # SIGTERM drains: the running job finishes, then the worker exits 0
        started = tmp_path / "draining-started"
        draining = cli(url, "enqueue", "work", json.dumps({"marker": str(started), "sleep": 2}))
        wait_for(started.exists)
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(timeout=20) == 0
        drained = status(url, draining)
        assert (drained["state"], drained["retries"]) == ("finished", 0)
        assert drained["result"] == {"job": draining, "echo": None}
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert "Traceback" not in (tmp_path / "w0.log").read_text() + (tmp_path / "w1.log").read_text()


def test_cli_errors_have_no_traceback(server: str) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "actorq", "--url", server, "status", "00000000-0000-4000-8000-000000000000"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("actorq: ")
    assert "Traceback" not in done.stderr


# A module-level worker for the restart test: async no-op handlers, results that
# say which job they belong to.
RESTART_APP = textwrap.dedent(
    """
    import actorq
    import trio

    worker = actorq.Worker(concurrency=8, heartbeat_interval=0.3, status_interval=0.5)


    @worker.handler("t")
    async def handle(job: actorq.Job, args: dict) -> dict:
        await trio.sleep(0.02)  # at most 800 jobs/s for two workers: the kill lands mid-way
        return {"n": args["n"]}
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _start_server(db: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [
                *(PYTHON, "-m", "actorq", "--store", f"sqlite:///{db}", "serve"),
                *("--host", "127.0.0.1", "--port", str(port)),
                *("--heartbeat-timeout", "2", "--watch-interval", "0.2"),
            ],
            stderr=err,
        )


def _serving(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class _Producer:
    """The test's own client: enqueues the jobs, reads progress and results."""

    def __init__(self, url: str | list[str], total: int) -> None:
        self.url = url
        self.total = total

    async def _enqueue_all(self) -> list[UUID]:
        async with actorq.connect(self.url, heartbeat_interval=None) as queue:
            ids: list[UUID] = []
            for start in range(0, self.total, 200):
                specs = [("t", {"n": n}) for n in range(start, start + 200)]
                ids.extend(await queue.enqueue_many(specs))
            return ids

    async def _stats(self) -> actorq.QueueStats:
        async with actorq.connect(self.url, heartbeat_interval=None) as queue:
            return await queue.stats()

    async def _results(self, ids: list[UUID]) -> list[object]:
        async with actorq.connect(self.url, heartbeat_interval=None) as queue:
            return [(await queue.job_status(job_id)).result for job_id in ids]

    def enqueue_all(self) -> list[UUID]:
        return trio.run(self._enqueue_all)

    def stats(self) -> actorq.QueueStats:
        return trio.run(self._stats)

    def results(self, ids: list[UUID]) -> list[object]:
        return trio.run(self._results, ids)


def _start_module_workers(url: str, tmp_path: Path, workers: list[subprocess.Popen[bytes]]) -> None:
    """Start two ``actorq worker restart_app:worker`` processes into ``workers`` (so a
    failing test still stops them) and wait until both are registered."""
    for name in ("w0", "w1"):
        with (tmp_path / f"{name}.log").open("wb") as err:
            workers.append(
                subprocess.Popen(
                    [PYTHON, "-m", "actorq", "--url", url, "worker", "restart_app:worker"],
                    cwd=tmp_path,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )
    for name in ("w0", "w1"):
        wait_for(functools.partial(_has_started, tmp_path / f"{name}.log"))


def test_workers_survive_a_server_killed_and_restarted(tmp_path: Path) -> None:
    """``actorq serve`` on SQLite is SIGKILLed and restarted on the same port while
    two module workers work through 2,000 jobs: both keep running, every job
    finishes, and every finish that was acknowledged is recorded."""
    (tmp_path / "restart_app.py").write_text(RESTART_APP)
    db, port, server_log = tmp_path / "q.db", _free_port(), tmp_path / "server.log"
    url = f"ws://127.0.0.1:{port}"
    server = _start_server(db, port, server_log)
    workers: list[subprocess.Popen[bytes]] = []
    total = 2000
    producer = _Producer(url, total)
    try:
        wait_for(lambda: _serving(port))
        _start_module_workers(url, tmp_path, workers)
        ids = producer.enqueue_all()
        wait_for(lambda: producer.stats().finished >= 200)
        assert producer.stats().finished < total
        server.kill()  # no close frame, nothing flushed: a crash
        server.wait()
        assert trio.run(_refused, port)
        server = _start_server(db, port, server_log)
        wait_for(lambda: _serving(port))
        wait_for(lambda: producer.stats().finished == total, timeout=25)
        final = producer.stats()
        assert (final.pending, final.running) == (0, 0)
        assert producer.results(ids) == [{"n": n} for n in range(total)]
        assert [w.poll() for w in workers] == [None, None]  # both kept running
        for w in workers:
            w.send_signal(signal.SIGTERM)
        assert [w.wait(timeout=20) for w in workers] == [0, 0]
    finally:
        for proc in (*workers, server):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = "".join((tmp_path / f"{name}.log").read_text() for name in ("w0", "w1"))
    assert "Traceback" not in logs
    assert logs.count("reconnected to the queue server") == 2


async def _refused(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


def test_workers_move_to_the_standby_when_the_postgres_leader_dies(tmp_path: Path) -> None:
    """Two ``actorq serve`` on one PostgreSQL database, two module workers given
    both URLs: the leader is SIGKILLed mid-way, the standby takes over, and the
    workers move to it and finish every job."""
    import pgserver
    from _kinds_postgres import new_schema
    from test_postgres_crash import ServerProcess, lock_sessions

    db = pgserver.require_server()
    dbname = new_schema()
    store = db.create_database(dbname)
    ports = [_free_port(), _free_port()]
    urls = [f"ws://127.0.0.1:{port}" for port in ports]
    (tmp_path / "restart_app.py").write_text(RESTART_APP)
    leader = ServerProcess(store, ports[0], *REAP_FAST)
    standby: ServerProcess | None = None
    workers: list[subprocess.Popen[bytes]] = []
    total = 1000
    producer = _Producer(urls, total)

    try:
        leader.wait_serving(30)
        standby = ServerProcess(store, ports[1], *REAP_FAST)
        wait_for(lambda: lock_sessions(db, dbname) >= 2)  # the standby is polling
        assert not standby.serving()
        _start_module_workers(",".join(urls), tmp_path, workers)
        ids = producer.enqueue_all()
        wait_for(lambda: producer.stats().finished >= 100)
        assert producer.stats().finished < total
        leader.kill()
        standby.wait_serving(30)
        wait_for(lambda: producer.stats().finished == total, timeout=30)
        assert producer.results(ids) == [{"n": n} for n in range(total)]
        assert [w.poll() for w in workers] == [None, None]  # both moved, neither exited
        for w in workers:
            w.send_signal(signal.SIGTERM)
        assert [w.wait(timeout=20) for w in workers] == [0, 0]
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        leader.kill()
        if standby is not None:
            standby.kill()
    logs = "".join((tmp_path / f"{name}.log").read_text() for name in ("w0", "w1"))
    assert "Traceback" not in logs
    assert logs.count(f"reconnected to the queue server (127.0.0.1:{ports[1]}/)") == 2


def test_serve_job_timeout_is_a_deprecated_alias(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            *(PYTHON, "-m", "actorq", "--store", f"sqlite:///{tmp_path / 'q.db'}", "serve"),
            *("--port", "0", "--job-timeout", "7"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        warning = proc.stderr.readline()
        assert "--job-timeout is deprecated" in warning
        assert "--heartbeat-timeout" in warning
        assert "on ws://" in proc.stderr.readline()  # and it serves
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
