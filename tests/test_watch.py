"""``actorq watch``, ``jobs`` and ``workers``: the views rendered from real queues.

The rich views are rendered to a recording console of a fixed width and read
back as text; the queues are in-process ones under MockClock (worker silence
is an age on trio's clock), and one real ``actorq serve`` with a real worker.
"""

from __future__ import annotations

import io
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
from click.testing import CliRunner
from rich.console import Console
from test_cli import start_serve, stop

import actorq
from actorq._cli._listings import count_more, split_workers
from actorq._cli._main import main
from actorq._cli._watch import read_overview, read_tree, render_overview, render_tree

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path
    from uuid import UUID

    from rich.console import RenderableType

BASE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def wall() -> datetime:
    """Job timestamps on trio's clock, so that MockClock moves them too."""
    return BASE + timedelta(seconds=trio.current_time())


def text_of(renderable: RenderableType, width: int = 140) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def row(text: str, *cells: str) -> bool:
    """Whether some table row of ``text`` holds exactly ``cells``, in order."""
    for line in text.splitlines():
        found = [c.strip() for c in re.split("[│┃]", line.strip("│┃ "))]
        if found == list(cells):
            return True
    return False


#: whether this queue's job listings name the worker of a running job
LISTINGS_NAME_WORKERS = "worker_id" in attrs.fields_dict(actorq.JobSummary)


def shown(worker_id: UUID) -> str:
    """The WORKER cell of a running job dequeued for ``worker_id``."""
    return str(worker_id) if LISTINGS_NAME_WORKERS else "-"


def cells(line: str) -> list[str]:
    """The words of a line of a rich tree, without the tree's guides."""
    return line.lstrip(" │├└─").split()


def queue_on_mock_clock() -> AbstractAsyncContextManager[actorq.LocalQueue]:
    return actorq.open_queue(clock=wall, maintenance=None)


