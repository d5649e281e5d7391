"""``import actorq`` loads no websocket, database, command-line or metrics library.

Each check runs a fresh interpreter, since this test process has long since
imported everything. The interpreter runs in a temporary directory so that it
imports the installed package, as a user's program does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

HEAVY = (
    "trio_websocket",
    "wsproto",
    "sqlite3",
    "_sqlite3",
    "psycopg",
    "click",
    "prometheus_client",
)


def loaded_after(statement: str, cwd: Path) -> set[str]:
    """The packages of HEAVY that a fresh interpreter has loaded after ``statement``."""
    script = (
        f"{statement}\n"
        "import json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted({m.partition('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    # Under "coverage run" a child process starts coverage first, which loads
    # sqlite3 for its data file: the probe must be a plain interpreter.
    env = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE_")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    loaded: list[str] = json.loads(done.stdout)
    return set(loaded)


def test_import_actorq_loads_no_heavy_library(tmp_path: Path) -> None:
    assert loaded_after("import actorq", tmp_path) == set()


def test_an_in_process_program_loads_no_heavy_library(tmp_path: Path) -> None:
    statement = "import actorq; actorq.open_queue, actorq.Worker, actorq.JobQueue, actorq.JobState"
    assert loaded_after(statement, tmp_path) == set()


@pytest.mark.parametrize(
    ("name", "library"),
    [
        ("connect", "wsproto"),
        ("serve", "wsproto"),
        ("SqliteStore", "sqlite3"),
        ("PostgresStore", "psycopg"),
    ],
)
def test_a_name_loads_its_library_when_used(tmp_path: Path, name: str, library: str) -> None:
    # the check above would pass trivially if the probe could not see a loaded library
    assert library in loaded_after(f"import actorq; actorq.{name}", tmp_path)


def test_the_blocking_client_loads_no_trio(tmp_path: Path) -> None:
    # a web application that only enqueues never pays for trio's import
    script = (
        "import sys, actorq\n"
        "actorq.connect_blocking, actorq.BlockingQueue\n"
        "print('trio' in sys.modules)\n"
        "actorq.connect\n"
        "print('trio' in sys.modules)\n"  # the probe sees it once it is there
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE_")}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["False", "True"]
