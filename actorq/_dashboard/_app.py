"""The web dashboard: a Starlette app over a queue's operations, served by Hypercorn on trio.

Every read and action goes through the queue's operation table
(:meth:`LocalQueue.execute` with the caller's tenancy scope), exactly as a
websocket client's request would, so a tenant's token sees and touches only
its channels. Counts by (type, channel) and state come from the queue's
metrics (:meth:`QueueMetrics.job_counts`, kept from events), so no page
walks every job; listings ask the queue for one page at a time.

Authentication is the server's: a bearer token (``Authorization: Bearer``),
or the same token entered once on ``/login`` and kept in an HttpOnly,
SameSite=Strict cookie. Actions are POST forms carrying a token derived from
the caller's credential (HMAC with a per-process key), so another site
cannot submit them. With ``read_only`` the actions are neither shown nor
accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import time
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode
from uuid import UUID

import jinja2
import trio
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from .._core._errors import (
    HasDependentsError,
    JobQueueError,
    NotExistError,
    ProtocolError,
    RunningError,
)
from .._core._events import Phase
from .._core._models import JobState
from .._core._ops import (
    OPERATIONS,
    CancelJob,
    DeleteJob,
    GetJob,
    GetJobStatus,
    GetWorkers,
    ListJobs,
)
from ._graph import Node, render_svg
from ._history import History, chart_svg

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import Request

    from .._actor._local import LocalQueue
    from .._actor._metrics import QueueMetrics
    from .._core._models import JobStatus, JobSummary
    from .._core._ops import Operation, Scope

__all__ = ["Dashboard", "serve_dashboard"]

log = logging.getLogger("actorq.dashboard")

COOKIE = "actorq_token"
PAGE_SIZE = 50
#: the most jobs one graph draws; a larger tree is cut, and the page says so
MAX_GRAPH_NODES = 200
#: the most running jobs the workers page lists
MAX_RUNNING_SHOWN = 1000
#: a worker that reported within this many seconds is live (it reports every 60 s)
LIVE_WITHIN = 150.0
#: how often the live parts of a page are fetched again (milliseconds, for the script)
REFRESH_MS = 2000
#: the name of a retry operation, offered once the queue has one
RETRY_OPERATION = "retry_job"

_STATE_VALUES = {state.value: state for state in JobState}


def _state_of_phase(phase: Phase) -> JobState:
    # BLOCKED and READY are both PENDING; every other phase is the state of its name
    return _STATE_VALUES.get(phase.value, JobState.PENDING)


def _shown_state(status: JobStatus) -> str:
    # the state as the queue settled it: a failure is explicit, never read from the result
    return status.state.value


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return ""
    seconds = max((now - moment).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


def _time(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Unauthorized(Exception):
    pass


class Dashboard:
    """The dashboard of one queue; :attr:`app` is its ASGI application.

    ``authenticate`` is the websocket server's
    (:meth:`actorq.QueueServer.authenticate`): the channels a token may use
    (``None``: every channel), or :class:`ProtocolError` for a bad one.
    ``history`` feeds the charts.
    """

    def __init__(
        self,
        queue: LocalQueue,
        metrics: QueueMetrics,
        authenticate: Callable[[str | None], frozenset[str] | None],
        *,
        history: History,
        read_only: bool = False,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.queue = queue
        self.metrics = metrics
        self.authenticate = authenticate
        self.history = history
        self.read_only = read_only
        self._wall = wall
        self._key = secrets.token_bytes(32)
        try:
            authenticate(None)
        except ProtocolError:
            self.open = False  # a token is needed
        else:
            self.open = True
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("actorq._dashboard", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.globals.update(time=_time, ago=_ago, refresh_ms=REFRESH_MS)
        self.templates = Jinja2Templates(env=env)
        static = resources.files("actorq._dashboard") / "static"
        self._static = {
            "dashboard.css": (static.joinpath("dashboard.css").read_bytes(), "text/css"),
            "dashboard.js": (static.joinpath("dashboard.js").read_bytes(), "text/javascript"),
        }
        self.app = Starlette(
            routes=[
                Route("/", self.overview),
                Route("/login", self.login, methods=["GET", "POST"]),
                Route("/logout", self.logout, methods=["POST"]),
                Route("/jobs", self.jobs),
                Route("/jobs/{job_id}", self.job),
                Route("/jobs/{job_id}/{action}", self.action, methods=["POST"]),
                Route("/workers", self.workers),
                Route("/fragment/depth", self.depth_fragment),
                Route("/fragment/charts", self.charts_fragment),
                Route("/fragment/workers", self.workers_fragment),
                Route("/static/{name}", self.static),
            ],
            exception_handlers={_Unauthorized: self._unauthorized},
        )

    # ------------------------------------------------------------ plumbing

    def _credential(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.cookies.get(COOKIE)

    def _scope(self, request: Request) -> Scope:
        try:
            return self.authenticate(self._credential(request))
        except ProtocolError:
            raise _Unauthorized() from None

    def _csrf(self, request: Request) -> str:
        credential = (self._credential(request) or "").encode()
        return hmac.new(self._key, credential, hashlib.sha256).hexdigest()

    async def _unauthorized(self, request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/fragment/"):
            return Response("unauthorized", status_code=401)
        query = urlencode({"next": request.url.path})
        return RedirectResponse(f"/login?{query}", status_code=303)

    async def _run(self, op: Operation[Any, Any], scope: Scope) -> Any:
        raw = await self.queue.execute(op, scope=scope)
        return op.present(raw)

    def _render(
        self, request: Request, name: str, scope: Scope, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        context.update(
            request=request,
            read_only=self.read_only,
            open=self.open,
            tenant=scope is not None,
            channels=None if scope is None else sorted(scope),
            csrf=self._csrf(request),
        )
        response: HTMLResponse = self.templates.TemplateResponse(
            request, name, context, status_code=status_code
        )
        response.headers["cache-control"] = "no-store"
        # only this site's own script and style; no framing (the action buttons)
        response.headers["content-security-policy"] = (
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
        )
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["referrer-policy"] = "same-origin"
        return response

    def _counts(self, scope: Scope) -> dict[tuple[str, str], dict[JobState, int]]:
        """Jobs per (type, channel) and state, for the keys in ``scope``."""
        raw = self.metrics.job_counts() or {}
        out: dict[tuple[str, str], dict[JobState, int]] = {}
        for key, phases in raw.items():
            if scope is not None and key[1] not in scope:
                continue
            row = dict.fromkeys(JobState, 0)
            for phase, count in phases.items():
                row[_state_of_phase(phase)] += count
            out[key] = row
        return out

    def _ready(self, scope: Scope) -> dict[tuple[str, str], int]:
        raw = self.metrics.job_counts() or {}
        return {
            key: phases.get(Phase.READY, 0)
            for key, phases in raw.items()
            if scope is None or key[1] in scope
        }

    # ------------------------------------------------------------ pages

    async def static(self, request: Request) -> Response:
        found = self._static.get(request.path_params["name"])
        if found is None:
            return Response("not found", status_code=404)
        body, media_type = found
        return Response(body, media_type=media_type, headers={"cache-control": "max-age=300"})

    async def login(self, request: Request) -> Response:
        target = request.query_params.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # never off this site
        if request.method == "GET":
            return self._render(request, "login.html", None, error=None, next=target)
        form = await request.form()
        token = str(form.get("token", ""))
        try:
            self.authenticate(token)
        except ProtocolError:
            return self._render(
                request, "login.html", None, status_code=401, error="invalid token", next=target
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def overview(self, request: Request) -> Response:
        scope = self._scope(request)
        return self._render(
            request, "overview.html", scope, **self._depth_context(scope), **self._charts(scope)
        )

    async def depth_fragment(self, request: Request) -> Response:
        scope = self._scope(request)
        return self._render(request, "_depth.html", scope, **self._depth_context(scope))

    async def charts_fragment(self, request: Request) -> Response:
        scope = self._scope(request)
        return self._render(request, "_charts.html", scope, **self._charts(scope))

    def _depth_context(self, scope: Scope) -> dict[str, Any]:
        counts = self._counts(scope)
        ready = self._ready(scope)
        totals = dict.fromkeys(JobState, 0)
        for row in counts.values():
            for state, n in row.items():
                totals[state] += n
        return {
            "states": list(JobState),
            "rows": [(key, counts[key], ready.get(key, 0)) for key in sorted(counts)],
            "totals": totals,
            "total_ready": sum(ready.values()),
        }

    def _charts(self, scope: Scope) -> dict[str, Any]:
        history = self.history
        points = history.points(scope)
        now = time.time()
        per_minute = 60.0 / history.interval
        throughput = chart_svg(
            points,
            [p.finished * per_minute for p in points],
            window=history.window,
            now=now,
            unit="jobs finished / min",
            name="throughput",
        )
        latency = chart_svg(
            points,
            [p.latency for p in points],
            window=history.window,
            now=now,
            unit="queue latency, s (mean)",
            name="latency",
        )
        finished = sum(p.finished for p in points)
        failed = sum(p.failed for p in points)
        return {
            "throughput_svg": throughput,
            "latency_svg": latency,
            "hour_finished": int(finished),
            "hour_failed": int(failed),
            "sample_seconds": history.interval,
        }

    async def jobs(self, request: Request) -> Response:
        scope = self._scope(request)
        q = request.query_params
        errors = []
        state: JobState | None = None
        if q.get("state"):
            state = _STATE_VALUES.get(q["state"])
            if state is None:
                errors.append(f"unknown state {q['state']!r}")
        job_type = q.get("type") or None
        # an empty box means any channel; "(default)" names the default channel, ""
        channel = q.get("channel") or None
        if channel == "(default)":
            channel = ""
        prefix = (q.get("id") or "").strip().lower()
        try:
            page = max(int(q.get("page", "1")), 1)
        except ValueError:
            page = 1
        if prefix and len(prefix) == 36:
            try:
                exact = UUID(prefix)
            except ValueError:
                pass
            else:
                return RedirectResponse(f"/jobs/{exact}", status_code=303)
        found: list[JobSummary] = []
        more = False
        if not errors:
            op = ListJobs(
                state=state,
                job_type=job_type,
                channel=channel,
                limit=PAGE_SIZE + 1,
                offset=(page - 1) * PAGE_SIZE,
                id_prefix=prefix,
                newest_first=True,
            )
            try:
                found = await self._run(op, scope)
            except (TypeError, ValueError, JobQueueError) as exc:
                errors.append(str(exc))
            more = len(found) > PAGE_SIZE
            found = found[:PAGE_SIZE]
        counts = self._counts(scope)
        total: int | None = None
        if not prefix and not errors:
            total = 0
            for (t, c), row in counts.items():
                if job_type is not None and t != job_type:
                    continue
                if channel is not None and c != channel:
                    continue
                total += row[state] if state is not None else sum(row.values())
        params = {
            k: v for k, v in (("state", q.get("state")), ("type", job_type), ("id", prefix)) if v
        }
        if channel is not None:
            params["channel"] = channel or "(default)"
        pages = None if total is None else max(math.ceil(total / PAGE_SIZE), 1)
        return self._render(
            request,
            "jobs.html",
            scope,
            jobs=found,
            states=list(JobState),
            filters={
                "state": q.get("state", ""),
                "type": job_type or "",
                "channel": params.get("channel", ""),
                "id": prefix,
            },
            types=sorted({t for t, _ in counts}),
            channel_names=sorted({c for _, c in counts}),
            page=page,
            pages=pages,
            more=more,
            total=total,
            errors=errors,
            query=lambda **extra: urlencode({**params, **extra}),
            now=self._wall(),
        )

    async def job(self, request: Request) -> Response:
        scope = self._scope(request)
        try:
            job_id = UUID(request.path_params["job_id"])
        except ValueError:
            return self._render(
                request, "error.html", scope, status_code=404, message="no such job"
            )
        try:
            status: JobStatus = await self._run(GetJobStatus(job_id=job_id), scope)
            info = await self._run(GetJob(job_id=job_id), scope)
        except NotExistError:
            return self._render(
                request,
                "error.html",
                scope,
                status_code=404,
                message=f"job {job_id} does not exist",  # or is not this token's
            )
        nodes, cut = await self._graph(job_id, status, scope)
        shown = _shown_state(status)
        retry = OPERATIONS.get(RETRY_OPERATION)
        actions = []
        if not self.read_only:
            if status.state in (JobState.PENDING, JobState.RUNNING):
                actions.append(("cancel", "Cancel"))
            if retry is not None and shown in ("failed", "canceled"):
                actions.append(("retry", "Retry"))
            settled = all(n.state not in ("pending", "running") for n in nodes.values())
            if not status.dependents and settled and not cut:
                actions.append(("delete", "Delete job tree"))
        return self._render(
            request,
            "job.html",
            scope,
            job_id=job_id,
            status=status,
            info=info,
            shown_state=shown,
            args_json=_pretty(info.args),
            result_json=None if status.result is None else _pretty(status.result),
            is_error=status.state is JobState.FAILED,
            graph_svg=render_svg(nodes, job_id),
            graph_size=len(nodes),
            graph_cut=cut,
            actions=actions,
            message=request.query_params.get("done"),
            error=request.query_params.get("error"),
            now=self._wall(),
        )

    async def _graph(
        self, job_id: UUID, status: JobStatus, scope: Scope
    ) -> tuple[dict[UUID, Node], bool]:
        """The jobs connected to ``job_id`` by dependencies either way, up to
        :data:`MAX_GRAPH_NODES`, in enqueue order; True if some were left out."""
        statuses: dict[UUID, JobStatus] = {job_id: status}
        todo = [*status.dependencies, *status.dependents]
        cut = False
        while todo:
            next_id = todo.pop()
            if next_id in statuses:
                continue
            if len(statuses) >= MAX_GRAPH_NODES:
                cut = True
                break
            try:
                found: JobStatus = await self._run(GetJobStatus(job_id=next_id), scope)
            except NotExistError:
                continue  # deleted meanwhile, or another tenant's
            statuses[next_id] = found
            todo.extend(found.dependencies)
            todo.extend(found.dependents)
        order = sorted(statuses, key=lambda j: statuses[j].queued)
        nodes = {
            j: Node(
                j,
                statuses[j].type,
                _shown_state(statuses[j]),
                tuple(d for d in statuses[j].dependencies if d in statuses),
            )
            for j in order
        }
        return nodes, cut

    async def action(self, request: Request) -> Response:
        scope = self._scope(request)
        action = request.path_params["action"]
        if self.read_only:
            return Response("the dashboard is read-only", status_code=403)
        form = await request.form()
        if not hmac.compare_digest(str(form.get("csrf", "")), self._csrf(request)):
            return Response("stale or missing form token; reload the page", status_code=403)
        try:
            job_id = UUID(request.path_params["job_id"])
        except ValueError:
            return Response("no such job", status_code=404)
        op: Operation[Any, Any]
        if action == "cancel":
            op, done = CancelJob(job_id=job_id), "canceled"
        elif action == "delete":
            op, done = DeleteJob(job_id=job_id), "deleted"
        elif action == "retry" and RETRY_OPERATION in OPERATIONS:
            retry: Any = OPERATIONS[RETRY_OPERATION]  # an operation on one job, by its id
            op, done = retry(job_id=job_id), "retried"
        else:
            return Response("no such action", status_code=404)
        try:
            if action == "delete":
                await self._check_settled(job_id, scope)
            await self._run(op, scope)
        except JobQueueError as exc:
            query = urlencode({"error": f"{action}: {exc}"})
            return RedirectResponse(f"/jobs/{job_id}?{query}", status_code=303)
        log.info(
            "job %s %s from the dashboard",
            job_id,
            done,
            extra={"event": f"dashboard_{action}", "job_id": str(job_id)},
        )
        if action == "delete":
            return RedirectResponse(f"/jobs?{urlencode({'deleted': str(job_id)})}", status_code=303)
        return RedirectResponse(f"/jobs/{job_id}?{urlencode({'done': done})}", status_code=303)

    async def _check_settled(self, job_id: UUID, scope: Scope) -> None:
        """Raise unless ``job_id`` roots a settled tree the dashboard can show whole.

        The queue itself deletes pending jobs too; the dashboard deletes only
        what has run its course, as its button promises."""
        status: JobStatus = await self._run(GetJobStatus(job_id=job_id), scope)
        nodes, cut = await self._graph(job_id, status, scope)
        if status.dependents:
            raise HasDependentsError("other jobs depend on this one; delete their tree")
        if cut or any(n.state in ("pending", "running") for n in nodes.values()):
            raise RunningError("only a settled job tree (nothing pending or running) is deleted")

    async def workers(self, request: Request) -> Response:
        scope = self._scope(request)
        return self._render(request, "workers.html", scope, **await self._workers(scope))

    async def workers_fragment(self, request: Request) -> Response:
        scope = self._scope(request)
        return self._render(request, "_workers.html", scope, **await self._workers(scope))

    async def _workers(self, scope: Scope) -> dict[str, Any]:
        found = await self._run(GetWorkers(older_than=0.0), scope)
        running: list[JobSummary] = await self._run(
            ListJobs(state=JobState.RUNNING, limit=MAX_RUNNING_SHOWN), scope
        )
        now = self._wall()
        by_worker: dict[UUID | None, list[JobSummary]] = {}
        for job in running:
            by_worker.setdefault(job.worker_id, []).append(job)
        rows = []
        for worker in sorted(found, key=lambda w: (w.channel, str(w.id))):
            age = (now - worker.updated).total_seconds()
            rows.append((worker, age <= LIVE_WITHIN, by_worker.pop(worker.id, [])))
        rows.sort(key=lambda r: not r[1])  # live ones first
        unassigned = [job for jobs in by_worker.values() for job in jobs]
        return {
            "worker_rows": rows,
            "live": sum(1 for r in rows if r[1]),
            "silent": sum(1 for r in rows if not r[1]),
            "unassigned": unassigned,
            "running_count": len(running),
            "running_cut": len(running) >= MAX_RUNNING_SHOWN,
            "live_within": LIVE_WITHIN,
            "now": now,
        }


def _pretty(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


async def serve_dashboard(
    queue: LocalQueue,
    metrics: QueueMetrics,
    authenticate: Callable[[str | None], frozenset[str] | None],
    host: str,
    port: int,
    *,
    read_only: bool = False,
    certfile: str | None = None,
    keyfile: str | None = None,
    sample_interval: float = 10.0,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``queue``'s dashboard on ``host:port`` (HTTPS with ``certfile`` and
    ``keyfile``) until cancelled; ``task_status`` gets the bound URLs.

    Binding happens before anything else starts: an :class:`OSError` (a port
    in use) comes out as itself, not in an exception group. The charts'
    sampler runs beside the web server for as long as it does.
    """
    from hypercorn.config import Config
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = log
    if certfile and keyfile:
        config.certfile, config.keyfile = certfile, keyfile
    history = History(metrics, interval=sample_interval, clock=time.time)
    dashboard = Dashboard(queue, metrics, authenticate, history=history, read_only=read_only)
    app: Any = dashboard.app  # an ASGI app; Hypercorn's types spell ASGI out their own way
    sockets = config.create_sockets()  # raises OSError here, before any task starts
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        sock.listen(config.backlog)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(history.run)
        binds = await nursery.start(
            lambda task_status: worker_serve(
                wrap_app(app, config.wsgi_max_body_size, "asgi"),
                config,
                sockets=sockets,
                task_status=task_status,
            )
        )
        task_status.started(binds)
