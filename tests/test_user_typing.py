"""actorq's types reach a user's project: mypy, run from outside the repository, finds them.

The user's scripts live in a temporary directory, so mypy can only find actorq
through the installed package (for an editable install, its path entry), as it
would in a user's own project. If the types were not found, mypy would report
``import-not-found`` for the correct script and fail this test; if ``actorq``
were typed as ``Any``, the wrong script would pass and fail it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CORRECT = """
    from uuid import UUID

    import trio

    import actorq


    async def produce(queue: actorq.JobQueue) -> UUID:
        first = await queue.enqueue("fetch", {"url": "https://example.org"}, channel="red")
        return await queue.enqueue("build", {"target": "x86_64"}, [first], channel="red")


    async def consume(queue: actorq.JobQueue) -> actorq.JobState:
        job: actorq.DequeuedJob = await queue.dequeue(["fetch", "build"], ["red"], timeout=0)
        await queue.finish_job(job.id, {"ok": True})
        status: actorq.JobStatus = await queue.job_status(job.id)
        return status.state


    async def main() -> None:
        async with actorq.open_queue(maintenance=None) as queue:
            local: actorq.LocalQueue = queue
            await produce(local)
            try:
                await consume(local)
            except actorq.DequeueTimeoutError:
                pass
        worker = actorq.Worker(queue, channels=["red"])
        assert isinstance(worker, actorq.Worker)


    trio.run(main)
"""

WRONG = """
    import actorq


    async def produce(queue: actorq.JobQueue) -> None:
        await queue.enqueue(42)
"""


def mypy(tmp_path: Path, name: str, source: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(source))
    # mypy runs none of actorq's code: under "coverage run", don't trace it
    env = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            script.name,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    # Outside the repository: mypy must not pick up the checkout or its config.
    assert not (tmp_path / "actorq").exists()
    assert Path(__file__).resolve().parents[1] not in tmp_path.resolve().parents
    return tmp_path


def test_correct_use_type_checks(user_project: Path) -> None:
    done = mypy(user_project, "correct", CORRECT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout


def test_a_wrong_call_is_reported(user_project: Path) -> None:
    done = mypy(user_project, "wrong", WRONG)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "import-not-found" not in done.stdout
    assert '"enqueue" of "JobQueue" has incompatible type "int"' in done.stdout, done.stdout
