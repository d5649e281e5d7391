"""``actorq watch``: a live terminal view of a queue, or of one job tree, drawn with rich.

The views are built from what the queue's public operations return (``stats``,
``list_jobs``, ``workers``, ``job_status``), by pure functions that take those
values and the current time, so they render the same against any queue and
are tested by rendering them to a recording :class:`rich.console.Console`.

Cost on the queue per refresh: one ``stats``, one ``list_jobs`` of running jobs
(at most 1,000 of them) and two ``workers`` calls; ``--job`` reads the
status of each job of the tree once per refresh.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID

import click

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rich.console import RenderableType

    from .._core._models import JobStatus, JobSummary, QueueStats, WorkerInfo
    from .._core._protocol import JobQueue

__all__ = [
    "SILENT_AFTER",
    "Overview",
    "job_tree",
    "read_overview",
    "read_tree",
    "render_overview",
    "render_tree",
    "watch_command",
]

#: A worker reports its status every 60 s by default (``Worker(status_interval=...)``):
#: one that has not for two and a half intervals is shown as silent.
SILENT_AFTER = 150.0

#: running jobs read per refresh at most, for the depth table's RUNNING column
RUNNING_READ = 1000

#: colours by ``JobState`` value; a state without one here is shown plain
_STATE_STYLES = {
    "pending": "yellow",
    "running": "cyan",
    "finished": "green",
    "canceled": "magenta",
    "failed": "red",
}


def _style(state_value: str) -> str:
    return _STATE_STYLES.get(state_value, "default")


def elapsed(since: datetime | None, now: datetime) -> str:
    """``since`` to ``now`` as ``1h02m03s``, ``2m03s`` or ``3.2s``; ``-`` when unset."""
    if since is None:
        return "-"
    seconds = max(0.0, (now - since).total_seconds())
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _channel(channel: str) -> str:
    return channel or "''"


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------- the queue view


class Overview:
    """One refresh of the queue view: what the queue said, and when.

    ``running`` holds the running jobs read (at most :data:`RUNNING_READ`), the longest running
    first; ``silent`` the ids of ``workers`` that sent no status lately.
    """

    __slots__ = ("now", "running", "silent", "stats", "workers")

    def __init__(
        self,
        stats: QueueStats,
        running: list[JobSummary],
        workers: list[WorkerInfo],
        silent: frozenset[UUID],
        now: datetime,
    ) -> None:
        self.stats = stats
        self.running = running
        self.workers = workers
        self.silent = silent
        self.now = now


async def read_overview(
    queue: JobQueue,
    *,
    rows: int = 20,
    silent_after: float = SILENT_AFTER,
    now: datetime | None = None,
) -> Overview:
    """Read one :class:`Overview` from ``queue`` (four calls, none of them a full listing).

    ``now`` (default: the wall clock) is the time elapsed times are measured to.
    """
    from .._core._models import JobState

    stats = await queue.stats()
    running = await queue.list_jobs(JobState.RUNNING, limit=max(rows, RUNNING_READ))
    workers = await queue.workers(0)
    silent = frozenset(w.id for w in await queue.workers(silent_after))
    running.sort(key=lambda j: (j.started or j.queued, j.queued))
    return Overview(stats, running, workers, silent, now or datetime.now(UTC))


def worker_of(job: JobSummary) -> UUID | None:
    """The worker a running job was dequeued for, where the queue's listing names it.

    Queues whose job summaries carry no ``worker_id`` (older servers) give ``None``.
    """
    found = getattr(job, "worker_id", None)
    return found if isinstance(found, UUID) else None


def _state_counts(stats: QueueStats) -> list[tuple[str, int]]:
    """Each ``JobState``'s count, in the enum's order, for the states ``stats`` counts."""
    from .._core._models import JobState

    counts: list[tuple[str, int]] = []
    for state in JobState:
        count = getattr(stats, state.value, None)
        if isinstance(count, int):
            counts.append((state.value, count))
    return counts


def render_overview(view: Overview, *, rows: int = 20) -> RenderableType:
    """The queue view: totals, depth per type x channel, running jobs, workers."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    stats = view.stats
    live = [w for w in view.workers if w.id not in view.silent]
    silent = [w for w in view.workers if w.id in view.silent]

    totals = Text()
    totals.append(f"jobs {stats.jobs}", style="bold")
    for state_value, count in _state_counts(stats):
        totals.append("  ")
        totals.append(f"{state_value} {count}", style=_style(state_value))
        if state_value == "pending":
            totals.append(f" (blocked {stats.blocked})")
    totals.append(
        f"\nworkers {len(live)} live, {len(silent)} silent"
        f"  waiting dequeuers {stats.waiting_dequeuers}"
    )

    # Depth: ready jobs per (type, channel) from stats, running ones from the
    # running jobs read (exact unless more than RUNNING_READ run).
    depth: dict[tuple[str, str], list[int]] = {}
    for job_type, channel, count in stats.ready:
        depth.setdefault((job_type, channel), [0, 0])[0] += count
    shown_running = view.running[:rows]
    for job in view.running:
        depth.setdefault((job.type, job.channel), [0, 0])[1] += 1
    title = "depth by type x channel"
    if stats.running > len(view.running):
        title += f" (RUNNING of the first {len(view.running)} running jobs)"
    depth_table = Table(title=title, title_justify="left", expand=False)
    depth_table.add_column("TYPE")
    depth_table.add_column("CHANNEL")
    depth_table.add_column("READY", justify="right", style=_style("pending"))
    depth_table.add_column("RUNNING", justify="right", style=_style("running"))
    for (job_type, channel), (ready, running) in sorted(depth.items()):
        depth_table.add_row(job_type, _channel(channel), str(ready), str(running))
    if not depth:
        depth_table.add_row("-", "-", "0", "0")

    running_table = Table(
        title=f"running jobs ({stats.running})", title_justify="left", expand=False
    )
    for header in ("ID", "TYPE", "CHANNEL", "WORKER", "ELAPSED", "RETRIES"):
        running_table.add_column(header, justify="right" if header == "RETRIES" else "left")
    for job in shown_running:
        worker_id = worker_of(job)
        running_table.add_row(
            str(job.id),
            job.type,
            _channel(job.channel),
            "-" if worker_id is None else str(worker_id),
            elapsed(job.started, view.now),
            str(job.retries),
        )
    parts: list[RenderableType] = [totals, depth_table, running_table]
    if stats.running > len(shown_running):
        parts.append(Text(f"... and {stats.running - len(shown_running)} more running"))

    workers_table = Table(
        title=f"workers ({len(live)} live, {len(silent)} silent)", title_justify="left"
    )
    # what each worker runs now, from the running jobs read
    runs: dict[UUID, int] = {}
    for job in view.running:
        if (worker_id := worker_of(job)) is not None:
            runs[worker_id] = runs.get(worker_id, 0) + 1
    for header in ("ID", "CHANNEL", "ARCH", "RUNNING", "LAST SEEN", "STATUS"):
        workers_table.add_column(header, justify="right" if header == "RUNNING" else "left")
    for worker in (*live, *silent):
        is_live = worker.id not in view.silent
        workers_table.add_row(
            str(worker.id),
            _channel(worker.channel),
            worker.arch,
            str(runs.get(worker.id, 0)),
            f"{_time(worker.updated)} ({elapsed(worker.updated, view.now)} ago)",
            Text("live", style="green") if is_live else Text("silent", style="red"),
        )
    parts.append(workers_table)
    return Group(*parts)


