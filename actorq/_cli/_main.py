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

import functools
import json
import logging
import math
import sys
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from uuid import UUID

import click

from ._backup import backup_command
from ._schedule import schedule_command
from ._watch import watch_command

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

    import trio

    from .._core._models import JobStatus
    from .._core._protocol import JobQueue
    from .._remote._server import QueueServer

__all__ = ["main"]

DEFAULT_STORE = "sqlite:///actorq.db"
#: the values of actorq.JobState, spelled out so that defining the options imports nothing
JOB_STATES = ("pending", "running", "finished", "failed", "canceled")
#: how long ``serve`` waits, after a stop signal, for its connections to close (1001)
SHUTDOWN_TIMEOUT = 5.0
#: how long a command waits for a server to answer (``--connect-timeout``)
CONNECT_TIMEOUT = 10.0
T = TypeVar("T")

log = logging.getLogger("actorq.cli")


class CliError(Exception):
    """A user error found while a command runs: its message is the one sentence shown."""


if TYPE_CHECKING:
    _FloatType = click.ParamType[float]
else:  # click < 8.2: ParamType is no generic at run time
    _FloatType = click.ParamType


class Seconds(_FloatType):
    """A finite number of seconds, > 0 (or >= 0 with ``allow_zero``)."""

    name = "seconds"

    def __init__(self, *, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not self.allow_zero):
            bound = ">= 0" if self.allow_zero else "> 0"
            self.fail(f"{value} is not a number of seconds {bound}", param, ctx)
        return seconds


PORT = click.IntRange(0, 65535)


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

    expected = (CliError, JobQueueError, OSError, ValueError, TypeError)
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
async def _queue(ctx: click.Context, *, wait_for_server: bool = False) -> AsyncIterator[JobQueue]:
    """The queue a command works on. ``wait_for_server`` (workers): a server
    that is not up yet is waited for, as a lost one is, instead of failing."""
    url: str | None = ctx.obj["url"]
    if url:
        import trio

        from .._core._errors import QueueClosedError
        from .._remote._client import connect

        timeout: float = ctx.obj.get("connect_timeout", CONNECT_TIMEOUT)
        urls = url.split(",")
        connected = False
        ca_file: str | None = ctx.obj.get("ca_file")
        try:
            async with connect(
                urls,
                token=ctx.obj["token"],
                heartbeat_interval=None,
                connect_timeout=timeout,
                retry_on_start=wait_for_server,
                ssl_context=_ca_context(ca_file) if ca_file else None,
            ) as q:
                connected = True
                yield q
        except QueueClosedError as exc:
            # the client says which step timed out only through the cause
            # (handshake) or in the text of each URL's failure (connect)
            if connected or not (
                isinstance(exc.__cause__, trio.TooSlowError) or "TooSlowError()" in str(exc)
            ):
                raise
            raise CliError(
                f"the server at {' or '.join(urls)} did not answer within {timeout:g} s"
            ) from None
    else:
        from .._actor._local import open_queue

        # A one-shot command on a store runs no maintenance: it only does what it is told.
        async with open_queue(ctx.obj["store"], maintenance=None) as q:
            yield q


def _ca_context(ca_file: str) -> ssl.SSLContext:
    """A client context that trusts the CA certificates in ``ca_file`` (and no others)."""
    import ssl

    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"the CA file {ca_file} cannot be read as PEM certificates: {exc}") from None


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


_URL_HELP = "Server URL(s), comma-separated (ws:// or wss://)."
_STORE_HELP = "Store URL, used when no --url is given."
_TOKEN_HELP = "Bearer token for the server."
_CA_HELP = "PEM file of the CA certificates that verify a wss:// server (default: the system's)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="ACTORQ_URL", show_envvar=True, help=_URL_HELP)
@click.option(
    "--store",
    envvar="ACTORQ_STORE",
    show_envvar=True,
    default=DEFAULT_STORE,
    show_default=True,
    help=_STORE_HELP,
)
@click.option("--token", envvar="ACTORQ_TOKEN", show_envvar=True, help=_TOKEN_HELP)
@click.option("--ca-file", envvar="ACTORQ_CA_FILE", show_envvar=True, help=_CA_HELP)
@click.option(
    "--connect-timeout",
    envvar="ACTORQ_CONNECT_TIMEOUT",
    show_envvar=True,
    type=Seconds(),
    default=CONNECT_TIMEOUT,
    show_default=True,
    help="Seconds a server gets to answer.",
)
@click.version_option(package_name="actorq")
@click.pass_context
def main(
    ctx: click.Context,
    url: str | None,
    store: str,
    token: str | None,
    ca_file: str | None,
    connect_timeout: float,
) -> None:
    """actorq: a durable job queue for trio.

    --url, --store, --token and --ca-file may also follow the command's name.
    """
    ctx.obj = {
        "url": url,
        "store": store,
        "token": token,
        "ca_file": ca_file,
        "connect_timeout": connect_timeout,
    }


