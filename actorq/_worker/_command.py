"""A handler that runs a command per job: what ``actorq worker -- COMMAND`` registers.

Each run of the command is a session and process group of its own, so a
signal meant for the worker (Ctrl-C in its terminal, SIGTERM from a service
manager to its process group) reaches the worker only, which then shuts down
as it was told to, instead of the job failing under it. The job's processes
end with the job: when the handler is cancelled (the job was canceled, or the
worker's grace period ran out) and when the command exits, whatever still runs
in its group gets SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from .._core import _validate as v
from .._core._unwrap import leaves

if TYPE_CHECKING:
    from ._job import Job

__all__ = ["STDERR_TAIL", "CommandFailed", "command_handler"]

#: How much of the end of a command's stderr a failed job's error result keeps (bytes).
STDERR_TAIL = 64 * 1024

# how long the output pipes get to reach their end once the command's group is
# gone (a process that left the group may hold them open for good)
_DRAIN_SECONDS = 1.0
_POLL_SECONDS = 0.02


class CommandFailed(Exception):
    """A job's command exited with a non-zero status, or was killed by a signal
    it was not sent by the worker.

    ``returncode`` is the status (negative: the number of the signal);
    ``stderr`` the end of what the command wrote to its stderr (at most
    :data:`STDERR_TAIL` bytes, decoded as UTF-8 with replacement), which the
    message carries too.
    """

    def __init__(self, returncode: int, stderr: str) -> None:
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            what = f"command was killed by {name}"
        else:
            what = f"command exited with status {returncode}"
        detail = f"; stderr:\n{stderr.rstrip()}" if stderr.strip() else ""
        super().__init__(what + detail)
        self.returncode = returncode
        self.stderr = stderr


def command_handler(
    command: Sequence[str], *, kill_after: float = 5.0
) -> Callable[[Job], Awaitable[Any]]:
    """A handler that runs ``command`` (argv, no shell) for each job.

    The job's args go to the command's stdin as JSON; ``ACTORQ_JOB_ID``,
    ``ACTORQ_JOB_TYPE`` and ``ACTORQ_JOB_CHANNEL`` are set in its
    environment. Its stdout is the result: parsed as JSON, kept as text if it
    is not JSON, ``None`` if empty. A non-zero exit raises
    :class:`CommandFailed` (so the job finishes with an error result naming
    the status and the last :data:`STDERR_TAIL` bytes of stderr).

    The command runs in a new session (``start_new_session``), so its process
    group is its own. When it exits, whatever it left running in that group is
    terminated. If the handler is cancelled (the job was canceled, or the
    worker's grace period is over), the whole group is terminated: SIGTERM,
    then SIGKILL for what is still alive ``kill_after`` seconds later; then the
    cancellation goes on (the worker requeues or drops the job as it does for
    any cancelled handler; the command's exit status is not a failure then).
    Termination is shielded: the handler returns only once the command is
    reaped. A process that left the group (one that called ``setsid``
    itself) is not followed. POSIX only.

    Raises :class:`TypeError` unless ``command`` is a sequence of str, and
    :class:`ValueError` if it is empty or ``kill_after`` is negative.
    """
    if isinstance(command, str | bytes) or not isinstance(command, Sequence):
        raise TypeError(f"command must be a sequence of str, not {type(command).__name__}")
    # an argv keeps repeated words, so no check_strings (which drops repeats)
    argv = [v.check_str(word, "each word of command") for word in command]
    if not argv:
        raise ValueError("command must not be empty")
    grace = v.check_seconds(kill_after, "kill_after")

    async def run_command(job: Job) -> Any:
        stdout = bytearray()
        stderr = bytearray()
        process = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env={
                **os.environ,
                "ACTORQ_JOB_ID": str(job.id),
                "ACTORQ_JOB_TYPE": job.type,
                "ACTORQ_JOB_CHANNEL": job.channel,
            },
        )
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        try:
            async with trio.open_nursery() as io:
                io.start_soon(_feed, process.stdin, json.dumps(job.args).encode())
                io.start_soon(_collect, process.stdout, stdout, None)
                io.start_soon(_collect, process.stderr, stderr, STDERR_TAIL)
                await process.wait()
                await _terminate_group(process, grace)
                # Output still in the pipes is read to the end; a process that
                # escaped the group could hold them open forever, so not longer.
                io.cancel_scope.deadline = trio.current_time() + _DRAIN_SECONDS
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await _terminate_group(process, grace)
            if isinstance(exc, BaseExceptionGroup):
                raise _unwrapped(exc) from None
            raise
        finally:
            for stream in (process.stdin, process.stdout, process.stderr):
                await trio.aclose_forcefully(stream)
        returncode = process.returncode
        assert returncode is not None  # reaped above
        if returncode != 0:
            raise CommandFailed(returncode, stderr.decode(errors="replace"))
        out = stdout.decode(errors="replace").strip()
        if not out:
            return None
        try:
            return json.loads(out)
        except ValueError:
            return out  # not JSON: keep the text as the result

    return run_command


def _unwrapped(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What a failure of the handler's nursery is to the worker: never a group.

    The nursery wraps the Cancelled of each of its tasks; the worker (and the
    cancel scope that owns the cancellation) want one Cancelled. Any other
    failure (a bug here) comes out as the first one that is not a Cancelled.
    """
    found = leaves(group)
    return next((e for e in found if not isinstance(e, trio.Cancelled)), found[0])


async def _feed(stream: trio.abc.SendStream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the command did not read its args: that is its business
    finally:
        await trio.aclose_forcefully(stream)


async def _collect(stream: trio.abc.ReceiveStream, into: bytearray, limit: int | None) -> None:
    try:
        async for chunk in stream:
            into += chunk
            if limit is not None and len(into) > limit:
                del into[:-limit]
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _terminate_group(process: trio.Process, kill_after: float) -> None:
    """SIGTERM the process group of ``process``, SIGKILL it ``kill_after`` s later if
    anything of it is still alive, and reap ``process``. Returns at once for an
    empty group whose leader was reaped."""
    # The group's id is its leader's pid (start_new_session). Linux does not
    # hand out a pid that is still some group's id, so while the group has a
    # member, the signal cannot reach anyone else.
    group = process.pid
    if _signal_group(group, signal.SIGTERM):
        with trio.move_on_after(kill_after):
            await process.wait()
            # the other members are no children of ours: nothing announces their end
            while True:
                if not _group_alive(group):
                    return
                await trio.sleep(_POLL_SECONDS)
        _signal_group(group, signal.SIGKILL)
    await process.wait()


def _signal_group(group: int, signum: int) -> bool:
    """Send ``signum`` to process group ``group``; False if the group is empty."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # a member changed its credentials (a setuid program): the rest still
        # got the signal, and the leader is ours to kill regardless
        return True
    return True


def _group_alive(group: int) -> bool:
    """Whether a process of ``group`` still runs (zombies excluded).

    The members are children of the leader, so once it is gone they are
    reparented, and are reaped only if PID 1 (or a subreaper) reaps: in a
    container it may not. A group of zombies has finished, so on Linux
    ``/proc`` tells them apart; elsewhere the group counts as alive until
    reaped.
    """
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not sys.platform.startswith("linux"):
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == group and fields[0] not in (b"Z", b"X"):
            return True
    return False
