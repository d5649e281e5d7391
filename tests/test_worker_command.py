"""The job command of ``actorq worker -- COMMAND``: process groups, signals, stderr.

These run real processes and send real signals, so they run on the real
clock; every wait is a bounded poll or a wait for a process, never a fixed
sleep that an assertion depends on. The commands are ``sh`` scripts that
record their process group (as ``/proc`` says, not ``$$``: that is the
group's id only if the command leads a group of its own) and leave a
``sleep`` behind in it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any, cast
from uuid import uuid4

import pytest
import trio

import actorq
from actorq import JobState
from actorq._worker._command import STDERR_TAIL, CommandFailed, command_handler
from actorq._worker._job import Job

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")


async def left_running(group: int) -> list[int]:
    """:func:`members` once a signal just sent has had time to land: SIGKILL is
    delivered asynchronously, so a process may show as running for a moment
    after ``killpg`` returns. A bounded poll of real time (the processes are real)."""
    for _ in range(500):  # at most 5 s
        if not members(group):
            break
        await trio.sleep(0.01)
    return members(group)


def members(group: int) -> list[int]:
    """The processes of ``group`` that still run (zombies, which have ended, excluded).

    ``os.killpg(group, 0)`` answers for the group as a whole, and a zombie
    counts there until something reaps it, which PID 1 of a container may
    never do; ``/proc`` tells the two apart.
    """
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rfind(b")") + 2 :].split()[:3]
        if int(pgrp) == group and state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


# the process group of the shell running the command (field 5 of its /proc stat;
# the command name, field 2, is "sh": no spaces)
GROUP = "$(cut -d ' ' -f 5 /proc/$$/stat)"


def make_job(args: Any = None) -> Job:
    # the command handler uses the job's description only, never its queue
    return Job(
        id=uuid4(),
        token=uuid4(),
        type="t",
        args=args,
        channel="",
        dependencies=[],
        worker_id=None,
        queue=cast("actorq.JobQueue", None),
    )


def read_line(path: Path) -> str | None:
    """The text of ``path`` once a whole line is in it, else None."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return text if text.endswith("\n") else None


async def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    with trio.fail_after(timeout):
        while True:
            text = read_line(path)
            if text is not None:
                return text
            await trio.sleep(0.01)


# ------------------------------------------------------------ the handler alone


async def test_args_in_and_result_out() -> None:
    handler = command_handler(
        ["sh", "-c", 'read -r args; echo "{\\"got\\": $args, \\"type\\": \\"$ACTORQ_JOB_TYPE\\"}"']
    )
    assert await handler(make_job({"n": 1})) == {"got": {"n": 1}, "type": "t"}


async def test_a_failing_command_keeps_the_tail_of_its_stderr() -> None:
    script = "import sys; sys.stderr.write('x' * 200000 + 'the end'); sys.exit(3)"
    handler = command_handler([sys.executable, "-c", script])
    with pytest.raises(CommandFailed) as caught:
        await handler(make_job())
    assert caught.value.returncode == 3
    assert len(caught.value.stderr) == STDERR_TAIL
    assert caught.value.stderr.endswith("x" * 1000 + "the end")
    assert str(caught.value) == "command exited with status 3; stderr:\n" + caught.value.stderr


async def test_a_command_killed_by_a_signal_says_which() -> None:
    handler = command_handler(["sh", "-c", "echo oops >&2; kill -SEGV $$"])
    with pytest.raises(CommandFailed, match=r"^command was killed by SIGSEGV; stderr:\noops$"):
        await handler(make_job())


async def test_what_a_finished_command_leaves_behind_is_terminated(tmp_path: Path) -> None:
    # the sleep holds stdout open: the handler still returns once the command exits
    pid_file = tmp_path / "group"
    handler = command_handler(["sh", "-c", f"sleep 1000 & echo {GROUP} > {pid_file}; echo 42"])
    assert await handler(make_job()) == 42
    assert await left_running(int(pid_file.read_text())) == []


async def run_until_cancelled(
    command: list[str], pid_file: Path, kill_after: float = 5.0
) -> tuple[int, bool]:
    """Start ``command``, cancel its handler once it wrote its group to ``pid_file``."""
    handler = command_handler(command, kill_after=kill_after)
    group = 0
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_when_started() -> None:
                nonlocal group
                group = int(await wait_for_file(pid_file))
                scope.cancel()

            nursery.start_soon(cancel_when_started)
            await handler(make_job())
    return group, scope.cancelled_caught


async def test_cancelling_the_handler_kills_the_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "group"
    group, cancelled = await run_until_cancelled(
        ["sh", "-c", f"sleep 1000 & echo {GROUP} > {pid_file}; wait"], pid_file
    )
    assert cancelled  # a Cancelled came out, not a CommandFailed for status -15
    assert await left_running(group) == []


async def test_a_group_that_ignores_sigterm_gets_sigkill(tmp_path: Path) -> None:
    pid_file = tmp_path / "group"
    script = f"trap '' TERM; sleep 1000 & echo {GROUP} > {pid_file}; wait; wait"
    group, cancelled = await run_until_cancelled(["sh", "-c", script], pid_file, kill_after=0.2)
    assert cancelled
    assert await left_running(group) == []


def test_kill_after_is_checked() -> None:
    with pytest.raises(ValueError, match="kill_after"):
        command_handler(["true"], kill_after=-1)
    with pytest.raises(TypeError, match="kill_after"):
        command_handler(["true"], kill_after="1")  # type: ignore[arg-type]


# ------------------------------------------------------------ actorq worker, a real process


