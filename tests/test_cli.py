"""The command line against a local store: every command, and clean errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import pytest
import trio
from click.testing import CliRunner, Result

import actorq
from actorq._cli._main import main

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def run(store: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--store", store, *args], catch_exceptions=False)


def test_enqueue_status_jobs_cancel_delete(store: str) -> None:
    first = run(store, "enqueue", "build", '{"n": 1}', "--channel", "red")
    assert first.exit_code == 0, first.output
    first_id = UUID(first.output.strip())
    second = run(store, "enqueue", "publish", "--channel", "red", "--after", str(first_id))
    second_id = UUID(second.output.strip())

    status = json.loads(run(store, "status", str(second_id)).output)
    assert status["state"] == "pending"
    assert status["dependencies"] == [str(first_id)]
    assert status["channel"] == "red"

    listing = run(store, "jobs").output.splitlines()
    assert listing[0].split()[:4] == ["ID", "TYPE", "CHANNEL", "STATE"]
    assert [line.split()[0] for line in listing[1:]] == [str(first_id), str(second_id)]
    assert run(store, "jobs", "--type", "publish").output.count("publish") == 1

    assert run(store, "cancel", str(first_id)).exit_code == 0
    # canceling cascades to the dependent
    assert json.loads(run(store, "status", str(second_id)).output)["state"] == "canceled"
    assert len(run(store, "jobs", "--state", "canceled").output.splitlines()) == 3

    assert run(store, "delete", str(second_id)).exit_code == 0
    assert run(store, "jobs").output.strip().splitlines()[1:] == []


def test_retry_puts_a_canceled_tree_back(store: str) -> None:
    first = UUID(run(store, "enqueue", "build").output.strip())
    second = UUID(run(store, "enqueue", "publish", "--after", str(first)).output.strip())
    assert run(store, "cancel", str(first)).exit_code == 0
    result = run(store, "retry", str(first))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"retried {first}", f"retried {second}"]
    assert json.loads(run(store, "status", str(first)).output)["state"] == "pending"
    assert json.loads(run(store, "status", str(second)).output)["state"] == "pending"
    again = CliRunner().invoke(main, ["--store", store, "retry", str(first)])
    assert again.exit_code == 1
    assert "is pending" in again.output
    assert "Traceback" not in again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "not-a-uuid"], "is not a valid job id"),
        (["status", "00000000-0000-4000-8000-000000000000"], "does not exist"),
        (["enqueue", "t", "{not json"], "not valid JSON"),
        (["enqueue", "", "{}"], "job_type must not be empty"),
        (["enqueue", "t", "--after", "00000000-0000-4000-8000-000000000000"], "does not exist"),
        (["cancel", "00000000-0000-4000-8000-000000000000"], "does not exist"),
    ],
)
def test_errors_are_one_sentence(store: str, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["--store", store, *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unreachable_server_is_a_clean_error() -> None:
    result = CliRunner().invoke(main, ["--url", "ws://127.0.0.1:9", "jobs"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.startswith("actorq: ")


def test_unsupported_store_url() -> None:
    result = CliRunner().invoke(main, ["--store", "redis://x", "jobs"])
    assert result.exit_code == 1
    assert "unsupported store URL" in result.output


def test_failed_jobs_are_listed_by_state(store: str) -> None:
    failed = UUID(run(store, "enqueue", "build").output.strip())
    kept = UUID(run(store, "enqueue", "build").output.strip())

    async def fail_one() -> None:
        async with actorq.open_queue(store) as queue:
            await queue.fail_job(failed, {"error": "no disk"})

    trio.run(fail_one)
    listing = run(store, "jobs", "--state", "failed").output.splitlines()
    assert [line.split()[0] for line in listing[1:]] == [str(failed)]
    assert listing[1].split()[3] == "failed"
    assert json.loads(run(store, "status", str(failed)).output)["state"] == "failed"
    pending = run(store, "jobs", "--state", "pending").output.splitlines()
    assert [line.split()[0] for line in pending[1:]] == [str(kept)]


def test_the_state_choices_are_the_job_states() -> None:
    from actorq import JobState
    from actorq._cli._main import JOB_STATES

    assert tuple(s.value for s in JobState) == JOB_STATES


# A child process loads the command line under an empty "actorq" package (the
# real package directory, without running actorq/__init__.py), so what the
# command imports is what the command line itself asked for.
_LOADED = """
import importlib.util, json, sys, types
spec = importlib.util.find_spec("actorq")
package = types.ModuleType("actorq")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["actorq"] = package
from actorq._cli._main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(*args: str) -> set[str]:
    # a plain interpreter: under "coverage run" a child starts coverage, which loads sqlite3
    env = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE_")}
    done = subprocess.run(
        [sys.executable, "-c", _LOADED, *args], capture_output=True, text=True, check=True, env=env
    )
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return set(modules)


