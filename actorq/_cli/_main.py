"""The ``actorq`` command line.

Every command that reads or changes jobs works against a running server
(``--url``, or ``ACTORQ_URL``) or directly against a store (``--store``, or
``ACTORQ_STORE``; default: ``sqlite:///actorq.db`` in the current directory).
Errors are one sentence on stderr and a non-zero exit, never a traceback.

Start-up time is part of the interface: a command imports only what it uses,
inside its function (no websocket stack for ``--store``, no database driver
for ``--url``, no Prometheus client without ``--metrics-port``), and
``--help`` imports neither trio nor the queue.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from uuid import UUID

import click

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from .._core._models import JobStatus
    from .._core._protocol import JobQueue

__all__ = ["main"]

DEFAULT_STORE = "sqlite:///actorq.db"
#: the values of actorq.JobState, spelled out so that defining the options imports nothing
JOB_STATES = ("pending", "running", "finished", "canceled")
T = TypeVar("T")


def _fail(message: str) -> NoReturn:
    click.echo(f"actorq: {message}", err=True)
    sys.exit(1)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
        return f"{text} ({type(exc).__name__})"
    return text


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` under trio; turn every failure into one sentence and exit 1.

    actorq's own calls raise no exception groups (``docs/errors.md``); the
    nurseries of the commands themselves can, and are reported leaf by leaf.
    """
    import trio

    from .._core._errors import JobQueueError
    from .._core._unwrap import leaves

    expected = (JobQueueError, OSError, ValueError, TypeError)
    try:
        return trio.run(fn)
    except KeyboardInterrupt:
        _fail("interrupted")
    except expected as exc:
        _fail(_describe(exc))
    except BaseExceptionGroup as group:
        found = leaves(group)
        if any(isinstance(e, KeyboardInterrupt) for e in found):
            _fail("interrupted")
        if all(isinstance(e, expected) for e in found):
            _fail("; ".join(_describe(e) for e in found))
        raise


@asynccontextmanager
async def _queue(ctx: click.Context) -> AsyncIterator[JobQueue]:
    url: str | None = ctx.obj["url"]
    if url:
        from .._remote._client import connect

        async with connect(url.split(","), token=ctx.obj["token"], heartbeat_interval=None) as q:
            yield q
    else:
        from .._actor._local import open_queue

        # A one-shot command on a store runs no maintenance: it only does what it is told.
        async with open_queue(ctx.obj["store"], maintenance=None) as q:
            yield q


def _parse_uuid(value: str, what: str = "job id") -> UUID:
    try:
        return UUID(value)
    except ValueError:
        _fail(f"{value!r} is not a valid {what}")


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]
    return "\n".join(lines)


def _status_dict(job_id: UUID, status: JobStatus) -> dict[str, Any]:
    return {
        "id": str(job_id),
        "type": status.type,
        "channel": status.channel,
        "state": status.state.value,
        "queued": status.queued.isoformat(),
        "started": status.started.isoformat() if status.started else None,
        "finished": status.finished.isoformat() if status.finished else None,
        "canceled": status.canceled,
        "retries": status.retries,
        "dependencies": [str(d) for d in status.dependencies],
        "dependents": [str(d) for d in status.dependents],
        "result": status.result,
    }