# ---------------------------------------------------------------- the job tree view


async def read_tree(queue: JobQueue, root: UUID) -> dict[UUID, JobStatus]:
    """The status of ``root`` and of every job it depends on, directly or not."""
    seen: dict[UUID, JobStatus] = {}
    stack = [root]
    while stack:
        job_id = stack.pop()
        if job_id in seen:
            continue
        status = await queue.job_status(job_id)
        seen[job_id] = status
        stack.extend(status.dependencies)
    return seen


def _settled(status: JobStatus) -> bool:
    # by timestamps, not by a list of states: every settled state has one
    return status.canceled or status.finished is not None


def job_tree(root: UUID, tree: Mapping[UUID, JobStatus], now: datetime) -> RenderableType:
    """``root`` and its dependencies as a tree, each job with its state and time."""
    from rich.text import Text
    from rich.tree import Tree

    def label(job_id: UUID, repeat: bool) -> Text:
        status = tree[job_id]
        state = status.state.value
        text = Text()
        text.append(f"{state:<9}", style=_style(state))
        text.append(f" {status.type} ", style="bold")
        text.append(str(job_id), style="dim")
        if status.started is not None:
            end = status.finished or now
            text.append(f"  {elapsed(status.started, end)}")
        if status.retries:
            text.append(f"  retries {status.retries}")
        if repeat:
            text.append("  (shown above)", style="dim")
        return text

    top = Tree(label(root, False))
    shown = {root}
    # depth first, each dependency under the job that needs it; a job needed
    # twice is drawn once in full and named again elsewhere
    stack: list[tuple[Tree, UUID]] = [(top, d) for d in reversed(tree[root].dependencies)]
    while stack:
        parent, job_id = stack.pop()
        repeat = job_id in shown
        node = parent.add(label(job_id, repeat))
        if not repeat:
            shown.add(job_id)
            stack.extend((node, d) for d in reversed(tree[job_id].dependencies))
    return top