@pytest.fixture
async def served() -> AsyncIterator[tuple[actorq.JobQueue, str]]:
    async with actorq.open_queue() as queue, trio.open_nursery() as nursery:
        server = await nursery.start(actorq.serve, queue, "127.0.0.1", 0)
        yield queue, f"ws://127.0.0.1:{server.port}"
        server.close()


async def start_worker(url: str, tmp_path: Path, script: str, *options: str) -> trio.Process:
    """``actorq worker`` in a process group of its own, as a shell's job control makes it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env["PIDS"] = str(tmp_path)
    with open(tmp_path / "worker.log", "wb") as log:  # noqa: ASYNC230 (a local file, once)
        return await trio.lowlevel.open_process(
            [
                *(sys.executable, "-m", "actorq", "--url", url, "worker", "--type", "t"),
                *("--heartbeat-interval", "0.1", *options, "--", "sh", "-c", script),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
            start_new_session=True,
        )


# each job writes its process group to $PIDS/<job id>, leaves a sleep behind and waits
RECORD_GROUP = f'echo {GROUP} > "$PIDS/$ACTORQ_JOB_ID"; '


def clean_up(worker: trio.Process, tmp_path: Path) -> None:
    """After a failed test, leave no worker and no job process behind."""
    if worker.returncode is None:
        worker.kill()
    for recorded in tmp_path.iterdir():
        text = read_line(recorded) if recorded.name.count("-") == 4 else None  # a job id
        if text is None or int(text) == os.getpgrp():
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(text), signal.SIGKILL)


async def stopped(worker: trio.Process) -> int:
    with trio.fail_after(15):
        return await worker.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_to_the_workers_group_drains_and_the_job_finishes(
    served: tuple[actorq.JobQueue, str], tmp_path: Path, signum: int
) -> None:
    queue, url = served
    go = tmp_path / "go"
    job_id = await queue.enqueue("t")
    # the job runs on until the test lets it go, after the signal
    script = RECORD_GROUP + f'while [ ! -e {go} ]; do sleep 0.01; done; echo "\\"done\\""'
    worker = await start_worker(url, tmp_path, script, "--grace", "10")
    try:
        await wait_for_file(tmp_path / str(job_id))
        # Ctrl-C in a terminal, systemd's stop: were the job in this group, it
        # would die of the signal now, before it could see "go"
        os.killpg(worker.pid, signum)
        go.touch()
        assert await stopped(worker) == 0
    finally:
        clean_up(worker, tmp_path)
    status = await queue.job_status(job_id)
    assert (status.state, status.result) == (actorq.JobState.FINISHED, "done")


async def test_past_the_grace_period_the_jobs_group_is_killed_and_the_job_requeued(
    served: tuple[actorq.JobQueue, str], tmp_path: Path
) -> None:
    queue, url = served
    job_id = await queue.enqueue("t")
    worker = await start_worker(url, tmp_path, RECORD_GROUP + "sleep 1000 & wait", "--grace", "0.2")
    try:
        group = int(await wait_for_file(tmp_path / str(job_id)))
        assert group != worker.pid  # the job's group is not the worker's
        # the start-up banner names the worker's id, as registered with the queue
        banner = read_line(tmp_path / "worker.log")
        assert banner is not None
        banner = banner.splitlines()[0]
        [registered] = await queue.workers(0)
        assert banner == (
            f"actorq worker {registered.id} for t on channels '' (concurrency 1) from {url}"
        )
        os.killpg(worker.pid, signal.SIGINT)
        assert await stopped(worker) == 0
    finally:
        clean_up(worker, tmp_path)
    assert await left_running(group) == []
    status = await queue.job_status(job_id)
    # requeued as interrupted, not finished as "command exited with status -2"
    assert (status.state, status.result) == (actorq.JobState.PENDING, None)


async def test_canceling_a_running_job_kills_its_group(
    served: tuple[actorq.JobQueue, str], tmp_path: Path
) -> None:
    queue, url = served
    job_id = await queue.enqueue("t")
    worker = await start_worker(url, tmp_path, RECORD_GROUP + "sleep 1000 & wait")
    try:
        group = int(await wait_for_file(tmp_path / str(job_id)))
        assert group != worker.pid  # the job's group is not the worker's
        await queue.cancel_job(job_id)
        # the worker learns it at its next heartbeat (0.1 s), then kills the group
        with trio.fail_after(10):
            while True:
                if not members(group):
                    break
                await trio.sleep(0.01)
        assert worker.returncode is None  # the worker goes on
        os.kill(worker.pid, signal.SIGTERM)
        assert await stopped(worker) == 0
    finally:
        clean_up(worker, tmp_path)
    assert (await queue.job_status(job_id)).state is actorq.JobState.CANCELED


async def test_a_failing_command_is_retried_after_its_backoff_and_limited_in_time(
    tmp_path: Path,
) -> None:
    # real time: the command is a real process; the backoff and limit are short
    counter = tmp_path / "count"
    script = (
        "import sys, pathlib, time; p = pathlib.Path(sys.argv[1]); "
        "n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1)); "
        "sys.exit(3) if n == 0 else (time.sleep(30) if n == 1 else print('{\"ok\": true}'))"
    )
    async with actorq.open_queue() as q:
        worker = actorq.Worker(q, heartbeat_interval=1)
        handler = command_handler([sys.executable, "-c", script, str(counter)])
        worker.add_handler(
            "t", handler, retries=2, backoff=actorq.Backoff(initial=0.1, jitter=0), timeout=2
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            job_id = await q.enqueue("t")
            with trio.fail_after(60):
                status = await q.wait(job_id)
            worker.shutdown(grace=0)
    # exit 3, then past the time limit, then the result
    assert counter.read_text() == "3"
    assert (status.state, status.result, status.retries) == (JobState.FINISHED, {"ok": True}, 2)