async def test_the_overview_shows_depth_running_jobs_and_worker_liveness(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with queue_on_mock_clock() as queue:
        for _ in range(3):
            await queue.enqueue("fetch", channel="red")
        await queue.enqueue("fetch", channel="blue")
        blocked_on = await queue.enqueue("build", channel="blue")
        await queue.enqueue("publish", dependencies=[blocked_on], channel="blue")
        gone = await queue.insert_worker("red", "x86_64")
        alive = await queue.insert_worker("blue", "aarch64")
        first = await queue.dequeue(["fetch"], ["red"], timeout=0, worker_id=gone)
        await trio.sleep(200)  # the first worker never reports again
        await queue.update_worker_status(alive)
        second = await queue.dequeue(["build"], ["blue"], timeout=0, worker_id=alive)
        await trio.sleep(65)

        view = await read_overview(queue, now=wall())
        text = text_of(render_overview(view))

    counts = {"pending": "4 (blocked 1)", "running": "2"}
    totals = "  ".join(f"{s.value} {counts.get(s.value, '0')}" for s in actorq.JobState)
    assert f"jobs 6  {totals}" in text  # every state, in the enum's order
    assert "workers 1 live, 1 silent" in text
    assert row(text, "TYPE", "CHANNEL", "READY", "RUNNING")
    assert row(text, "fetch", "red", "2", "1")
    assert row(text, "fetch", "blue", "1", "0")
    assert row(text, "build", "blue", "0", "1")
    # the running jobs, longest running first, with their time so far
    assert text.index(str(first.id)) < text.index(str(second.id))
    assert row(text, str(first.id), "fetch", "red", shown(gone), "4m25s", "0")
    assert row(text, str(second.id), "build", "blue", shown(alive), "1m05s", "0")
    # the worker that stopped reporting is silent, the other live
    runs = "1" if LISTINGS_NAME_WORKERS else "0"
    assert any(
        line.split("│")[1:5] == [f" {alive} ", " blue    ", " aarch64 ", f"       {runs} "]
        and "live" in line
        for line in text.splitlines()
    ), text
    assert any(str(gone) in line and "silent" in line for line in text.splitlines())


async def test_the_overview_names_how_many_running_jobs_it_leaves_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with queue_on_mock_clock() as queue:
        for _ in range(5):
            await queue.enqueue("t")
        for _ in range(5):
            await queue.dequeue(["t"], timeout=0)
        text = text_of(render_overview(await read_overview(queue, rows=2), rows=2))
    assert "running jobs (5)" in text
    assert "... and 3 more running" in text
    assert row(text, "t", "''", "0", "5")  # depth counts all of them


async def test_every_state_the_queue_counts_is_shown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with queue_on_mock_clock() as queue:
        text = text_of(render_overview(await read_overview(queue)))
    for state in actorq.JobState:
        assert f"{state.value} 0" in text


async def test_the_job_view_draws_the_tree_with_a_progress_bar(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with queue_on_mock_clock() as queue:
        leaf = await queue.enqueue("fetch")
        middle = await queue.enqueue("build", dependencies=[leaf])
        other = await queue.enqueue("lint", dependencies=[leaf])
        root = await queue.enqueue("publish", dependencies=[middle, other])
        job = await queue.dequeue(["fetch"], timeout=0)
        await trio.sleep(3)
        await queue.finish_job(job.id, {"ok": True})
        await queue.dequeue(["build"], timeout=0)
        await trio.sleep(90)
        tree = await read_tree(queue, root)
        text = text_of(render_tree(root, tree, wall()), width=120)

    assert set(tree) == {leaf, middle, other, root}
    lines = text.splitlines()
    assert lines[0] == f"job {root}: pending"
    assert "1/4 settled (25%)" in lines[1]
    assert lines[2].split() == ["pending", "publish", str(root)]
    # dependencies under the job that needs them, a shared one named again
    assert cells(lines[3]) == ["running", "build", str(middle), "1m30s"]
    assert cells(lines[4]) == ["finished", "fetch", str(leaf), "3.0s"]
    assert cells(lines[5]) == ["pending", "lint", str(other)]
    assert cells(lines[6]) == ["finished", "fetch", str(leaf), "3.0s", "(shown", "above)"]


# ---------------------------------------------------------------- jobs and workers


async def test_count_more_counts_from_stats_or_by_listing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with queue_on_mock_clock() as queue:
        for n in range(7):
            await queue.enqueue("a" if n % 2 else "b", channel="red")
        await queue.dequeue(["b"], ["red"], timeout=0)

        shown, more = await count_more(queue, None, None, None, 3)
        assert (len(shown), more) == (3, 4)
        shown, more = await count_more(queue, "pending", None, None, 2)
        assert (len(shown), more) == (2, 4)
        shown, more = await count_more(queue, None, "b", "red", 1)  # counted by listing
        assert (len(shown), more) == (1, 3)
        shown, more = await count_more(queue, None, None, None, None)
        assert (len(shown), more) == (7, 0)
        shown, more = await count_more(queue, None, None, None, 7)
        assert (len(shown), more) == (7, 0)


async def test_split_workers_by_their_last_status(autojump_clock: trio.testing.MockClock) -> None:
    async with queue_on_mock_clock() as queue:
        old = await queue.insert_worker("red", "x86_64")
        await trio.sleep(100)
        new = await queue.insert_worker("blue", "x86_64")
        live, silent = await split_workers(queue, 60)
        assert ([w.id for w in live], [w.id for w in silent]) == ([new], [old])
        await queue.update_worker_status(old)
        live, silent = await split_workers(queue, 60)
        assert ({w.id for w in live}, silent) == ({old, new}, [])


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'watch.db'}"


def cli(store: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["--store", store, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_jobs_says_how_many_more_exist_and_limit_0_lists_all(store: str) -> None:
    ids = [cli(store, "enqueue", "t", "--channel", "red").strip() for _ in range(5)]
    out = cli(store, "jobs", "--limit", "2").splitlines()
    assert [line.split()[0] for line in out[1:3]] == ids[:2]
    assert out[3:] == ["... 3 more (--limit 0 lists all)"]
    out = cli(store, "jobs", "--limit", "0").splitlines()
    assert [line.split()[0] for line in out[1:]] == ids
    out = cli(store, "jobs", "--limit", "4", "--channel", "red").splitlines()
    assert out[-1] == "... 1 more (--limit 0 lists all)"
    assert cli(store, "jobs", "--limit", "5").splitlines()[-1].split()[0] == ids[-1]


def test_workers_separates_live_and_silent_sections(store: str) -> None:
    out = cli(store, "workers").splitlines()
    assert out == [
        "live workers: 0",
        "ID  CHANNEL  ARCH  LAST SEEN",
        "",
        "silent workers (no status for 150 s): 0",
        "ID  CHANNEL  ARCH  LAST SEEN",
    ]


def test_watch_once_on_a_store(store: str) -> None:
    cli(store, "enqueue", "build", "--channel", "red")
    dep = cli(store, "enqueue", "build", "--channel", "red").strip()
    root = cli(store, "enqueue", "ship", "--after", dep).strip()
    out = cli(store, "watch", "--once")
    assert "jobs 3  pending 3 (blocked 1)" in out
    assert row(out, "build", "red", "2", "0")
    result = CliRunner().invoke(main, ["--store", store, "watch", "--job", root, "--once"])
    assert result.exit_code == 0
    assert result.output.splitlines()[0] == f"job {root}: pending"
    assert "0/2 settled (0%)" in result.output


# ---------------------------------------------------------------- a real server and worker


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[str]:
    proc, url, _ = await start_serve(f"sqlite:///{tmp_path / 'served.db'}")
    try:
        yield url
    finally:
        await stop(proc)


async def actorq_cli(url: str, *args: str) -> str:
    done = await trio.run_process(
        [sys.executable, "-m", "actorq", "--url", url, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_watch_and_workers_against_a_real_server(served: str) -> None:
    async with actorq.connect(served) as queue:
        # this client is the worker: registered, and holding a job
        worker_id = await queue.insert_worker("red", "riscv64")
        await queue.enqueue("hold", channel="red")
        await queue.enqueue("hold", channel="red")
        await queue.enqueue("other", channel="blue")
        held = await queue.dequeue(["hold"], ["red"], timeout=0, worker_id=worker_id)

        out = await actorq_cli(served, "watch", "--once")
        assert "running 1" in out
        assert row(out, "hold", "red", "1", "1")
        assert row(out, "other", "blue", "1", "0")
        assert any(str(held.id) in line and "hold" in line for line in out.splitlines())
        assert any(str(worker_id) in line and "live" in line for line in out.splitlines())

        workers = (await actorq_cli(served, "workers")).splitlines()
        assert workers[0] == "live workers: 1"
        assert workers[2].split() == [str(worker_id), "red", "riscv64", *workers[2].split()[3:]]
        assert workers[-2:] == [
            "silent workers (no status for 150 s): 0",
            "ID  CHANNEL  ARCH  LAST SEEN",
        ]


def test_watch_job_exit_status_says_how_the_job_settled(store: str) -> None:
    async def settle() -> tuple[UUID, UUID]:
        async with actorq.open_queue(store, maintenance=None) as queue:
            done = await queue.enqueue("a")
            job = await queue.dequeue(["a"], timeout=0)
            await queue.finish_job(job.id, None)
            canceled = await queue.enqueue("b")
            await queue.cancel_job(canceled)
            return done, canceled

    done, canceled = trio.run(settle)
    result = CliRunner().invoke(main, ["--store", store, "watch", "--job", str(done)])
    assert (result.exit_code, "1/1 settled" in result.output) == (0, True)
    result = CliRunner().invoke(main, ["--store", store, "watch", "--job", str(canceled)])
    assert result.exit_code == 2
    assert result.output.splitlines()[0] == f"job {canceled}: canceled"