def render_tree(root: UUID, tree: Mapping[UUID, JobStatus], now: datetime) -> RenderableType:
    """The ``--job`` view: the root's state, a progress bar of settled jobs, the tree."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    settled = sum(1 for status in tree.values() if _settled(status))
    state = tree[root].state.value
    heading = Text()
    heading.append(f"job {root}: ")
    heading.append(state, style=_style(state))
    progress = Table.grid(padding=(0, 1))
    progress.add_row(
        ProgressBar(total=len(tree), completed=settled, width=40),
        Text(f"{settled}/{len(tree)} settled ({100 * settled // max(len(tree), 1)}%)"),
    )
    return Group(heading, progress, job_tree(root, tree, now))


# ---------------------------------------------------------------- the command


@click.command("watch")
@click.option("--job", "job_id", help="Follow this job and its dependencies until done.")
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Seconds between refreshes.",
)
@click.option("--once", is_flag=True, help="Print one view and exit.")
@click.option(
    "--rows",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Running jobs shown at most.",
)
@click.option(
    "--silent-after",
    default=SILENT_AFTER,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds without a status after which a worker shows as silent.",
)
@click.pass_context
def watch_command(
    ctx: click.Context,
    job_id: str | None,
    interval: float,
    once: bool,
    rows: int,
    silent_after: float,
) -> None:
    """A live view of queue depth, running jobs and workers (or of one job tree).

    With --job, the view follows that job's tree and exits when the job
    settles: 0 if it finished, 2 if it did not (canceled, or failed).
    """
    import trio
    from rich.console import Console
    from rich.live import Live

    from .._core._models import JobState
    from ._main import _parse_uuid, _queue, _run

    root = _parse_uuid(job_id) if job_id else None
    console = Console()

    async def frame(queue: JobQueue) -> tuple[RenderableType, int | None]:
        """One view, and the exit status once a followed job has settled."""
        if root is None:
            view = await read_overview(queue, rows=rows, silent_after=silent_after)
            return render_overview(view, rows=rows), None
        tree = await read_tree(queue, root)
        done = _settled(tree[root])
        code = (0 if tree[root].state is JobState.FINISHED else 2) if done else None
        return render_tree(root, tree, datetime.now(UTC)), code

    async def run() -> int:
        async with _queue(ctx) as queue:
            shown, code = await frame(queue)
            if once or not console.is_terminal:
                # no terminal to redraw in: one view per refresh, one after another
                while True:
                    console.print(shown)
                    if once or code is not None:
                        return code or 0
                    await trio.sleep(interval)
                    shown, code = await frame(queue)
            with Live(shown, console=console, auto_refresh=False, screen=False) as live:
                while code is None:
                    await trio.sleep(interval)
                    shown, code = await frame(queue)
                    live.update(shown, refresh=True)
            return code

    sys.exit(_run(run))