def _set_global(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # the group has run by now: the same option after the command overrides it
    if value is not None and param.name is not None:
        ctx.ensure_object(dict)[param.name] = value


def _global_options() -> list[click.Parameter]:
    """--url, --store, --token and --ca-file for a subcommand (no envvar: the group
    reads those)."""
    return [
        click.Option(["--url"], expose_value=False, callback=_set_global, help=_URL_HELP),
        click.Option(["--store"], expose_value=False, callback=_set_global, help=_STORE_HELP),
        click.Option(["--token"], expose_value=False, callback=_set_global, help=_TOKEN_HELP),
        click.Option(["--ca-file"], expose_value=False, callback=_set_global, help=_CA_HELP),
    ]


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: int) -> None:
    step = 1 if param.name == "verbose" else -1
    obj = ctx.ensure_object(dict)
    obj["verbosity"] = obj.get("verbosity", 0) + step * value


def _verbosity_options() -> list[click.Parameter]:
    return [
        click.Option(
            ["-v", "--verbose"],
            count=True,
            expose_value=False,
            callback=_set_verbosity,
            help="Log more: -v job and worker events, -vv debug.",
        ),
        click.Option(
            ["-q", "--quiet"],
            count=True,
            expose_value=False,
            callback=_set_verbosity,
            help="Log less: -q warnings only (no banner), -qq errors only.",
        ),
    ]


class _Formatter(logging.Formatter):
    """This command's own lines as ``actorq <message>``, the queue's with time, level and logger."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.name == log.name:
            return f"actorq {record.getMessage()}"
        return super().format(record)


@contextmanager
def _logging(ctx: click.Context) -> Iterator[None]:
    """Log to stderr at the verbosity of -v/-q for the block, then detach again.

    Default: this command's own lines (the banner, shutting down) and the
    queue's warnings. Configured before the queue opens, since the queue
    decides then whether to log its state changes.
    """
    verbosity: int = ctx.obj.get("verbosity", 0)
    levels = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.WARNING, 1: logging.INFO}
    library = levels.get(verbosity, logging.ERROR if verbosity < 0 else logging.DEBUG)
    own = logging.INFO if verbosity >= 0 else library
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("actorq")
    saved = root.level, log.level
    root.addHandler(handler)
    root.setLevel(library)
    log.setLevel(own)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        log.setLevel(saved[1])


def _redact(url: str) -> str:
    """``url`` without its password, for logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_error(what: str, host: str, port: int, exc: OSError) -> CliError:
    import os
    import socket

    if isinstance(exc, socket.gaierror):
        reason = str(exc.strerror or exc)
    elif exc.errno is not None and exc.errno > 0:
        reason = os.strerror(exc.errno)
    else:
        reason = str(exc)
    return CliError(f"cannot {what} on {_where(host, port)}: {reason[:1].lower()}{reason[1:]}")


