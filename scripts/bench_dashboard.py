#!/usr/bin/env python3
"""Dashboard benchmark: what ``--dashboard-port`` costs the queue, and what its pages cost.

    python scripts/bench.py --suite dashboard [--quick]
    python scripts/bench_dashboard.py [--quick] [--no-pages]   # this suite alone

Every part runs in its own process, as in ``scripts/bench_remote.py`` (whose
producer, worker and measuring round this suite reuses): ``actorq --store
memory:// serve`` (no token: the open dashboard checks none), one ``actorq
worker bench_worker_app:worker`` and one producer process. Four servers,
measured in turn in every round:

* ``plain``: ``serve`` without a dashboard: the baseline;
* ``metrics``: ``serve --metrics-port 0``, no dashboard: the queue records its
  state-change events for the Prometheus metrics, as it does for a dashboard;
* ``dashboard``: ``serve --dashboard-port 0``, nobody looking;
* ``viewed``: the same, with a viewer process fetching what an open overview
  and workers page fetch (``/fragment/depth``, ``/fragment/charts``,
  ``/fragment/workers``) and the first page of ``/jobs``, every 2 s, as a
  browser tab left open would (four requests per round of 2 s).

Each figure is the median over rounds; each ratio (``vs_plain``) is the median
of the per-round ratios to ``plain``.

Then ``pages``: one server with the dashboard, ``jobs`` jobs enqueued (200,000;
20,000 with ``--quick``; 100 types x 10 channels, one in ten running, one in
ten finished), and for each page the median wall time of five GETs, beside
the median time of a ``stats()`` request on the same queue (a pass over every
job in the scheduler): the reference for a page that would walk every job.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_remote as br

VIEW_PATHS = ("/fragment/depth", "/fragment/charts", "/fragment/workers", "/jobs")
VIEW_PERIOD = 2.0


class DashboardSystem(br.ActorqSystem):
    """An actorq server on the memory store, with or without its dashboard."""

    def __init__(
        self,
        workdir: Path,
        notify: br.Notifications,
        name: str,
        *,
        dashboard: bool,
        viewed: bool,
        extra: tuple[str, ...] = (),
    ) -> None:
        br.System.__init__(self, workdir, notify)
        self.name = name
        extra = (*extra, "--dashboard-port", "0") if dashboard else extra
        self.server = br.Process(
            f"{name}-server",
            [
                *br._actorq_cli(),
                *("--store", "memory://", "serve", "--host", br.HOST, "--port", "0"),
                *extra,
            ],
            workdir,
        )
        self.url = self.server.wait_log(r"on (ws://\S+)").group(1)
        self.http = (
            self.server.wait_log(r"dashboard on (http://\S+?)/?$").group(1) if dashboard else ""
        )
        env = br._env()
        self.producer = br.Process(
            f"{name}-producer",
            [sys.executable, str(Path(br.__file__).resolve()), "--producer", self.url],
            workdir,
            env=env,
            pipe=True,
        )
        self.producer.read_reply()
        self.viewer = (
            br.Process(
                f"{name}-viewer",
                [sys.executable, str(Path(__file__).resolve()), "--viewer", self.http],
                workdir,
            )
            if viewed
            else None
        )

    def start_consumer(self, env: dict[str, str]) -> br.Process:
        return br.Process(
            f"{self.name}-worker",
            [*br._actorq_cli(), "--url", self.url, "worker", "bench_worker_app:worker"],
            self.workdir,
            env=env,
        )

    def close(self) -> None:
        if self.viewer is not None:
            self.viewer.stop()
        super().close()


def _get(url: str) -> float:
    request = urllib.request.Request(url)
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return time.perf_counter() - start


def _viewer(base: str) -> None:
    """Fetch what an open page fetches, every VIEW_PERIOD seconds, until killed."""
    while True:
        for path in VIEW_PATHS:
            _get(base + path)
        time.sleep(VIEW_PERIOD)


async def _fill(url: str, jobs: int) -> float:
    """Enqueue ``jobs`` jobs (100 types x 10 channels), run one in ten and finish
    one in ten; return the median seconds of a stats() request afterwards."""
    import trio

    import actorq

    async with actorq.connect(url, heartbeat_interval=None) as queue:
        for start in range(0, jobs, 5000):
            await queue.enqueue_many(
                [
                    actorq.NewJob(f"type{n % 100}", {"n": n}, (), f"ch{n % 10}")
                    for n in range(start, min(start + 5000, jobs))
                ]
            )
        types = [f"type{n}" for n in range(100)]
        channels = [f"ch{n}" for n in range(10)]
        for n in range(jobs // 5):
            job = await queue.dequeue(types, channels, timeout=0)
            if n % 2:
                await queue.finish_job(job.id, {"n": n})
        times = []
        for _ in range(5):
            start_time = trio.current_time()
            await queue.stats()
            times.append(trio.current_time() - start_time)
        return statistics.median(times)


def pages(workdir: Path, notify: br.Notifications, jobs: int) -> dict[str, Any]:
    import trio

    system = DashboardSystem(workdir, notify, "pages", dashboard=True, viewed=False)
    try:
        stats_seconds = trio.run(_fill, system.url, jobs)
        out: dict[str, Any] = {"jobs": jobs, "stats_request_ms": 1000 * stats_seconds}
        for path in (
            "/",
            "/fragment/depth",
            "/jobs",
            "/jobs?page=1000",
            "/jobs?state=running",
            "/jobs?type=type7&channel=ch7",
            "/jobs?id=0",
            "/workers",
        ):
            times = [_get(system.http + path) for _ in range(5)]
            out[path] = {"median_ms": 1000 * statistics.median(times)}
            out[path]["vs_stats"] = out[path]["median_ms"] / out["stats_request_ms"]
        return out
    finally:
        system.close()


def run(quick: bool) -> dict[str, Any]:
    # fixed sizes, the same for the three servers: large enough that the CPU
    # clock's 10 ms ticks stay small beside a drain's CPU
    sizes = (
        {"drain": 500, "end_to_end": 200, "latency": 20, "chain": 100}
        if quick
        else {"drain": 10000, "end_to_end": 1000, "latency": 60, "chain": 300}
    )
    rounds = 1 if quick else 3
    notify = br.Notifications()
    runs: dict[str, list[dict[str, Any]]] = {}
    results: dict[str, Any] = {
        "setup": {
            "rounds": rounds,
            "sizes": sizes,
            "store": "memory://",
            "viewer": f"GET {', '.join(VIEW_PATHS)} every {VIEW_PERIOD:g} s",
        }
    }
    with tempfile.TemporaryDirectory(prefix="actorq-bench-dashboard-") as tmp:
        workdir = Path(tmp)
        systems = []
        try:
            for name, dashboard, viewed, extra in (
                ("plain", False, False, ()),
                ("metrics", False, False, ("--metrics-port", "0")),
                ("dashboard", True, False, ()),
                ("viewed", True, True, ()),
            ):
                br.progress(f"starting {name}")
                systems.append(
                    DashboardSystem(
                        workdir, notify, name, dashboard=dashboard, viewed=viewed, extra=extra
                    )
                )
            for r in range(rounds):
                for system in systems:
                    br.progress(f"round {r + 1}/{rounds}: {system.name}")
                    runs.setdefault(system.name, []).append(
                        br.measure_round(system, f"{system.name}-r{r}", sizes)
                    )
        finally:
            for system in systems:
                system.close()
        for name, measured in runs.items():
            results[name] = br.summarize(measured, None, is_baseline=True)
            if name != "plain":
                ratios = {}
                for figure in (
                    "drain_jobs_per_s",
                    "end_to_end_jobs_per_s",
                    "server_cpu_ms_per_job",
                    "idle_latency_median_ms",
                    "chain_jobs_per_s",
                ):
                    per_round = [
                        a / b
                        for ours, theirs in zip(measured, runs["plain"], strict=True)
                        if (a := br._get(ours, figure)) is not None
                        and (b := br._get(theirs, figure))
                    ]
                    if per_round:
                        ratios[figure] = statistics.median(per_round)
                results[name]["vs_plain"] = ratios
        if "--no-pages" not in sys.argv:
            br.progress("pages over a large queue")
            results["pages"] = pages(workdir, notify, 20_000 if quick else 200_000)
    notify.close()
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--viewer"]:
        _viewer(sys.argv[2])
    else:
        print(json.dumps(run("--quick" in sys.argv), indent=2))
