"""End to end, with real processes: ``actorq serve``, two ``actorq worker``s, the CLI.

Real time is unavoidable here; the timeouts are small so the whole file runs
in seconds, and every wait is a bounded poll, never a fixed sleep asserted on.
"""

from __future__ import annotations

import json
import re
import signal
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
            *("--port", "0", "--job-timeout", "1", "--watch-interval", "0.2"),
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
        wait_for(lambda: status(url, failing)["state"] == "finished")
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