def _ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for the PEM files ``cert`` and ``key``; one sentence if they are bad."""
    import ssl

    def no_passphrase() -> str:
        raise CliError(f"the TLS key {key} is encrypted; give a key without a passphrase")

    try:
        # the certificate alone first, so that the error can name the bad file
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError:
        _fail(f"the TLS certificate {cert} is not a PEM certificate")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except CliError as exc:
        _fail(str(exc))
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            _fail(f"the TLS key {key} is not the key of the certificate {cert}")
        _fail(f"the TLS key {key} is not a PEM private key")
    return context


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=PORT, help="Port (0: any free one).")
@click.option(
    "--auth-token",
    envvar="ACTORQ_AUTH_TOKEN",
    show_envvar=True,
    help="Shared secret clients must send.",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="TLS certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="TLS private key.")
@click.option("--metrics-port", type=PORT, help="Serve Prometheus metrics on this port.")
@click.option(
    "--heartbeat-timeout",
    "job_timeout",
    type=Seconds(),
    default=120.0,
    show_default=True,
    help="Requeue jobs whose heartbeat is silent this long (not a time limit on jobs).",
)
@click.option(
    "--job-timeout",
    "deprecated_job_timeout",
    type=Seconds(),
    hidden=True,
    help="Deprecated: the old name of --heartbeat-timeout.",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Requeues before a job fails.",
)
@click.option(
    "--watch-interval",
    type=Seconds(),
    default=30.0,
    show_default=True,
    help="Reaper period, seconds.",
)
@click.option(
    "--retention", type=Seconds(), help="Delete settled job trees older than this (seconds)."
)
@click.option(
    "--tenants",
    "tenants_file",
    type=click.Path(exists=True, dir_okay=False),
    help='JSON file of tenant tokens and their channels: {"TOKEN": ["channel", ...]}.',
)
@click.option(
    "--dashboard-port",
    type=PORT,
    help="Serve the web dashboard on this port (needs the dashboard extra).",
)
@click.option(
    "--dashboard-read-only", is_flag=True, help="The dashboard shows, but cancels nothing."
)
@click.option(
    "--dashboard-sample-interval",
    type=Seconds(),
    default=10.0,
    show_default=True,
    help="Seconds between the samples of the dashboard's charts (they show the last hour).",
)
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
    deprecated_job_timeout: float | None,
    max_retries: int,
    watch_interval: float,
    retention: float | None,
    tenants_file: str | None,
    dashboard_port: int | None,
    dashboard_read_only: bool,
    dashboard_sample_interval: float,
) -> None:
    """Serve the queue in --store to remote workers over websockets.

    SIGTERM or SIGINT closes every connection (close code 1001, within a few
    seconds), then the queue; a second signal stops at once.
    """
    import signal

    import trio

    from .._actor._local import open_queue
    from .._actor._maintenance import Maintenance
    from .._remote._server import serve
    from ._backup import serve_backups, sqlite_store

    if ctx.obj["url"]:
        _fail("serve takes --store, not --url")
    if (tls_cert is None) != (tls_key is None):
        _fail("--tls-cert and --tls-key go together")
    ssl_context = _ssl_context(tls_cert, tls_key) if tls_cert and tls_key else None
    if deprecated_job_timeout is not None:
        click.echo(
            "actorq serve: --job-timeout is deprecated and will be removed: it is the"
            " heartbeat timeout, now spelled --heartbeat-timeout (it never limited how"
            " long a job may run; see actorq worker --timeout)",
            err=True,
        )
        job_timeout = deprecated_job_timeout
    maintenance = Maintenance(
        job_timeout=job_timeout,
        max_retries=max_retries,
        watch_interval=watch_interval,
        retention=retention,
    )
    store: str = ctx.obj["store"]
    tenants = _read_tenants(tenants_file) if tenants_file else None
    if dashboard_port is not None:
        _check_dashboard_extra()

    async def run() -> None:
        metrics = None
        if metrics_port is not None:
            from ..metrics import QueueMetrics, start_http_server

            metrics = QueueMetrics()
            try:
                start_http_server(metrics_port, metrics.registry)
            except OSError as exc:
                raise _bind_error("serve metrics", "127.0.0.1", metrics_port, exc) from None
        if metrics is None and dashboard_port is not None:
            from .._actor._metrics import CountingMetrics

            metrics = CountingMetrics()  # the dashboard's counts and charts, no Prometheus
        failure: CliError | None = None
        # a SQLite store is opened here, so that ``actorq backup`` can ask it for copies
        sqlite = sqlite_store(store)
        async with open_queue(sqlite or store, maintenance=maintenance, metrics=metrics) as queue:
            loaded = (await queue.stats()).jobs
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    done = trio.Event()

                    async def run_server(*, task_status: trio.TaskStatus[QueueServer]) -> None:
                        try:
                            await serve(
                                queue,
                                host,
                                port,
                                ssl_context=ssl_context,
                                auth=auth_token,
                                tenants=tenants,
                                task_status=task_status,
                            )
                        finally:
                            done.set()

                    try:
                        server: QueueServer = await nursery.start(run_server)
                    except OSError as exc:
                        # raised outside the nursery, so that it is not wrapped in a group
                        failure = _bind_error("listen", host, port, exc)
                    else:
                        if sqlite is not None:
                            await nursery.start(serve_backups, sqlite)
                        scheme = "wss" if ssl_context else "ws"
                        log.info(
                            "serving %s (%d jobs loaded) on %s://%s",
                            _redact(store),
                            loaded,
                            scheme,
                            _where(host, server.port),
                        )
                        if metrics_port is not None:
                            where = _where("127.0.0.1", metrics_port)
                            log.info("metrics on http://%s/metrics", where)
                        if dashboard_port is not None and metrics is not None:
                            from .._dashboard._app import serve_dashboard

                            try:
                                binds = await nursery.start(
                                    functools.partial(
                                        serve_dashboard,
                                        queue,
                                        metrics,
                                        server.authenticate,
                                        host,
                                        dashboard_port,
                                        read_only=dashboard_read_only,
                                        certfile=tls_cert,
                                        keyfile=tls_key,
                                        sample_interval=dashboard_sample_interval,
                                    )
                                )
                            except OSError as exc:
                                server.close()
                                raise _bind_error(
                                    "serve the dashboard", host, dashboard_port, exc
                                ) from None
                            log.info("dashboard on %s/", binds[0])
                        await _serve_until_stopped(server, done, signals)
                        nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    with _logging(ctx):
        _run(run)


def _read_tenants(path: str) -> dict[str, list[str]]:
    """The ``--tenants`` file: a JSON object of tokens, each to a list of channel names."""
    try:
        with open(path, encoding="utf-8") as file:
            tenants = json.load(file)
    except (OSError, ValueError) as exc:
        _fail(f"cannot read the tenants file {path}: {exc}")
    if not isinstance(tenants, dict) or not all(
        isinstance(token, str)
        and token
        and isinstance(channels, list)
        and all(isinstance(c, str) for c in channels)
        for token, channels in tenants.items()
    ):
        _fail(f"the tenants file {path} must map non-empty tokens to lists of channel names")
    return tenants


def _check_dashboard_extra() -> None:
    import importlib.util

    missing = [
        name
        for name in ("starlette", "jinja2", "hypercorn", "python_multipart")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        _fail(f"--dashboard-port needs {', '.join(missing)}: pip install 'actorq[dashboard]'")


async def _serve_until_stopped(
    server: QueueServer, done: trio.Event, signals: AsyncIterator[int]
) -> None:
    """Wait for a stop signal, then close ``server`` and wait until it is done.

    Clients get their close frame (1001) before anything is cancelled; a
    second signal, or :data:`SHUTDOWN_TIMEOUT`, cuts the wait short.
    """
    import signal

    import trio

    async for signum in signals:
        log.info("shutting down on %s", signal.Signals(signum).name)
        break
    server.close()
    with trio.move_on_after(SHUTDOWN_TIMEOUT):
        async with trio.open_nursery() as waiting:

            async def on_second_signal() -> None:
                async for _ in signals:
                    log.warning("stopping now, on a second signal")
                    waiting.cancel_scope.cancel()

            waiting.start_soon(on_second_signal)
            await done.wait()
            waiting.cancel_scope.cancel()


@main.command("worker")
@click.option("--type", "job_types", multiple=True, help="Job type for COMMAND (repeatable).")
@click.option("--channel", "channels", multiple=True, help="Channel (repeatable; default '').")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--grace",
    type=Seconds(allow_zero=True),
    default=30.0,
    show_default=True,
    help="Seconds running jobs get on stop.",
)
@click.option("--heartbeat-interval", type=Seconds(), default=15.0, show_default=True)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Retries of a failed attempt (non-zero exit or --timeout).",
)
@click.option("--backoff-initial", type=Seconds(allow_zero=True), default=1.0, show_default=True)
@click.option("--backoff-factor", type=click.FloatRange(min=1), default=2.0, show_default=True)
@click.option("--backoff-max", type=Seconds(allow_zero=True), default=300.0, show_default=True)
@click.option(
    "--backoff-jitter", type=click.FloatRange(min=0, max=1), default=0.2, show_default=True
)
@click.option("--timeout", type=Seconds(), help="Time limit of one attempt, seconds.")
@click.argument("command", nargs=-1, required=True, metavar="TARGET | COMMAND...")
@click.pass_context
def worker_command(
    ctx: click.Context,
    job_types: tuple[str, ...],
    channels: tuple[str, ...],
    concurrency: int,
    grace: float,
    heartbeat_interval: float,
    retries: int,
    backoff_initial: float,
    backoff_factor: float,
    backoff_max: float,
    backoff_jitter: float,
    timeout: float | None,
    command: tuple[str, ...],
) -> None:
    """Run the actorq.Worker TARGET (module:attribute), or COMMAND for each job of --type.

    \b
    actorq worker myapp.tasks:worker
    actorq worker --type build -- ./build.sh

    TARGET is imported with the current directory on sys.path; its Worker's
    own settings apply. COMMAND gets a job's args as JSON on stdin, and its
    stdout (JSON) is the result; a non-zero exit finishes the job with an
    error result (with the end of its stderr). Each job's command runs in a
    process group of its own, so a signal to the worker's group reaches the
    worker only. SIGTERM or SIGINT stops taking jobs, lets running ones
    finish within the grace period, then terminates what is left of each
    (SIGTERM, then SIGKILL) and requeues them.
    """
    from functools import partial

    import trio

    if not job_types:
        from ._load import load_worker, reject_command_options

        reject_command_options(ctx, command)
        worker = load_worker(command[0])

        async def run_target() -> None:
            async with (
                _queue(ctx, wait_for_server=True) as queue,
                trio.open_nursery() as nursery,
            ):
                await nursery.start(partial(worker.run, queue=queue, handle_signals=True))
                log.info(
                    "worker %s (%s) for %s (concurrency %d) from %s",
                    worker.id,
                    command[0],
                    ", ".join(worker.job_types),
                    worker.concurrency,
                    ctx.obj["url"] or _redact(ctx.obj["store"]),
                )

        with _logging(ctx):
            _run(run_target)
        return

    from .._worker._backoff import Backoff
    from .._worker._command import command_handler
    from .._worker._worker import Worker

    run_command = command_handler(command)

    async def run() -> None:
        async with _queue(ctx, wait_for_server=True) as queue:
            worker = Worker(
                queue,
                channels=channels or ("",),
                concurrency=concurrency,
                grace=grace,
                heartbeat_interval=heartbeat_interval,
            )
            backoff = Backoff(backoff_initial, backoff_factor, backoff_max, backoff_jitter)
            for job_type in job_types:
                worker.add_handler(
                    job_type, run_command, retries=retries, backoff=backoff, timeout=timeout
                )
            async with trio.open_nursery() as nursery:
                # started: registered, so the banner can name the worker's id
                await nursery.start(partial(worker.run, handle_signals=True))
                log.info(
                    "worker %s for %s on channels %s (concurrency %d) from %s",
                    worker.id,
                    ", ".join(job_types),
                    ", ".join(repr(c) for c in channels or ("",)),
                    concurrency,
                    ctx.obj["url"] or _redact(ctx.obj["store"]),
                )

    with _logging(ctx):
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


@main.command("retry")
@click.argument("job_id")
@click.pass_context
def retry_command(ctx: click.Context, job_id: str) -> None:
    """Put a failed or canceled job back to pending, with the dependents canceled
    on its account; print each job put back."""
    revived = _on_job(ctx, job_id, lambda q, i: q.retry_job(i))
    for revived_id in revived:
        click.echo(f"retried {revived_id}")


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
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Jobs shown at most (0: all).",
)
@click.pass_context
def jobs_command(
    ctx: click.Context, state: str | None, job_type: str | None, channel: str | None, limit: int
) -> None:
    """List jobs in enqueue order, and how many more match than are shown."""
    from ._listings import count_more, job_rows

    async def run() -> tuple[list[Any], int | None]:
        async with _queue(ctx) as queue:
            return await count_more(queue, state, job_type, channel, limit or None)

    jobs, more = _run(run)
    headers = ["ID", "TYPE", "CHANNEL", "STATE", "QUEUED", "STARTED", "FINISHED", "RETRIES", "DEPS"]
    click.echo(_table(headers, job_rows(jobs)))
    if more:
        click.echo(f"... {more} more (--limit 0 lists all)")


@main.command("workers")
@click.option(
    "--silent-after",
    type=Seconds(),
    default=150.0,
    show_default=True,
    help="Seconds without a status after which a worker counts as silent.",
)
@click.pass_context
def workers_command(ctx: click.Context, silent_after: float) -> None:
    """List registered workers: live ones first, then silent ones.

    A worker reports its status every 60 s by default; one silent for
    --silent-after is likely gone (killed, or cut off) and is removed by the
    server once silent for its worker timeout (an hour by default).
    """
    from ._listings import split_workers, worker_rows

    async def run() -> tuple[list[Any], list[Any]]:
        async with _queue(ctx) as queue:
            return await split_workers(queue, silent_after)

    live, silent = _run(run)
    headers = ["ID", "CHANNEL", "ARCH", "LAST SEEN"]
    click.echo(f"live workers: {len(live)}")
    click.echo(_table(headers, worker_rows(live)))
    click.echo(f"\nsilent workers (no status for {silent_after:g} s): {len(silent)}")
    click.echo(_table(headers, worker_rows(silent)))


# commands of their own modules (they import their libraries when they run)
main.add_command(watch_command)
main.add_command(backup_command)
main.add_command(schedule_command)

for _command in main.commands.values():
    if isinstance(_command, click.Group):  # the options follow a subcommand's name
        for _sub in _command.commands.values():
            _sub.params.extend(_global_options())
    elif _command is not backup_command:  # backup names its source itself
        _command.params.extend(_global_options())
for _name in ("serve", "worker"):
    main.commands[_name].params.extend(_verbosity_options())