# ---------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url", envvar="ACTORQ_URL", help="Server URL(s), comma-separated (ws:// or wss://)."
)
@click.option(
    "--store",
    envvar="ACTORQ_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    help="Store URL, used when no --url is given.",
)
@click.option("--token", envvar="ACTORQ_TOKEN", help="Bearer token for the server.")
@click.version_option(package_name="actorq")
@click.pass_context
def main(ctx: click.Context, url: str | None, store: str, token: str | None) -> None:
    """actorq: a durable job queue for trio."""
    ctx.obj = {"url": url, "store": store, "token": token}


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0: any free one).")
@click.option("--auth-token", envvar="ACTORQ_AUTH_TOKEN", help="Shared secret clients must send.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="TLS certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="TLS private key.")
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on this port.")
@click.option(
    "--job-timeout", default=120.0, show_default=True, help="Requeue jobs silent this long."
)
@click.option("--max-retries", default=2, show_default=True, help="Requeues before a job fails.")
@click.option("--watch-interval", default=30.0, show_default=True, help="Reaper period, seconds.")
@click.option("--retention", type=float, help="Delete settled job trees older than this (s).")
@click.pass_context
def serve_command(
    ctx: click.Context,
    host: str,
    port: int,
    auth_token: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    metrics_port: int | None,
    job_timeout: float,
    max_retries: int,
    watch_interval: float,
    retention: float | None,
) -> None:
    """Serve the queue in --store to remote workers over websockets."""
    import signal
    import ssl

    import trio

    from .._actor._local import open_queue
    from .._actor._maintenance import Maintenance
    from .._remote._server import serve

    if ctx.obj["url"]:
        _fail("serve takes --store, not --url")
    if (tls_cert is None) != (tls_key is None):
        _fail("--tls-cert and --tls-key go together")
    ssl_context = None
    if tls_cert and tls_key:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(tls_cert, tls_key)
    maintenance = Maintenance(
        job_timeout=job_timeout,
        max_retries=max_retries,
        watch_interval=watch_interval,
        retention=retention,
    )
    store: str = ctx.obj["store"]

    async def run() -> None:
        metrics = None
        if metrics_port is not None:
            from ..metrics import QueueMetrics, start_http_server

            metrics = QueueMetrics()
            start_http_server(metrics_port, metrics.registry)
        async with (
            open_queue(store, maintenance=maintenance, metrics=metrics) as queue,
            trio.open_nursery() as nursery,
        ):
            server = await nursery.start(
                lambda task_status: serve(
                    queue,
                    host,
                    port,
                    ssl_context=ssl_context,
                    auth=auth_token,
                    task_status=task_status,
                )
            )
            scheme = "wss" if ssl_context else "ws"
            shown = f"[{host}]" if ":" in host else host
            click.echo(f"actorq serving {store} on {scheme}://{shown}:{server.port}", err=True)
            if metrics_port is not None:
                click.echo(f"metrics on http://{shown}:{metrics_port}/metrics", err=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    click.echo("actorq: shutting down", err=True)
                    server.close()
                    nursery.cancel_scope.cancel()
                    break

    _run(run)


@main.command("worker")
@click.option("--type", "job_types", multiple=True, help="Job type for COMMAND (repeatable).")
@click.option("--channel", "channels", multiple=True, help="Channel (repeatable; default '').")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--grace", default=30.0, show_default=True, help="Seconds running jobs get on stop.")
@click.option("--heartbeat-interval", default=15.0, show_default=True)
@click.argument("command", nargs=-1, required=True, metavar="TARGET | COMMAND...")
@click.pass_context
def worker_command(
    ctx: click.Context,
    job_types: tuple[str, ...],
    channels: tuple[str, ...],
    concurrency: int,
    grace: float,
    heartbeat_interval: float,
    command: tuple[str, ...],
) -> None:
    """Run the actorq.Worker TARGET (module:attribute), or COMMAND for each job of --type.

    \b
    actorq worker myapp.tasks:worker
    actorq worker --type build -- ./build.sh

    TARGET is imported with the current directory on sys.path; its Worker's
    own settings apply. COMMAND gets a job's args as JSON on stdin, and its
    stdout (JSON) is the result; a non-zero exit finishes the job with an
    error result. SIGTERM or SIGINT stops taking jobs, lets running ones
    finish within the grace period, then requeues them.
    """
    if not job_types:
        from ._load import load_worker, reject_command_options

        reject_command_options(ctx, command)
        worker = load_worker(command[0])

        async def run_target() -> None:
            async with _queue(ctx) as queue:
                types = ", ".join(worker.job_types)
                click.echo(f"actorq worker {command[0]} for {types}", err=True)
                await worker.run(queue=queue, handle_signals=True)

        _run(run_target)
        return

    from .._worker._command import command_handler
    from .._worker._worker import Worker

    run_command = command_handler(command)

    async def run() -> None:
        async with _queue(ctx) as queue:
            worker = Worker(
                queue,
                channels=channels or ("",),
                concurrency=concurrency,
                grace=grace,
                heartbeat_interval=heartbeat_interval,
            )
            for job_type in job_types:
                worker.add_handler(job_type, run_command)
            click.echo(
                f"actorq worker for {', '.join(job_types)} on channels "
                f"{', '.join(repr(c) for c in channels or ('',))}",
                err=True,
            )
            await worker.run(handle_signals=True)

    _run(run)


@main.command("enqueue")
@click.argument("job_type")
@click.argument("args_json", required=False, default="null")
@click.option("--channel", default="", help="Channel of the job.")
@click.option("--after", multiple=True, help="A job this one depends on (repeatable).")
@click.pass_context
def enqueue_command(
    ctx: click.Context, job_type: str, args_json: str, channel: str, after: tuple[str, ...]
) -> None:
    """Enqueue a job of JOB_TYPE with ARGS_JSON; print its id."""
    try:
        args = json.loads(args_json)
    except ValueError as exc:
        _fail(f"ARGS_JSON is not valid JSON: {exc}")
    deps = [_parse_uuid(a) for a in after]

    async def run() -> UUID:
        async with _queue(ctx) as queue:
            return await queue.enqueue(job_type, args, deps, channel)

    click.echo(str(_run(run)))


def _on_job(ctx: click.Context, job_id: str, action: Callable[[JobQueue, UUID], Awaitable[T]]) -> T:
    """Run one queue call on the job named on the command line."""
    parsed = _parse_uuid(job_id)

    async def run() -> T:
        async with _queue(ctx) as queue:
            return await action(queue, parsed)

    return _run(run)


@main.command("status")
@click.argument("job_id")
@click.pass_context
def status_command(ctx: click.Context, job_id: str) -> None:
    """Print a job's status as JSON."""
    status = _on_job(ctx, job_id, lambda q, i: q.job_status(i))
    click.echo(json.dumps(_status_dict(UUID(job_id), status), indent=2))


@main.command("cancel")
@click.argument("job_id")
@click.pass_context
def cancel_command(ctx: click.Context, job_id: str) -> None:
    """Cancel a job and its pending dependents."""
    _on_job(ctx, job_id, lambda q, i: q.cancel_job(i))
    click.echo(f"canceled {UUID(job_id)}")


@main.command("delete")
@click.argument("job_id")
@click.pass_context
def delete_command(ctx: click.Context, job_id: str) -> None:
    """Delete a job tree: the job and every dependency nothing else needs."""
    _on_job(ctx, job_id, lambda q, i: q.delete_job(i))
    click.echo(f"deleted {UUID(job_id)}")


@main.command("jobs")
@click.option("--state", type=click.Choice(JOB_STATES))
@click.option("--type", "job_type", help="Only jobs of this type.")
@click.option("--channel", help="Only jobs of this channel.")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True)
@click.pass_context
def jobs_command(
    ctx: click.Context, state: str | None, job_type: str | None, channel: str | None, limit: int
) -> None:
    """List jobs in enqueue order."""
    from .._core._models import JobState

    async def run() -> list[Any]:
        async with _queue(ctx) as queue:
            return await queue.list_jobs(
                JobState(state) if state else None, job_type, channel, limit
            )

    rows = [
        [
            str(j.id),
            j.type,
            j.channel or "''",
            j.state.value,
            _time(j.queued),
            _time(j.started),
            _time(j.finished),
            str(j.retries),
            str(len(j.dependencies)),
        ]
        for j in _run(run)
    ]
    headers = ["ID", "TYPE", "CHANNEL", "STATE", "QUEUED", "STARTED", "FINISHED", "RETRIES", "DEPS"]
    click.echo(_table(headers, rows))


