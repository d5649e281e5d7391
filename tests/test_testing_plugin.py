"""The ``actorq.testing`` pytest plugin: its fixtures, and whole user test runs (pytester)."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import actorq
from actorq import JobState

if TYPE_CHECKING:
    # imported by pytest_plugins below; importing it first would keep pytest
    # from rewriting its asserts
    from actorq.testing import Harness

pytest_plugins = ["actorq.testing", "pytester"]

# pytester runs import the plugin again in-process: nothing to rewrite there
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


# ------------------------------------------------------------------ the fixtures


async def test_runs_under_an_autojump_mock_clock(actorq_harness: Harness) -> None:
    assert isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    start = time.monotonic()
    await actorq_harness.advance(24 * 3600)
    assert time.monotonic() - start < 5  # a day, in no wall time


async def test_a_worker_runs_jobs(actorq_harness: Harness) -> None:
    worker = actorq_harness.worker(concurrency=2)

    @worker.handler("double")
    async def double(job: actorq.Job) -> int:
        await trio.sleep(60)
        return 2 * int(job.args)

    await actorq_harness.start(worker)
    status = await actorq_harness.run("double", 21)
    assert status.result == 42
    # job timestamps follow the mock clock
    from actorq.testing import MOCK_EPOCH

    assert status.queued - MOCK_EPOCH < timedelta(seconds=5)
    assert status.finished is not None
    assert status.started is not None
    assert (status.finished - status.started).total_seconds() == pytest.approx(60, abs=1)


async def test_a_crashed_workers_job_is_reaped_and_retried(actorq_harness: Harness) -> None:
    attempts: list[str] = []

    def make(name: str) -> actorq.Worker:
        worker = actorq_harness.worker(name=name)

        @worker.handler("build")
        async def build(job: actorq.Job) -> str:
            attempts.append(name)
            await trio.sleep(30)
            return f"built by {name}"

        return worker

    first = await actorq_harness.start(make("first"))
    job_id = await actorq_harness.queue.enqueue("build")
    await actorq_harness.advance(5)
    actorq_harness.crash(first)  # mid-job, as if SIGKILLed
    await actorq_harness.advance(1)
    assert (await actorq_harness.queue.job_status(job_id)).state is JobState.RUNNING
    await actorq_harness.start(make("second"))
    status = await actorq_harness.wait(job_id)
    assert attempts == ["first", "second"]
    assert (status.result, status.retries) == ("built by second", 1)
    # the crashed worker never deregistered; the one that stopped cleanly will
    assert len(await actorq_harness.queue.workers()) == 2


async def test_wait_times_out(actorq_harness: Harness) -> None:
    job_id = await actorq_harness.queue.enqueue("nobody-runs-this")
    with pytest.raises(trio.TooSlowError):
        await actorq_harness.wait(job_id, timeout=60)


# ------------------------------------------------------------------ user test runs


def docs_example() -> str:
    text = DOCS.read_text()
    match = re.search(r"<!-- testing-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/operations.md lost its testing example"
    return match.group(1)


def test_the_documented_example_passes(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["actorq.testing"]\n')
    pytester.makepyfile(test_example=docs_example())
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def docs_sqlite_conftest() -> str:
    text = DOCS.read_text()
    match = re.search(r"<!-- testing-sqlite-conftest -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/operations.md lost its SQLite conftest"
    return match.group(1)


def test_the_documented_example_passes_on_sqlite(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(docs_sqlite_conftest())
    pytester.makepyfile(
        test_example=docs_example(),
        test_on_sqlite="""
async def test_the_queue_is_on_sqlite(actorq_queue, tmp_path):
    await actorq_queue.enqueue("t")
    # the store holds the database's lock, so look at the file itself
    assert (tmp_path / "queue.db").read_bytes()[:16] == b"SQLite format 3\\x00"
    assert (tmp_path / "queue.db-wal").stat().st_size > 0
""",
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_maintenance_can_be_overridden(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
import pytest
import actorq

pytest_plugins = ["actorq.testing"]

@pytest.fixture
def actorq_maintenance():
    return actorq.Maintenance(watch_interval=1, job_timeout=10, max_retries=0)
"""
    )
    pytester.makepyfile(
        test_short_timeouts="""
import trio

async def test_lost_job_fails_fast(actorq_harness):
    queue = actorq_harness.queue
    job_id = await queue.enqueue("t")
    await queue.dequeue(["t"], timeout=0)  # and never heartbeat
    await actorq_harness.advance(11)
    status = await queue.job_status(job_id)
    assert status.result["error"]["type"] == "MissingHeartbeat"
    assert trio.current_time() < 12
"""
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_test_may_bring_its_own_clock(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["actorq.testing"]\n')
    pytester.makepyfile(
        test_clock="""
import trio

async def test_own_clock(actorq_queue, mock_clock):
    assert trio.lowlevel.current_clock() is mock_clock
    mock_clock.jump(500)
    assert trio.current_time() >= 500
"""
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
