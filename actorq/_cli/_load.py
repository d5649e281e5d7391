"""Loading the worker named by ``actorq worker module:attribute``.

Kept apart from the command definitions so that ``actorq --help`` imports
neither this nor the worker runtime: :func:`load_worker` imports the worker
runtime (and the user's module, with whatever it imports) only when called.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from .._worker._worker import Worker

__all__ = ["load_worker", "reject_command_options", "split_target"]

#: options of ``actorq worker`` that configure the COMMAND form only: a
#: TARGET's Worker carries its own channels, concurrency and intervals
_COMMAND_OPTIONS = {
    "channels": "--channel",
    "concurrency": "--concurrency",
    "grace": "--grace",
    "heartbeat_interval": "--heartbeat-interval",
    "retries": "--retries",
    "backoff_initial": "--backoff-initial",
    "backoff_factor": "--backoff-factor",
    "backoff_max": "--backoff-max",
    "backoff_jitter": "--backoff-jitter",
    "timeout": "--timeout",
}


def reject_command_options(ctx: click.Context, arguments: tuple[str, ...]) -> None:
    """Check that ``actorq worker`` without ``--type`` got one TARGET and no COMMAND options.

    Raises :class:`click.UsageError` (exit status 2) for more than one
    argument, or for an option of the COMMAND form given on the command line
    (silently ignoring it would run the worker otherwise than asked).
    """
    if len(arguments) != 1:
        raise click.UsageError(
            "give one TARGET (module:attribute), or --type with a COMMAND", ctx=ctx
        )
    from click.core import ParameterSource

    given = [
        flag
        for name, flag in _COMMAND_OPTIONS.items()
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)
    ]
    if given:
        raise click.UsageError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with --type "
            "and a COMMAND; a TARGET's Worker has its own settings",
            ctx=ctx,
        )


def split_target(target: str) -> tuple[str, str]:
    """Split ``"package.module:attr.path"`` into its module and attribute parts.

    Raises :class:`click.BadParameter` (a usage error, exit status 2) when
    either part is missing or not made of dotted Python identifiers.
    """
    module_name, colon, attr_path = target.partition(":")
    if not colon or not module_name or not attr_path:
        raise click.BadParameter(
            f"{target!r} is not of the form module:attribute (for example myapp.tasks:worker)",
            param_hint="'TARGET'",
        )
    for part in (*module_name.split("."), *attr_path.split(".")):
        if not part.isidentifier():
            raise click.BadParameter(
                f"{target!r} is not of the form module:attribute "
                f"({part!r} is not a Python identifier)",
                param_hint="'TARGET'",
            )
    return module_name, attr_path


def _is_missing(exc: ModuleNotFoundError, module_name: str) -> bool:
    """Whether ``exc`` says the target module itself (or a package on its path) is missing.

    A module that exists but fails to import one of *its* dependencies raises
    ModuleNotFoundError too; that is a bug in the user's code, whose traceback
    the user needs, so it is not reported as "module not found".
    """
    if exc.name is None:
        return False
    parts = module_name.split(".")
    return exc.name in {".".join(parts[: i + 1]) for i in range(len(parts))}


def load_worker(target: str) -> Worker:
    """Import the module of ``target`` (``module:attribute``) and return its :class:`Worker`.

    The current directory goes first on ``sys.path`` (as ``python -m`` puts
    it), so ``actorq worker myapp.tasks:worker`` finds ``./myapp/tasks.py``.
    The attribute part may be dotted (``module:app.worker``).

    Raises :class:`click.BadParameter` (exit status 2, one sentence) for a
    malformed target, a module that is not found, an attribute the module
    lacks, or an attribute that is not an :class:`actorq.Worker`. An exception
    raised while the module itself runs (including an import *it* fails) is
    the user's code failing and propagates unchanged, traceback and all.
    """
    module_name, attr_path = split_target(target)
    from .._worker._worker import Worker

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _is_missing(exc, module_name):
            raise
        raise click.BadParameter(
            f"module {module_name!r} not found (looked in the current directory and sys.path)",
            param_hint="'TARGET'",
        ) from None
    found: object = module
    walked = module_name
    for name in attr_path.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise click.BadParameter(
                f"{walked!r} has no attribute {name!r}", param_hint="'TARGET'"
            ) from None
        walked = f"{walked}:{name}" if walked == module_name else f"{walked}.{name}"
    if not isinstance(found, Worker):
        raise click.BadParameter(
            f"{target} is of type {type(found).__name__}, not an actorq.Worker",
            param_hint="'TARGET'",
        )
    if not found.job_types:
        raise click.BadParameter(f"{target} has no handlers registered", param_hint="'TARGET'")
    return found
