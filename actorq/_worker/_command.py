"""A handler that runs a shell command per job: what ``actorq worker COMMAND`` registers."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from .._core import _validate as v

if TYPE_CHECKING:
    from ._job import Job

__all__ = ["CommandFailed", "command_handler"]


class CommandFailed(Exception):
    """A job's command exited with a non-zero status."""

    def __init__(self, returncode: int, stderr: str) -> None:
        tail = stderr.strip().splitlines()[-5:]
        detail = ("; stderr: " + " | ".join(tail)) if tail else ""
        super().__init__(f"command exited with status {returncode}{detail}")
        self.returncode = returncode


def command_handler(command: Sequence[str]) -> Callable[[Job], Awaitable[Any]]:
    """A handler that runs ``command`` (argv, no shell) for each job.

    The job's args go to the command's stdin as JSON; ``ACTORQ_JOB_ID``,
    ``ACTORQ_JOB_TYPE`` and ``ACTORQ_JOB_CHANNEL`` are set in its
    environment. Its stdout is the result: parsed as JSON, kept as text if it
    is not JSON, ``None`` if empty. A non-zero exit raises
    :class:`CommandFailed` (so the job finishes with an error result naming
    the status and the tail of stderr). If the handler is cancelled, the
    process is killed (:func:`trio.run_process`).

    Raises :class:`TypeError` unless ``command`` is a sequence of str, and
    :class:`ValueError` if it is empty.
    """
    if isinstance(command, str | bytes) or not isinstance(command, Sequence):
        raise TypeError(f"command must be a sequence of str, not {type(command).__name__}")
    # an argv keeps repeated words, so no check_strings (which drops repeats)
    argv = [v.check_str(word, "each word of command") for word in command]
    if not argv:
        raise ValueError("command must not be empty")

    async def run_command(job: Job) -> Any:
        result = await trio.run_process(
            argv,
            stdin=json.dumps(job.args).encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={
                **os.environ,
                "ACTORQ_JOB_ID": str(job.id),
                "ACTORQ_JOB_TYPE": job.type,
                "ACTORQ_JOB_CHANNEL": job.channel,
            },
        )
        if result.returncode != 0:
            raise CommandFailed(result.returncode, result.stderr.decode(errors="replace"))
        out = result.stdout.decode(errors="replace").strip()
        if not out:
            return None
        try:
            return json.loads(out)
        except ValueError:
            return out  # not JSON: keep the text as the result

    return run_command
