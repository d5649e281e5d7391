"""The web dashboard in a real browser: headless Chromium (Debian's ``chromium``)
driven by Playwright against real ``actorq serve --dashboard-port`` processes with
jobs and a worker.

The tests also take the screenshots that ``docs/dashboard.md`` shows: with
``ACTORQ_SCREENSHOTS=docs/images`` they replace ``docs/images/dashboard-*.png``;
otherwise they go to a temporary folder, so a test run leaves the tree as it
was. Without Playwright's Python package or the browser they are skipped with
the reason, except under ``CI=true``, where that
is a failure. Every wait is a bounded poll (Playwright's own waits included).
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

import actorq

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from uuid import UUID

    from playwright.sync_api import Browser, Page

PYTHON = sys.executable
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN = "admin-secret"
TENANTS = {"token-red": ["red", "green"], "token-blue": ["blue"]}
IMAGES = Path(
    os.environ.get("ACTORQ_SCREENSHOTS")
    or Path(tempfile.gettempdir()) / "actorq-dashboard-screenshots"
)
WAIT_MS = 15_000


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no browser at {CHROMIUM} (apt-get install chromium)"
    for name in ("starlette", "jinja2", "hypercorn"):
        try:
            __import__(name)
        except ImportError:
            return f"the dashboard extra is not installed ({name} is missing)"
    return None


def _require_browser() -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        time.sleep(0.05)


class Server:
    """One ``actorq serve`` process with its dashboard."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        tenants = tmp / "tenants.json"
        tenants.write_text(json.dumps(TENANTS))
        self.log_path = tmp / "serve.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                *(PYTHON, "-m", "actorq", "--store", f"sqlite:///{tmp / 'q.db'}", "serve"),
                *("--port", "0", "--auth-token", ADMIN, "--tenants", str(tenants)),
                *("--dashboard-port", "0", *extra),
            ],
            stderr=self._log,
        )
        wait_for(lambda: "dashboard on" in self.log() or self.proc.poll() is not None)
        text = self.log()
        ws = re.search(r"on (ws://\S+)", text)
        http = re.search(r"dashboard on (http://\S+?)/?$", text, re.MULTILINE)
        assert ws, text
        assert http, text
        self.url, self.http = ws.group(1), http.group(1)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def call(self, fn: Callable[[actorq.RemoteQueue], Any], token: str = ADMIN) -> Any:
        async def run() -> Any:
            async with actorq.connect(self.url, token=token, heartbeat_interval=None) as queue:
                return await fn(queue)

        return trio.run(run)


