"""The command line against a local store: every command, and clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import pytest
from click.testing import CliRunner, Result

from actorq._cli._main import main

if TYPE_CHECKING:
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


def test_watch_once_shows_depth(store: str) -> None:
    run(store, "enqueue", "build", "--channel", "red")
    run(store, "enqueue", "build", "--channel", "red")
    out = run(store, "watch", "--once").output
    assert "jobs 2" in out
    assert any(line.split() == ["build", "red", "2"] for line in out.splitlines())


def test_watch_job_follows_a_tree(store: str) -> None:
    dep = run(store, "enqueue", "a").output.strip()
    root = run(store, "enqueue", "b", "--after", dep).output.strip()
    out = run(store, "watch", "--job", root, "--once").output
    assert f"job {root}: pending" in out
    assert "0/2" in out


def test_workers_lists_nothing_on_a_fresh_store(store: str) -> None:
    out = run(store, "workers").output.splitlines()
    assert out == ["ID  CHANNEL  ARCH  LAST SEEN"]


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
