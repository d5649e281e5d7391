"""``actorq worker module:attribute``: the Worker a module defines, run by the command line.

In process through click's CliRunner against a SQLite store (the worker stops
itself through :meth:`Worker.shutdown` once its last job runs), and in real
processes against ``actorq serve``, stopped with SIGTERM as a deployment
stops it. Real time in the subprocess test; every wait there is a bounded
poll, never a sleep asserted on.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import pytest
import trio
from click.testing import CliRunner, Result

import actorq
from actorq._cli._load import load_worker, split_target
from actorq._cli._main import main

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

PYTHON = sys.executable
ACTORQ = str(Path(sys.executable).with_name("actorq"))

# A module-level worker with no queue: the command line binds it to one.
APP = textwrap.dedent(
    """
    import actorq

    worker = actorq.Worker(concurrency=1)
    not_a_worker = 42


    class Holder:
        worker = worker


    @worker.handler("double")
    async def double(job: actorq.Job, args: dict) -> dict:
        if args.get("last"):
            worker.shutdown()
        return {"twice": args["n"] * 2, "pid": __import__("os").getpid()}
    """
)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh module name for APP in tmp_path, which becomes the current directory.

    The module and sys.path are put back afterwards: loading imports the
    module into this process and puts the current directory on sys.path.
    """
    name = f"app_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield name
    sys.modules.pop(name, None)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def enqueue(store: str, n: int, *, last: bool = False) -> str:
    args = json.dumps({"n": n, "last": last})
    done = invoke("--store", store, "enqueue", "double", args)
    assert done.exit_code == 0, done.output
    return done.output.strip()


def status(store: str, job_id: str) -> dict[str, object]:
    done = invoke("--store", store, "status", job_id)
    assert done.exit_code == 0, done.output
    got: dict[str, object] = json.loads(done.output)
    return got


def test_runs_the_module_worker_on_a_store(app: str, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'q.db'}"
    jobs = [enqueue(store, 1), enqueue(store, 2), enqueue(store, 3, last=True)]
    result = invoke("--store", store, "worker", f"{app}:worker")
    assert result.exit_code == 0, result.output
    assert f"({app}:worker) for double (concurrency 1)" in result.output
    for job_id, n in zip(jobs, (1, 2, 3), strict=True):
        got = status(store, job_id)
        assert got["state"] == "finished"
        assert isinstance(got["result"], dict)
        assert got["result"]["twice"] == 2 * n
    # the worker deregistered on the way out
    listing = invoke("--store", store, "workers").output.splitlines()
    assert (listing[0], listing[-2]) == (
        "live workers: 0",
        "silent workers (no status for 150 s): 0",
    )


def test_a_dotted_attribute_path(app: str) -> None:
    assert load_worker(f"{app}:Holder.worker") is load_worker(f"{app}:worker")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon_here", "is not of the form module:attribute"),
        (":worker", "is not of the form module:attribute"),
        ("mod:", "is not of the form module:attribute"),
        ("my-app:worker", "'my-app' is not a Python identifier"),
        ("{app}_missing:worker", "not found"),
        ("{app}:nope", "has no attribute 'nope'"),
        ("{app}:Holder.nope", ":Holder' has no attribute 'nope'"),
        ("{app}:not_a_worker", "is of type int, not an actorq.Worker"),
    ],
)
def test_a_bad_target_is_a_one_sentence_usage_error(
    app: str, tmp_path: Path, target: str, message: str
) -> None:
    store = f"sqlite:///{tmp_path / 'q.db'}"
    result = invoke("--store", store, "worker", target.format(app=app))
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert message in errors[0]
    assert "Traceback" not in result.output


def test_a_worker_without_handlers_is_refused(app: str, tmp_path: Path) -> None:
    (tmp_path / f"{app}_empty.py").write_text("import actorq\nworker = actorq.Worker()\n")
    try:
        result = invoke("worker", f"{app}_empty:worker")
    finally:
        sys.modules.pop(f"{app}_empty", None)
    assert result.exit_code == 2
    assert "has no handlers registered" in result.output