@main.command("workers")
@click.pass_context
def workers_command(ctx: click.Context) -> None:
    """List registered workers."""

    async def run() -> list[Any]:
        async with _queue(ctx) as queue:
            return await queue.workers(0)

    rows = [[str(w.id), w.channel or "''", w.arch, _time(w.updated)] for w in _run(run)]
    click.echo(_table(["ID", "CHANNEL", "ARCH", "LAST SEEN"], rows))


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = 0 if total == 0 else math.floor(width * done / total)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


async def _tree(queue: JobQueue, root: UUID) -> dict[UUID, JobStatus]:
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


@main.command("watch")
@click.option("--job", "job_id", help="Follow this job and its dependencies until done.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one view and exit.")
@click.pass_context
def watch_command(ctx: click.Context, job_id: str | None, interval: float, once: bool) -> None:
    """A live view of queue depth, running jobs and workers (or of one job tree)."""
    import trio

    from .._core._models import JobState

    root = _parse_uuid(job_id) if job_id else None
    clear = sys.stdout.isatty() and not once

    def show(text: str) -> None:
        if clear:
            click.echo("\x1b[2J\x1b[H", nl=False)
        click.echo(text)

    async def run() -> int:
        async with _queue(ctx) as queue:
            while True:
                if root is not None:
                    tree = await _tree(queue, root)
                    settled = [
                        s
                        for s in tree.values()
                        if s.state in (JobState.FINISHED, JobState.CANCELED)
                    ]
                    lines = [f"job {root}: {tree[root].state.value}", _bar(len(settled), len(tree))]
                    for dep_id, status in tree.items():
                        lines.append(f"  {status.state.value:<9} {status.type:<16} {dep_id}")
                    show("\n".join(lines))
                    if tree[root].state in (JobState.FINISHED, JobState.CANCELED):
                        return 0 if tree[root].state is JobState.FINISHED else 2
                else:
                    stats = await queue.stats()
                    rows = [[t, c or "''", str(n)] for t, c, n in sorted(stats.ready)]
                    show(
                        f"jobs {stats.jobs}  pending {stats.pending} (blocked {stats.blocked})  "
                        f"running {stats.running}  finished {stats.finished}  "
                        f"canceled {stats.canceled}\n"
                        f"workers {stats.workers}  waiting dequeuers {stats.waiting_dequeuers}\n\n"
                        + _table(["TYPE", "CHANNEL", "READY"], rows)
                    )
                if once:
                    return 0
                await trio.sleep(interval)

    code = _run(run)
    sys.exit(code)