def test_help_imports_neither_trio_nor_the_queue() -> None:
    modules = loaded_by("--help")
    assert "trio" not in modules
    assert not {m for m in modules if m.startswith(("actorq._actor", "actorq._remote"))}


def test_a_store_command_loads_no_websocket_stack_and_no_other_driver(store: str) -> None:
    job_id = run(store, "enqueue", "t").output.strip()
    modules = loaded_by("--store", store, "status", job_id)
    assert "actorq._stores._sqlite" in modules  # it did open the store
    assert not {m for m in modules if m.startswith(("trio_websocket", "wsproto", "psycopg"))}
    assert "actorq._remote._client" not in modules


def test_a_url_command_loads_no_database_driver() -> None:
    modules = loaded_by("--url", "ws://127.0.0.1:1", "status", str(uuid4()))
    assert "actorq._remote._client" in modules  # it did try to connect
    assert not {m for m in modules if m.startswith(("sqlite3", "psycopg", "actorq._stores."))}


# ------------------------------------------------------------ one-sentence errors


def last_line(result: Result) -> str:
    lines = result.output.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (
            ["serve", "--port", "99999"],
            "Error: Invalid value for '--port': 99999 is not in the range 0<=x<=65535.",
        ),
        (
            ["serve", "--metrics-port", "-1"],
            "Error: Invalid value for '--metrics-port': -1 is not in the range 0<=x<=65535.",
        ),
        (
            ["serve", "--heartbeat-timeout", "-1"],
            "Error: Invalid value for '--heartbeat-timeout': -1 is not a number of seconds > 0",
        ),
        (
            ["serve", "--retention", "0"],
            "Error: Invalid value for '--retention': 0 is not a number of seconds > 0",
        ),
        (
            ["serve", "--watch-interval", "nan"],
            "Error: Invalid value for '--watch-interval': nan is not a number of seconds > 0",
        ),
        (
            ["serve", "--max-retries", "-1"],
            "Error: Invalid value for '--max-retries': -1 is not in the range x>=0.",
        ),
        (
            ["worker", "--type", "t", "--grace", "-1", "--", "true"],
            "Error: Invalid value for '--grace': -1 is not a number of seconds >= 0",
        ),
        (
            ["worker", "--type", "t", "--heartbeat-interval", "soon", "--", "true"],
            "Error: Invalid value for '--heartbeat-interval': soon is not a number of seconds",
        ),
    ],
)
def test_bad_option_values_are_usage_errors(store: str, args: list[str], sentence: str) -> None:
    result = CliRunner().invoke(main, ["--store", store, *args])
    assert result.exit_code == 2
    assert last_line(result) == sentence
    assert "Traceback" not in result.output


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, str]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    files = {
        "cert": tmp_path / "cert.pem",
        "key": tmp_path / "key.pem",
        "other-key": tmp_path / "other-key.pem",
        "junk": tmp_path / "junk.pem",
    }
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    ca.issue_cert("elsewhere").private_key_pem.write_to_path(files["other-key"])
    files["junk"].write_text("not PEM at all\n")
    return {name: str(path) for name, path in files.items()}