def test_an_import_failing_inside_the_module_keeps_its_traceback(app: str, tmp_path: Path) -> None:
    # the module exists; what it imports does not: that is the user's bug to see
    (tmp_path / f"{app}_broken.py").write_text("import no_such_dependency_here\n")
    result = invoke("worker", f"{app}_broken:worker")
    assert isinstance(result.exception, ModuleNotFoundError)
    assert result.exception.name == "no_such_dependency_here"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--concurrency", "4"], "--concurrency applies only with --type"),
        (["--channel", "red", "--grace", "1"], "--channel, --grace apply only with --type"),
        (["--heartbeat-interval", "3"], "--heartbeat-interval applies only with --type"),
        (["--retries", "2", "--timeout", "9"], "--retries, --timeout apply only with --type"),
        (["--backoff-max", "9"], "--backoff-max applies only with --type"),
    ],
)
def test_command_options_are_refused_with_a_target(
    app: str, extra: list[str], message: str
) -> None:
    result = invoke("worker", *extra, f"{app}:worker")
    assert result.exit_code == 2
    assert message in result.output


def test_more_than_one_target_is_refused(app: str) -> None:
    result = invoke("worker", f"{app}:worker", "extra")
    assert result.exit_code == 2
    assert "give one TARGET (module:attribute), or --type with a COMMAND" in result.output


def test_split_target() -> None:
    assert split_target("a.b.c:x.y") == ("a.b.c", "x.y")
    assert split_target("pkg.mod:worker") == ("pkg.mod", "worker")
    assert split_target("mod:app.worker") == ("mod", "app.worker")


# ------------------------------------------------------------ real processes


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        time.sleep(0.05)


@pytest.fixture
def server() -> Iterator[str]:
    proc = subprocess.Popen(
        [PYTHON, "-m", "actorq", "--store", "memory://", "serve", "--port", "0"],
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


def test_a_worker_process_against_a_server_stops_on_sigterm(
    server: str, app: str, tmp_path: Path
) -> None:
    async def enqueue_remote(n: int) -> UUID:
        async with actorq.connect(server, heartbeat_interval=None) as queue:
            return await queue.enqueue("double", {"n": n})

    async def state_of(job_id: UUID) -> actorq.JobStatus:
        async with actorq.connect(server, heartbeat_interval=None) as queue:
            return await queue.job_status(job_id)

    log = tmp_path / "worker.log"
    with log.open("wb") as err:
        # the console script, not "python -m" (which would put the working
        # directory on sys.path itself): the module is found there all the same
        proc = subprocess.Popen(
            [ACTORQ, "--url", server, "worker", f"{app}:worker"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        job_id = trio.run(enqueue_remote, 21)
        wait_for(lambda: trio.run(state_of, job_id).state is actorq.JobState.FINISHED)
        done = trio.run(state_of, job_id)
        assert done.result == {"twice": 42, "pid": proc.pid}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert f"({app}:worker) for double" in text
    assert "Traceback" not in text


def test_the_command_form_still_needs_a_command(tmp_path: Path) -> None:
    result = invoke("--store", f"sqlite:///{tmp_path / 'q.db'}", "worker", "--type", "t")
    assert result.exit_code == 2
    assert "Missing argument" in result.output


def test_a_worker_started_before_its_server_waits_for_it(app: str, tmp_path: Path) -> None:
    # as a deployment may start them (no ordering between the two units)
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://127.0.0.1:{port}"
    log = tmp_path / "worker.log"
    with log.open("wb") as err:
        worker = subprocess.Popen(
            [ACTORQ, "--url", url, "worker", f"{app}:worker"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    serving = None
    try:
        wait_for(lambda: "trying again" in log.read_text())
        assert worker.poll() is None  # refused, and still waiting
        serving = subprocess.Popen(
            [PYTHON, "-m", "actorq", "--store", "memory://", "serve", "--port", str(port)],
            stderr=subprocess.DEVNULL,
        )

        async def enqueue_remote() -> UUID:
            async with actorq.connect(url, heartbeat_interval=None, retry_on_start=True) as q:
                return await q.enqueue("double", {"n": 4})

        async def state_of(job_id: UUID) -> actorq.JobStatus:
            async with actorq.connect(url, heartbeat_interval=None) as queue:
                return await queue.job_status(job_id)

        job_id = trio.run(enqueue_remote)
        wait_for(lambda: trio.run(state_of, job_id).state is actorq.JobState.FINISHED)
        assert trio.run(state_of, job_id).result == {"twice": 8, "pid": worker.pid}
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    finally:
        for proc in (worker, serving):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
