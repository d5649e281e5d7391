"""What the web dashboard stands on, without a browser: the listing's paging, id
prefix and order on every kind of queue, the per-(type, channel) counts kept by
the metrics, the charts' history under a MockClock, the graph's layout, and the
ASGI app itself (authentication, form tokens, read-only, bad input) driven
in-process.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode
from uuid import UUID

import pytest
import trio

import actorq
from actorq._core._events import Phase
from actorq.metrics import QueueMetrics

pytest.importorskip("starlette", reason="the dashboard extra is not installed")

from actorq._dashboard._app import Dashboard
from actorq._dashboard._graph import Node, render_svg
from actorq._dashboard._history import History, chart_svg

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

Q = Any  # an actorq.JobQueue


# ------------------------------------------------------------ the listing


async def test_list_jobs_pages_newest_first_and_by_id_prefix(queue: Q) -> None:
    ids = await queue.enqueue_many([("t", n) for n in range(7)], channel="x")
    other = await queue.enqueue("u", None, channel="y")
    newest = await queue.list_jobs(newest_first=True, limit=3)
    assert [j.id for j in newest] == [other, ids[6], ids[5]]
    page2 = await queue.list_jobs(job_type="t", newest_first=True, limit=3, offset=3)
    assert [j.id for j in page2] == [ids[3], ids[2], ids[1]]
    assert [j.id for j in await queue.list_jobs(job_type="t", offset=5)] == ids[5:]
    assert await queue.list_jobs(limit=0) == []
    assert await queue.list_jobs(offset=100) == []
    prefix = str(ids[4])[:9].upper()  # any case; dashes count
    found = await queue.list_jobs(id_prefix=prefix)
    assert ids[4] in [j.id for j in found]
    assert all(str(j.id).startswith(prefix.lower()) for j in found)
    assert [j.id for j in await queue.list_jobs(id_prefix=str(other))] == [other]
    for bad, error in (
        ({"offset": -1}, ValueError),
        ({"offset": "1"}, TypeError),
        ({"id_prefix": "xyz"}, ValueError),
        ({"id_prefix": "a" * 37}, ValueError),
        ({"id_prefix": 12}, TypeError),
        ({"newest_first": 1}, TypeError),
    ):
        with pytest.raises(error):
            await queue.list_jobs(**bad)
    assert len(await queue.list_jobs()) == 8  # nothing changed


async def test_running_jobs_list_their_worker(queue: Q) -> None:
    worker = await queue.insert_worker("x", "x86_64")
    a = await queue.enqueue("t", None, channel="x")
    b = await queue.enqueue("t", None, channel="x")
    c = await queue.enqueue("t", None, channel="x")
    await queue.dequeue(["t"], ["x"], timeout=0, worker_id=worker)
    await queue.dequeue(["t"], ["x"], timeout=0)
    running = await queue.list_jobs(state=actorq.JobState.RUNNING)
    assert [(j.id, j.worker_id) for j in running] == [(a, worker), (b, None)]
    newest = await queue.list_jobs(state=actorq.JobState.RUNNING, newest_first=True, limit=1)
    assert [j.id for j in newest] == [b]
    await queue.finish_job(a, None)
    (pending,) = await queue.list_jobs(state=actorq.JobState.PENDING)
    assert pending.id == c
    assert pending.worker_id is None
    finished = await queue.list_jobs(state=actorq.JobState.FINISHED)
    assert [(j.id, j.worker_id) for j in finished] == [(a, None)]


# ------------------------------------------------------------ counts


def _by_listing(jobs: list[actorq.JobSummary], ready: set[UUID]) -> dict[Any, dict[Phase, int]]:
    out: dict[Any, dict[Phase, int]] = {}
    for job in jobs:
        if job.state is actorq.JobState.PENDING:
            phase = Phase.READY if job.id in ready else Phase.BLOCKED
        else:
            phase = Phase(job.state.value)
        row = out.setdefault((job.type, job.channel), {})
        row[phase] = row.get(phase, 0) + 1
    return out


async def _ready_ids(queue: actorq.LocalQueue) -> set[UUID]:
    stats = await queue.stats()
    ready: set[UUID] = set()
    for job_type, channel, _ in stats.ready:
        pending = await queue.list_jobs(actorq.JobState.PENDING, job_type, channel)
        for job in pending:
            status = await queue.job_status(job.id)
            deps = [await queue.job_status(d) for d in status.dependencies]
            if all(d.finished is not None and not d.canceled for d in deps):
                ready.add(job.id)
    return ready


async def test_metrics_count_jobs_by_key_and_phase_from_events() -> None:
    metrics = QueueMetrics()
    store = actorq.MemoryStore()
    async with actorq.open_queue(store, metrics=metrics, maintenance=None) as queue:
        assert metrics.job_counts() == {}
        worker = await queue.insert_worker("a", "x")
        root, mid, leaf = await queue.enqueue_many(
            [
                actorq.NewJob("fetch", None, (), "a"),
                actorq.NewJob("build", None, (0,), "a"),
                actorq.NewJob("test", None, (1,), "b"),
            ]
        )
        spare = await queue.enqueue("fetch", None, channel="a")
        job = await queue.dequeue(["fetch"], ["a"], timeout=0, worker_id=worker)
        assert job.id == root
        assert metrics.job_counts() == {
            ("fetch", "a"): {Phase.RUNNING: 1, Phase.READY: 1},
            ("build", "a"): {Phase.BLOCKED: 1},
            ("test", "b"): {Phase.BLOCKED: 1},
        }
        await queue.finish_job(root, None)  # build becomes ready
        job = await queue.dequeue(["build"], ["a"], timeout=0)
        assert await queue.requeue_or_finish_job(job.id, 3) is True  # back to ready
        await queue.cancel_job(mid)  # and its pending dependent with it
        await queue.fail_job(spare, {"error": "no"})
        assert metrics.job_counts() == _by_listing(await queue.list_jobs(), set())
        await queue.delete_job(leaf)  # the whole settled tree goes
        assert metrics.job_counts() == {("fetch", "a"): {Phase.FAILED: 1}}
        late = await queue.enqueue("late", None, channel="c")
        await queue.dequeue(["late"], ["c"], timeout=0)
    # reopened from the store: the counts start from what it holds
    again = QueueMetrics()
    async with actorq.open_queue(store, metrics=again, maintenance=None) as queue:
        assert again.job_counts() == {
            ("fetch", "a"): {Phase.FAILED: 1},
            ("late", "c"): {Phase.RUNNING: 1},
        }
        assert again.job_counts() == _by_listing(await queue.list_jobs(), await _ready_ids(queue))
        await queue.cancel_job(late)
        assert again.job_counts() == {
            ("fetch", "a"): {Phase.FAILED: 1},
            ("late", "c"): {Phase.CANCELED: 1},
        }
    assert again.job_counts() is None  # no queue open


# ------------------------------------------------------------ history


async def test_history_keeps_the_last_hour_of_throughput_and_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = QueueMetrics()
    async with actorq.open_queue(metrics=metrics, maintenance=None) as queue:
        history = History(metrics, interval=10, window=60, clock=trio.current_time)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(history.run)  # samples at 0 (the baseline), 10, 20, ...
            await trio.sleep(1)
            for channel in ("red", "red", "blue"):
                await queue.enqueue("t", None, channel=channel)
            await trio.sleep(4)  # the jobs wait 4 s, then start
            for _ in range(3):
                job = await queue.dequeue(["t"], ["red", "blue"], timeout=0)
                blue = job.channel == "blue"
                await queue.finish_job(job.id, {"error": "x"} if blue else 1, failed=blue)
            await trio.sleep(16)
            everything = history.points(None)
            red = history.points(["red"])
            green = history.points(["green"])
            await trio.sleep(120)  # the ring holds window / interval samples
            later = history.points(None)
            nursery.cancel_scope.cancel()
    assert [(p.finished, p.failed) for p in everything] == [(3, 1), (0, 0)]
    assert everything[0].latency == pytest.approx(4)
    assert everything[1].latency is None
    assert [(p.finished, p.failed) for p in red] == [(2, 0), (0, 0)]
    assert [p.finished for p in green] == [0, 0]
    assert len(later) == 6
    assert all(p.finished == 0 for p in later)
    with pytest.raises(ValueError, match="interval"):
        History(metrics, interval=0, clock=trio.current_time)


def test_a_chart_draws_its_points_and_breaks_at_gaps() -> None:
    from actorq._dashboard._history import Point

    points = [Point(float(t), 1.0, 0.0, None) for t in range(0, 50, 10)]
    svg = chart_svg(points, [1.0, None, 2.0, 3.0, None], window=60, now=50, unit="u", name="demo")
    assert 'data-points="3"' in svg
    assert svg.count("<polyline") == 1  # 2.0 -> 3.0
    assert svg.count("<circle") == 1  # 1.0 alone, before the gap
    empty = chart_svg([], [], window=60, now=0, unit="u", name="none")
    assert 'data-points="0"' in empty


# ------------------------------------------------------------ graph


def test_the_graph_puts_each_job_one_column_past_its_deepest_dependency() -> None:
    a, b, c, d = (UUID(int=n) for n in range(1, 5))
    nodes = {
        a: Node(a, "fetch", "finished", ()),
        b: Node(b, "build", "running", (a,)),
        c: Node(c, "test", "pending", (a, b)),
        d: Node(d, "<odd & type>", "failed", ()),
    }
    svg = render_svg(nodes, b)
    x = {
        job: float(m.group(1))
        for job in nodes
        if (m := re.search(rf'data-job="{job}".*?<rect[^>]* x="([0-9.]+)"', svg))
    }
    assert x[a] == x[d] < x[b] < x[c]
    assert svg.count("<line") == 3
    assert "&lt;odd &amp; type&gt;" in svg
    assert f'href="/jobs/{c}"' in svg
    assert "current" in re.search(rf'data-job="{b}".*?</a>', svg).group(0)  # type: ignore[union-attr]
    chain = {UUID(int=n): Node(UUID(int=n), "t", "pending", ()) for n in range(1, 3001)}
    for n in range(2, 3001):  # deeper than the recursion limit
        chain[UUID(int=n)] = Node(UUID(int=n), "t", "pending", (UUID(int=n - 1),))
    assert "<svg" in render_svg(chain, UUID(int=1))


# ------------------------------------------------------------ the app


class Client:
    """Calls an ASGI app in this trio run, as a browser's requests would reach it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cookies: dict[str, str] = {}

    async def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        path, _, query = path.partition("?")
        body = b"" if form is None else urlencode(form).encode()
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        raw_headers.append((b"host", b"dashboard.test"))
        if form is not None:
            raw_headers.append((b"content-type", b"application/x-www-form-urlencoded"))
        if self.cookies:
            cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            raw_headers.append((b"cookie", cookie.encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": raw_headers,
            "client": ("127.0.0.1", 1),
            "server": ("dashboard.test", 80),
        }
        sent = False
        status = 0
        out_headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await trio.sleep_forever()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for k, v in message["headers"]:
                    name, value = k.decode(), v.decode()
                    if name == "set-cookie":
                        key, _, rest = value.partition("=")
                        self.cookies[key] = rest.split(";", 1)[0].strip('"')
                    out_headers[name] = value
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, out_headers, b"".join(chunks).decode()


def _authenticate(token: str | None) -> frozenset[str] | None:
    if token == "admin":
        return None
    if token == "red":
        return frozenset({"red"})
    raise actorq.ProtocolError("invalid token", "unauthorized")


@asynccontextmanager
async def _dashboard(
    *, read_only: bool = False, authenticate: Callable[[str | None], Any] = _authenticate
) -> AsyncIterator[tuple[actorq.LocalQueue, Client]]:
    from actorq._actor._metrics import CountingMetrics

    metrics = CountingMetrics()  # what serve gives a dashboard without --metrics-port
    async with actorq.open_queue(metrics=metrics, maintenance=None) as queue:
        history = History(metrics, clock=trio.current_time)
        dashboard = Dashboard(queue, metrics, authenticate, history=history, read_only=read_only)
        yield queue, Client(dashboard.app)


async def test_the_app_asks_for_a_token_and_keeps_it_in_a_cookie() -> None:
    async with _dashboard() as (queue, client):
        red = await queue.enqueue("t", {"secret": 1}, channel="red")
        blue = await queue.enqueue("t", {"secret": 2}, channel="blue")
        status, headers, _ = await client.request("GET", "/jobs")
        assert status == 303
        assert headers["location"] == "/login?next=%2Fjobs"
        status, _, _ = await client.request("GET", "/fragment/depth")
        assert status == 401
        status, _, body = await client.request("POST", "/login", {"token": "nope"})
        assert status == 401
        assert "invalid token" in body
        status, headers, _ = await client.request(
            "POST", "/login?next=//elsewhere.example", {"token": "red"}
        )
        assert status == 303
        assert headers["location"] == "/"  # never off the site
        assert "httponly" in headers["set-cookie"].lower()
        assert "samesite=strict" in headers["set-cookie"].lower()
        status, headers, body = await client.request("GET", "/jobs")
        assert status == 200
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert str(red) in body
        assert str(blue) not in body
        status, _, body = await client.request("GET", f"/jobs/{blue}")
        assert status == 404
        status, _, body = await client.request("GET", "/fragment/depth")
        assert 'data-channel="red"' in body
        assert 'data-channel="blue"' not in body
        status, _, _ = await client.request("POST", "/logout", {})
        assert status == 303
        status, _, _ = await client.request(
            "GET", "/jobs", headers={"Authorization": "Bearer admin"}
        )
        assert status == 200


async def test_the_app_answers_bad_input_plainly() -> None:
    async with _dashboard() as (queue, client):
        admin = {"Authorization": "Bearer admin"}
        job = await queue.enqueue("t", None, channel="red")
        for path, code, text in (
            ("/jobs/not-a-uuid", 404, "no such job"),
            (f"/jobs/{UUID(int=5)}", 404, "does not exist"),
            ("/jobs?state=sleeping", 200, "unknown state"),
            ("/jobs?id=zz", 200, "id_prefix must be hex digits"),
            ("/jobs?page=abc", 200, "page 1"),
            ("/static/nothing.js", 404, "not found"),
        ):
            status, _, body = await client.request("GET", path, headers=admin)
            assert (status, text in body) == (code, True), (path, body[:300])
        status, headers, _ = await client.request("GET", f"/jobs?id={job}", headers=admin)
        assert status == 303
        assert headers["location"] == f"/jobs/{job}"
        for path in (f"/jobs/{job}/explode", "/jobs/not-a-uuid/cancel"):
            status, _, _ = await client.request("POST", path, {"csrf": "x"}, headers=admin)
            assert status == 403  # the form token comes first
        status, _, body = await client.request("GET", f"/jobs/{job}", headers=admin)
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', body)
        assert csrf
        form = {"csrf": csrf.group(1)}
        status, _, _ = await client.request("POST", f"/jobs/{job}/explode", form, headers=admin)
        assert status == 404
        status, _, _ = await client.request("POST", "/jobs/nope/cancel", form, headers=admin)
        assert status == 404
        # deleting a pending job is refused by the queue, and the page says why
        status, headers, _ = await client.request(
            "POST", f"/jobs/{job}/delete", form, headers=admin
        )
        assert status == 303
        status, _, body = await client.request("GET", headers["location"], headers=admin)
        assert "delete:" in body
        assert (await queue.job_status(job)).state is actorq.JobState.PENDING


async def test_read_only_refuses_every_action() -> None:
    async with _dashboard(read_only=True) as (queue, client):
        admin = {"Authorization": "Bearer admin"}
        job = await queue.enqueue("t", None, channel="red")
        status, _, body = await client.request("GET", f"/jobs/{job}", headers=admin)
        assert status == 200
        assert "action-cancel" not in body
        assert 'id="read-only"' in body
        status, _, _ = await client.request("POST", f"/jobs/{job}/cancel", {}, headers=admin)
        assert status == 403
        assert not (await queue.job_status(job)).canceled


async def test_an_open_server_needs_no_token() -> None:
    async with _dashboard(authenticate=lambda token: None) as (queue, client):
        await queue.enqueue("t", None, channel="")
        status, _, body = await client.request("GET", "/")
        assert status == 200
        assert "open (no token)" in body
        status, _, body = await client.request("GET", "/jobs?channel=(default)")
        assert "1 job," in body
        status, _, body = await client.request("GET", "/workers")
        assert "no workers registered" in body


class _Recording:
    """A queue whose ``execute`` notes how many rows each listing returned."""

    def __init__(self, queue: actorq.LocalQueue) -> None:
        self.queue = queue
        self.rows: list[tuple[str, int]] = []

    async def execute(self, op: Any, *, scope: Any = None) -> Any:
        result = await self.queue.execute(op, scope=scope)
        if isinstance(result, list):
            self.rows.append((op.NAME, len(result)))
        return result


async def test_no_page_loads_every_job() -> None:
    metrics = QueueMetrics()
    async with actorq.open_queue(metrics=metrics, maintenance=None) as queue:
        for start in range(0, 20_000, 5_000):
            await queue.enqueue_many([("bulk", n) for n in range(start, start + 5_000)])
        worker = await queue.insert_worker("", "x86_64")
        running = await queue.dequeue(["bulk"], timeout=0, worker_id=worker)
        recording = _Recording(queue)
        dashboard = Dashboard(
            recording,  # type: ignore[arg-type]
            metrics,
            lambda token: None,
            history=History(metrics, clock=trio.current_time),
        )
        client = Client(dashboard.app)
        for path in (
            "/",
            "/fragment/depth",
            "/fragment/charts",
            "/jobs",
            "/jobs?page=300",
            "/jobs?state=pending&type=bulk",
            "/jobs?id=0",
            "/workers",
            f"/jobs/{running.id}",
        ):
            status, _, body = await client.request("GET", path)
            assert status == 200, path
        assert recording.rows
        assert max(rows for _, rows in recording.rows) <= 51
        status, _, body = await client.request("GET", "/jobs?state=pending")
        assert "19999 jobs, page 1 of 400" in body
        status, _, body = await client.request("GET", "/fragment/depth")
        assert '<th class="num" data-total="pending">19999</th>' in body
        status, _, body = await client.request("GET", "/workers")
        assert str(running.id)[:8] in body


# ------------------------------------------------------------ the command line


def _serve(tmp_path: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "actorq", "--store", f"sqlite:///{tmp_path / 'q.db'}"),
            *("serve", "--port", "0", *args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read the tenants file"),
        ('{"tok": "red"}', "must map non-empty tokens to lists of channel names"),
        ('{"": ["red"]}', "must map non-empty tokens to lists of channel names"),
        ('["tok"]', "must map non-empty tokens to lists of channel names"),
    ],
)
def test_a_bad_tenants_file_is_one_sentence(tmp_path: Any, content: str, message: str) -> None:
    tenants = tmp_path / "tenants.json"
    tenants.write_text(content)
    done = _serve(tmp_path, "--tenants", str(tenants))
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_dashboard_port_in_use_is_one_sentence(tmp_path: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(tmp_path, "--dashboard-port", str(port))
    assert done.returncode == 1
    assert f"cannot serve the dashboard on 127.0.0.1:{port}: address already in use" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


async def test_counting_metrics_keep_the_counts_and_no_prometheus_series() -> None:
    from actorq._actor._metrics import CountingMetrics

    full, light = QueueMetrics(), CountingMetrics()
    for metrics in (full, light):
        async with actorq.open_queue(metrics=metrics, maintenance=None) as queue:
            await queue.enqueue("t", None, channel="red")
            failed = await queue.enqueue("t", None, channel="red")
            await queue.fail_job(failed, {"error": "no"})
            job = await queue.dequeue(["t"], ["red"], timeout=0)
            await queue.finish_job(job.id, 1)
            counts, totals = metrics.job_counts(), metrics.job_totals()
            assert counts == {("t", "red"): {Phase.FINISHED: 1, Phase.FAILED: 1}}
            assert totals is not None
            finished, failures, started, _ = totals["t", "red"]
            assert (finished, failures, started) == (2, 1, 1)
            with pytest.raises(RuntimeError, match="already belong"):
                metrics.attach(await queue.stats())
            if metrics is light:
                assert metrics.gauges is None
                exported = actorq.metrics.exposition(metrics.registry).decode()
                assert 'actorq_jobs_finished_total{channel="red"' not in exported
            else:
                assert metrics.gauges is not None
        assert metrics.job_totals() is None


def test_with_tls_the_dashboard_serves_https_and_a_secure_cookie(tmp_path: Any) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "actorq", "--store", "memory://", "serve"),
                *("--port", "0", "--auth-token", "admin", "--dashboard-port", "0"),
                *("--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")),
            ],
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"dashboard on (https://\S+?)/?$", log.read_text(), re.M)):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        login = urllib.request.Request(
            found.group(1) + "/login", data=b"token=admin", method="POST"
        )

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), NoRedirect()
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            opener.open(login, timeout=10)
        with caught.value as answer:
            assert answer.code == 303
            assert "secure" in answer.headers["set-cookie"].lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