@pytest.mark.parametrize(
    ("cert", "key", "sentence"),
    [
        ("junk", "key", "the TLS certificate {junk} is not a PEM certificate"),
        ("key", "key", "the TLS certificate {key} is not a PEM certificate"),
        ("cert", "junk", "the TLS key {junk} is not a PEM private key"),
        ("cert", "other-key", "the TLS key {other-key} is not the key of the certificate {cert}"),
    ],
)
def test_bad_tls_files_are_named(
    store: str, pems: dict[str, str], cert: str, key: str, sentence: str
) -> None:
    result = run_cli(store, "serve", "--tls-cert", pems[cert], "--tls-key", pems[key])
    assert result.exit_code == 1
    expected = "actorq: " + sentence.replace("{other-key}", pems["other-key"]).format(**pems)
    assert result.output.strip() == expected


def run_cli(store: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--store", store, *args])


def test_a_port_in_use_is_named(store: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(store, "serve", "--port", str(port))
    assert result.exit_code == 1
    assert last_line(result) == f"actorq: cannot listen on 127.0.0.1:{port}: address already in use"
    assert "Traceback" not in result.output


def test_a_metrics_port_in_use_is_named(store: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(store, "serve", "--port", "0", "--metrics-port", str(port))
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"actorq: cannot serve metrics on 127.0.0.1:{port}: address already in use"
    )


def test_a_server_that_does_not_answer_is_named() -> None:
    import socket

    # the kernel completes the TCP handshake of a listening socket; nothing answers after
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        url = f"ws://127.0.0.1:{hung.getsockname()[1]}"
        result = CliRunner().invoke(main, ["--connect-timeout", "0.2", "--url", url, "jobs"])
    assert result.exit_code == 1
    assert result.output.strip() == f"actorq: the server at {url} did not answer within 0.2 s"


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """``path`` (a file or a directory) made read-only for this process for the block."""
    mode = path.stat().st_mode
    path.chmod(0o555 if path.is_dir() else 0o444)
    immutable = False
    try:
        if os.geteuid() == 0:
            # permissions do not stop root; the immutable attribute does
            done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
            if done.returncode != 0:
                pytest.skip(f"running as root without chattr +i: {done.stderr.decode().strip()}")
            immutable = True
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


def test_a_read_only_database_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    assert run(f"sqlite:///{path}", "enqueue", "t").exit_code == 0
    with unwritable(path):
        result = run_cli(f"sqlite:///{path}", "jobs")
    assert result.exit_code == 1
    assert result.output.strip() == f"actorq: {path} is read-only; the queue needs to write to it"


def test_a_database_in_a_read_only_directory_is_named(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "q.db"
    assert run(f"sqlite:///{path}", "enqueue", "t").exit_code == 0
    with unwritable(directory):
        result = run_cli(f"sqlite:///{path}", "jobs")
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"actorq: {path} is in a read-only directory; the queue needs to create q.db-wal next to it"
    )


def test_a_corrupt_database_is_one_sentence_without_its_data(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "bad.db"
    for n in range(10):
        run(f"sqlite:///{path}", "enqueue", "t", json.dumps({"secret": f"hunter{n}" * 50}))
    with sqlite3.connect(path) as conn:
        (page,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()
    conn.close()
    data = bytearray(path.read_bytes())
    start = 4096 * (page - 1) + 8  # past the page header's first bytes: its cell pointers
    data[start : start + 32] = bytes(range(32))
    path.write_bytes(data)
    result = run_cli(f"sqlite:///{path}", "jobs")
    assert result.exit_code == 1
    assert result.output.strip() == f"actorq: {path} is corrupt; restore it from a backup"


# ------------------------------------------------------------ options anywhere, help


def test_global_options_may_follow_the_command(store: str, tmp_path: Path) -> None:
    job_id = CliRunner().invoke(main, ["enqueue", "t", "--store", store]).output.strip()
    UUID(job_id)
    # the option after the command wins over the environment and the group's default
    other = f"sqlite:///{tmp_path / 'other.db'}"
    listing = CliRunner(env={"ACTORQ_STORE": other}).invoke(main, ["jobs", "--store", store])
    assert [line.split()[0] for line in listing.output.splitlines()[1:]] == [job_id]
    remote = CliRunner().invoke(main, ["status", job_id, "--url", "ws://127.0.0.1:9"])
    assert remote.exit_code == 1
    assert "cannot connect to the queue server: ws://127.0.0.1:9" in remote.output


def test_help_lists_the_environment_variables() -> None:
    def words(*args: str) -> str:  # help text, unwrapped
        return " ".join(CliRunner().invoke(main, [*args, "--help"]).output.split())

    top = words()
    for name in ("ACTORQ_URL", "ACTORQ_STORE", "ACTORQ_TOKEN", "ACTORQ_CONNECT_TIMEOUT"):
        assert f"[env var: {name}" in top
    assert "[env var: ACTORQ_AUTH_TOKEN]" in words("serve")


# ------------------------------------------------------------ serve and worker, real processes


async def start_serve(store: str, *options: str) -> tuple[trio.Process, str, str]:
    """``actorq serve`` on a free port: the process, its URL and its banner line."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actorq", "serve", "--store", store, "--port", "0", *options],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    banner = b""
    with trio.fail_after(20):
        while not banner.endswith(b"\n"):
            chunk = await proc.stderr.receive_some(1)
            assert chunk, "actorq serve exited before its banner"
            banner += chunk
    match = re.search(r" on (ws://\S+)$", banner.decode().strip())
    assert match, banner
    return proc, match.group(1), banner.decode().strip()


async def stop(proc: trio.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    with trio.CancelScope(shield=True):
        await proc.wait()
        if proc.stderr is not None:
            await trio.aclose_forcefully(proc.stderr)


async def rest_of(stream: trio.abc.ReceiveStream) -> str:
    out = b""
    async for chunk in stream:
        out += chunk
    return out.decode()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_closes_clients_with_1001_then_the_queue(
    store: str, signum: int
) -> None:
    from trio_websocket import ConnectionClosed, wrap_client_stream

    async with actorq.open_queue(store, maintenance=None) as queue:
        for _ in range(2):
            await queue.enqueue("t")
    proc, url, banner = await start_serve(store)
    assert proc.stderr is not None
    try:
        # the banner: the store, the jobs it holds, the address
        assert banner == f"actorq serving {store} (2 jobs loaded) on {url}"
        host, port = url.removeprefix("ws://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        try:
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(nursery, stream, host, "/")
                hello = {"kind": "hello", "id": 0, "versions": [1], "client": "test"}
                await ws.send_message(json.dumps({**hello, "max_message_size": 1 << 20}))
                assert json.loads(await ws.get_message())["kind"] == "welcome"
                proc.send_signal(signum)
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)
        assert closed.value.reason is not None
        assert closed.value.reason.code == 1001
        with trio.fail_after(20):
            assert await proc.wait() == 0
        rest = await rest_of(proc.stderr)
        assert rest == f"actorq shutting down on {signal.Signals(signum).name}\n"
    finally:
        await stop(proc)
    # the queue was closed: the file opens again, with its jobs
    async with actorq.open_queue(store, maintenance=None) as queue:
        assert (await queue.stats()).jobs == 2


def listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:  # a loopback connect does not block
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_quiet_serve_logs_nothing(store: str) -> None:
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actorq", "serve", "--store", store, "--port", str(port), "-q"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        with trio.fail_after(20):
            while True:
                if listening(port):
                    break
                await trio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        # neither the banner nor "actorq shutting down on SIGTERM"
        assert await rest_of(proc.stderr) == ""
    finally:
        await stop(proc)
