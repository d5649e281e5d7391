"""``actorq schedule add|list|remove``: the queue's durable cron schedules.

Each command is one call on the queue named by ``--url`` (a server) or
``--store`` (a store opened for the call): :meth:`~actorq.JobQueue.schedule`,
:meth:`~actorq.JobQueue.schedules` or :meth:`~actorq.JobQueue.unschedule`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .._core._models import ScheduleInfo

__all__ = ["schedule_command"]

_CATCH_UP = ("last", "none", "all")


def _rows(schedules: list[ScheduleInfo]) -> list[list[str]]:
    from ._main import _time

    return [
        [
            s.name,
            s.cron,
            s.timezone,
            s.job_type,
            s.channel or "''",
            s.catch_up,
            _time(s.last_slot),
            _time(s.next_slot),
        ]
        for s in schedules
    ]


@click.group("schedule")
def schedule_command() -> None:
    """Durable periodic jobs: each slot of a cron expression enqueues a job once."""


@schedule_command.command("add")
@click.argument("name")
@click.argument("cron")
@click.argument("job_type")
@click.option("--args", "args_json", default="null", help="The job's arguments, as JSON.")
@click.option("--channel", default="", help="Channel of the jobs.")
@click.option(
    "--timezone",
    default="UTC",
    show_default=True,
    help="IANA time zone the cron expression is read in.",
)
@click.option(
    "--catch-up",
    type=click.Choice(_CATCH_UP),
    default="last",
    show_default=True,
    help="Slots missed while the queue was down: fire the last once, none, or all (at most 100).",
)
@click.pass_context
def add_command(
    ctx: click.Context,
    name: str,
    cron: str,
    job_type: str,
    args_json: str,
    channel: str,
    timezone: str,
    catch_up: str,
) -> None:
    """Define schedule NAME: at every slot of CRON, enqueue a JOB_TYPE job.

    Defining it again exactly as it is changes nothing; a different
    definition replaces it. Prints the next slot (UTC).
    """
    from ._main import _fail, _queue, _run, _time

    try:
        args: Any = json.loads(args_json)
    except ValueError as exc:
        _fail(f"--args is not valid JSON: {exc}")

    async def run() -> ScheduleInfo:
        async with _queue(ctx) as queue:
            return await queue.schedule(
                name, cron, job_type, args, channel, timezone=timezone, catch_up=catch_up
            )

    info = _run(run)
    click.echo(f"scheduled {info.name}: next slot {_time(info.next_slot)} UTC")


@schedule_command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """List schedules by name, with their last and next slots (UTC)."""
    from ._main import _queue, _run, _table

    async def run() -> list[ScheduleInfo]:
        async with _queue(ctx) as queue:
            return await queue.schedules()

    schedules = _run(run)
    if as_json:
        rows = [
            {
                "name": s.name,
                "cron": s.cron,
                "timezone": s.timezone,
                "job_type": s.job_type,
                "args": s.args,
                "channel": s.channel,
                "catch_up": s.catch_up,
                "last_slot": None if s.last_slot is None else s.last_slot.isoformat(),
                "next_slot": s.next_slot.isoformat(),
            }
            for s in schedules
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    headers = ["NAME", "CRON", "TIMEZONE", "TYPE", "CHANNEL", "CATCH-UP", "LAST SLOT", "NEXT SLOT"]
    click.echo(_table(headers, _rows(schedules)))


@schedule_command.command("remove")
@click.argument("name")
@click.pass_context
def remove_command(ctx: click.Context, name: str) -> None:
    """Remove schedule NAME: no slot fires after it."""
    from ._main import _fail, _queue, _run

    async def run() -> bool:
        async with _queue(ctx) as queue:
            return await queue.unschedule(name)

    if not _run(run):
        _fail(f"no schedule is named {name!r}")
    click.echo(f"removed {name}")