# The worker's command: sleeps as long as its args say, then echoes them.
COMMAND = textwrap.dedent(
    """
    import json, sys, time
    args = json.load(sys.stdin) or {}
    time.sleep(args.get("sleep", 0))
    print(json.dumps({"slept": args.get("sleep", 0)}))
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _require_browser()
    tmp = tmp_path_factory.mktemp("dashboard")
    srv = Server(tmp / "full", "--dashboard-sample-interval", "0.5")
    script = tmp / "command.py"
    script.write_text(COMMAND)
    worker_log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            *(PYTHON, "-m", "actorq", "--url", srv.url, "--token", "token-red", "worker"),
            *("--type", "sleep", "--channel", "red", "--channel", "green"),
            *("--concurrency", "4", "--grace", "1"),
            "--",
            *(PYTHON, str(script)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=worker_log,
    )
    try:
        yield srv
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        worker_log.close()
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _page(browser: Browser, token: str | None = ADMIN) -> Page:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    context = browser.new_context(
        viewport={"width": 1200, "height": 800}, extra_http_headers=headers
    )
    context.set_default_timeout(WAIT_MS)
    return context.new_page()


def _shot(page: Page, name: str) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / f"dashboard-{name}.png"), full_page=True)


async def _enqueue_many(queue: actorq.RemoteQueue, jobs: list[actorq.NewJob]) -> list[UUID]:
    return await queue.enqueue_many(jobs)


def _tree(server: Server, channel: str) -> tuple[UUID, UUID, UUID]:
    """A 3-level tree in ``channel``: fetch (finished) <- build (running) <- test (pending)."""

    async def make(queue: actorq.RemoteQueue) -> tuple[UUID, UUID, UUID]:
        fetch, build, test = await queue.enqueue_many(
            [
                actorq.NewJob("fetch", {"url": "https://example.org"}, (), channel),
                actorq.NewJob("build", {"arch": "x86_64"}, (0,), channel),
                actorq.NewJob("test", {"suite": "smoke"}, (1,), channel),
            ]
        )
        await queue.dequeue_by_id(fetch)
        await queue.finish_job(fetch, {"bytes": 1234})
        await queue.dequeue_by_id(build)
        return fetch, build, test

    result: tuple[UUID, UUID, UUID] = server.call(make)
    return result


def test_pages_render_and_depth_updates_live(server: Server, browser: Browser) -> None:
    from playwright.sync_api import expect

    server.call(lambda q: q.enqueue("sleep", {"sleep": 60}, channel="red"))
    quick: list[UUID] = []
    for burst in range(6):  # a few samples' worth of throughput for the charts
        jobs = [actorq.NewJob("sleep", {"sleep": 0.05 * burst}, (), "red")] * (2 + 2 * burst)
        quick += server.call(functools.partial(_enqueue_many, jobs=jobs))
        time.sleep(0.6)

    def all_finished() -> bool:
        async def check(queue: actorq.RemoteQueue) -> bool:
            return all([(await queue.job_status(j)).finished is not None for j in quick])

        done: bool = server.call(check)
        return done

    wait_for(all_finished)
    page = _page(browser)
    page.goto(server.http + "/")
    throughput = page.locator('svg[data-chart="throughput"]')
    expect(throughput).not_to_have_attribute("data-points", "0")
    expect(page.locator("#charts figcaption").first).to_contain_text(f"{len(quick)} finished")
    expect(page.locator("h1")).to_have_text("Queue depth")
    pending = page.locator('#depth-table tfoot [data-total="pending"]')
    before = int(pending.inner_text())
    for _ in range(3):
        server.call(lambda q: q.enqueue("report", {"pages": 3}, channel="blue"))
    # no reload: the page fetches its depth table again by itself
    expect(pending).to_have_text(str(before + 3))
    row = page.locator('#depth-table tr[data-type="report"][data-channel="blue"]')
    expect(row.locator('[data-state="pending"]')).to_have_text("3")
    for state in actorq.JobState:  # a column for every state the queue has
        expect(page.locator(f'#depth-table thead th:text-is("{state.value}")')).to_have_count(1)
    expect(page.locator('svg[data-chart="throughput"]')).to_have_count(1)
    expect(page.locator('svg[data-chart="latency"]')).to_have_count(1)
    _shot(page, "overview")

    page.goto(server.http + "/workers")
    expect(page.locator("#worker-summary")).to_contain_text("1 live")
    running = page.locator("#workers-table a.running")
    expect(running).to_contain_text("sleep")  # what the worker runs now, with elapsed time
    expect(running).to_contain_text(re.compile(r"\d+ s"))
    # every channel it serves, the first first
    expect(page.locator("#workers-table td.channels")).to_have_text("red, green")
    _shot(page, "workers")

    page.goto(server.http + "/jobs?state=pending")
    expect(page.locator("#total")).to_contain_text("jobs")
    rows = page.locator("#jobs-table tbody tr[data-job]")
    assert rows.count() >= 3
    assert {rows.nth(i).get_attribute("data-state") for i in range(rows.count())} == {"pending"}
    page.goto(server.http + "/jobs?type=report&channel=blue")
    expect(page.locator("#total")).to_contain_text("3 jobs")
    _shot(page, "jobs")


def test_job_list_pages_and_filters_by_id(server: Server, browser: Browser) -> None:
    from playwright.sync_api import expect

    ids: list[UUID] = server.call(
        lambda q: q.enqueue_many([("page", {"n": n}) for n in range(120)], channel="blue")
    )
    page = _page(browser)
    page.goto(server.http + "/jobs?type=page")
    expect(page.locator("#total")).to_contain_text("120 jobs, page 1 of 3")
    first = page.locator("#jobs-table tbody tr[data-job]")
    expect(first).to_have_count(50)
    assert first.nth(0).get_attribute("data-job") == str(ids[-1])  # newest first
    page.click("#next")
    expect(page.locator("#total")).to_contain_text("page 2 of 3")
    assert first.nth(0).get_attribute("data-job") == str(ids[-51])
    page.click("#next")
    expect(first).to_have_count(20)
    expect(page.locator("#next")).to_have_count(0)

    page.goto(server.http + "/jobs")
    page.fill('input[name="id"]', str(ids[7])[:13])
    page.click('#filters button[type="submit"]')
    expect(first).to_have_count(1)
    assert first.nth(0).get_attribute("data-job") == str(ids[7])
    page.fill('input[name="id"]', str(ids[7]))  # a whole id opens the job
    page.click('#filters button[type="submit"]')
    expect(page.locator("h1")).to_contain_text(str(ids[7]))


def test_graph_of_a_three_level_tree_shows_each_state(server: Server, browser: Browser) -> None:
    from playwright.sync_api import expect

    fetch, build, test = _tree(server, "red")
    page = _page(browser)
    page.goto(f"{server.http}/jobs/{build}")
    graph = page.locator("#graph svg")
    expect(graph.locator("a[data-job]")).to_have_count(3)
    for job_id, state in ((fetch, "finished"), (build, "running"), (test, "pending")):
        node = graph.locator(f'a[data-job="{job_id}"]')
        expect(node).to_have_attribute("data-state", state)
        assert f"state-{state}" in (node.locator("rect").get_attribute("class") or "")
    # left to right: each level one column further
    xs = [
        float(graph.locator(f'a[data-job="{j}"] rect').get_attribute("x") or "nan")
        for j in (fetch, build, test)
    ]
    assert xs == sorted(xs)
    assert len(set(xs)) == 3
    expect(page.locator("#job-state")).to_have_text("running")
    expect(page.locator("#args")).to_contain_text('"arch": "x86_64"')
    _shot(page, "job")
    graph.locator(f'a[data-job="{fetch}"]').click()  # nodes link to their pages
    expect(page.locator("h1")).to_contain_text(str(fetch))
    expect(page.locator("#result")).to_contain_text('"bytes": 1234')


def test_cancel_and_delete_from_the_job_page(server: Server, browser: Browser) -> None:
    from playwright.sync_api import expect

    job_id: UUID = server.call(lambda q: q.enqueue("doomed", {"n": 1}, channel="blue"))
    page = _page(browser)
    page.goto(f"{server.http}/jobs/{job_id}")
    expect(page.locator("#action-delete")).to_have_count(0)  # not settled yet
    page.click("#action-cancel")
    expect(page.locator("#notice")).to_have_text("job canceled")
    expect(page.locator("#job-state")).to_have_text("canceled")
    status: actorq.JobStatus = server.call(lambda q: q.job_status(job_id))
    assert status.canceled
    expect(page.locator("#action-cancel")).to_have_count(0)
    page.click("#action-delete")
    expect(page.locator("#notice")).to_contain_text(f"job tree {job_id} deleted")

    async def gone(queue: actorq.RemoteQueue) -> bool:
        try:
            await queue.job_status(job_id)
        except actorq.NotExistError:
            return True
        return False

    assert server.call(gone)


def test_retry_a_failed_job(server: Server, browser: Browser) -> None:
    from playwright.sync_api import expect

    job_id: UUID = server.call(lambda q: q.enqueue("flaky", None, channel="blue"))
    server.call(lambda q: q.fail_job(job_id, {"error": {"type": "Boom", "message": "no"}}))
    page = _page(browser)
    page.goto(f"{server.http}/jobs/{job_id}")
    expect(page.locator("#job-state")).to_have_text("failed")
    page.click("#action-retry")
    expect(page.locator("#notice")).to_have_text("job retried")
    expect(page.locator("#job-state")).to_have_text("pending")
    expect(page.locator("#action-retry")).to_have_count(0)  # pending: nothing to retry
    status: actorq.JobStatus = server.call(lambda q: q.job_status(job_id))
    assert (status.state, status.result) == (actorq.JobState.PENDING, None)


def test_a_tenant_sees_none_of_another_tenants_jobs(server: Server, browser: Browser) -> None:
    from playwright.sync_api import expect

    red = _tree(server, "red")
    blue: UUID = server.call(lambda q: q.enqueue("blue-only", None, channel="blue"))
    page = _page(browser, token=None)
    page.goto(server.http + "/jobs")
    expect(page.locator("#token")).to_be_visible()  # no token yet: the login form
    _shot(page, "login")
    page.fill("#token", "wrong")
    page.click("#login")
    expect(page.locator("#login-error")).to_have_text("invalid token")
    page.fill("#token", "token-blue")
    page.click("#login")
    expect(page.locator("h1")).to_have_text("Jobs")
    shown = page.locator("#jobs-table tbody tr[data-job]")
    ids = {shown.nth(i).get_attribute("data-job") for i in range(shown.count())}
    assert str(blue) in ids
    assert not ids & {str(j) for j in red}
    _shot(page, "tenant")
    # every id the whole listing has is a blue one: ask the queue as the tenant would
    everything: list[actorq.JobSummary] = server.call(lambda q: q.list_jobs(), token="token-blue")
    assert {j.channel for j in everything} == {"blue"}
    page.goto(server.http + "/jobs?channel=red")
    expect(page.locator("#jobs-table tbody tr[data-job]")).to_have_count(0)
    page.goto(server.http + "/")
    channels = page.locator("#depth-table tbody tr[data-channel]")
    assert {channels.nth(i).get_attribute("data-channel") for i in range(channels.count())} == {
        "blue"
    }
    response = page.goto(f"{server.http}/jobs/{red[0]}")
    assert response is not None
    assert response.status == 404
    page.goto(server.http + "/workers")  # the worker serves red: not the blue tenant's
    expect(page.locator("#workers-table tbody tr[data-worker]")).to_have_count(0)
    # an action on another tenant's job, with a valid form token, changes nothing
    page.goto(f"{server.http}/jobs/{blue}")
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    answer = page.request.post(f"{server.http}/jobs/{red[2]}/cancel", form={"csrf": csrf or ""})
    assert "does not exist" in answer.text()
    status: actorq.JobStatus = server.call(lambda q: q.job_status(red[2]))
    assert not status.canceled


def test_actions_need_the_pages_form_token(server: Server, browser: Browser) -> None:
    job_id: UUID = server.call(lambda q: q.enqueue("guarded", None, channel="blue"))
    page = _page(browser)
    answer = page.request.post(f"{server.http}/jobs/{job_id}/cancel", form={"csrf": "forged"})
    assert answer.status == 403
    status: actorq.JobStatus = server.call(lambda q: q.job_status(job_id))
    assert not status.canceled


def test_read_only_hides_the_actions(tmp_path: Path, server: Server, browser: Browser) -> None:
    from playwright.sync_api import expect

    ro = Server(tmp_path / "ro", "--dashboard-read-only")
    try:
        job_id: UUID = ro.call(lambda q: q.enqueue("safe", None, channel="red"))
        page = _page(browser)
        page.goto(f"{ro.http}/jobs/{job_id}")
        expect(page.locator("h1")).to_contain_text(str(job_id))
        expect(page.locator("#read-only")).to_be_visible()
        expect(page.locator("#actions")).to_have_count(0)
        expect(page.locator("button.action")).to_have_count(0)
        answer = page.request.post(f"{ro.http}/jobs/{job_id}/cancel", form={"csrf": ""})
        assert answer.status == 403
        status: actorq.JobStatus = ro.call(lambda q: q.job_status(job_id))
        assert not status.canceled
    finally:
        ro.stop()


def test_without_a_token_the_dashboard_answers_nothing(server: Server) -> None:
    request = urllib.request.Request(server.http + "/fragment/depth")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    with caught.value:
        assert caught.value.code == 401
