"""Prometheus metrics and state-change logs of the in-process queue."""

from __future__ import annotations

import logging
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

import actorq
from actorq import JobState, Worker
from actorq.metrics import QueueMetrics, exposition, is_error_result, start_http_server

if TYPE_CHECKING:
    from trio.testing import MockClock

    from actorq._core._state import QueueState


def value(metrics: QueueMetrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def by_type(job_type: str, channel: str = "") -> dict[str, str]:
    return {"type": job_type, "channel": channel}


async def test_job_counters(autojump_clock: MockClock) -> None:
    m = QueueMetrics()
    async with actorq.open_queue(metrics=m) as q:
        await q.enqueue("build", None, (), "c")
        await q.enqueue("build", None, (), "c")
        await q.enqueue("build", None, (), "c")
        job = await q.dequeue(["build"], ["c"], timeout=0)
        await q.finish_job(job.id, {"artifact": "x", "error": None})
        job = await q.dequeue(["build"], ["c"], timeout=0)
        assert await q.requeue_or_finish_job(job.id, 1, None) is True
        job = await q.dequeue(["build"], ["c"], timeout=0)
        await q.finish_job(
            job.id, {"error": {"type": "E", "message": "m", "traceback": None}}, failed=True
        )
        # an error-shaped result is not a failure unless the finish says so
        job = await q.dequeue(["build"], ["c"], timeout=0)
        await q.finish_job(job.id, {"error": "shaped like one"})

        root = await q.enqueue("test")
        await q.enqueue("deploy", None, [root])
        await q.dequeue(["test"], timeout=0)
        await q.cancel_job(root)  # cancels the running root and its pending dependent
        await q.cancel_job(root)  # again: nothing more is canceled
        never = await q.enqueue("test")
        await q.fail_job(never, {"error": "dependency failed"})

    labels = by_type("build", "c")
    assert value(m, "actorq_jobs_enqueued_total", **labels) == 3
    assert value(m, "actorq_jobs_dequeued_total", **labels) == 4
    assert value(m, "actorq_jobs_requeued_total", **labels) == 1
    assert value(m, "actorq_jobs_finished_total", **labels) == 3
    assert value(m, "actorq_jobs_failed_total", **labels) == 1
    assert value(m, "actorq_jobs_canceled_total", **by_type("test")) == 1
    assert value(m, "actorq_jobs_canceled_total", **by_type("deploy")) == 1
    assert value(m, "actorq_jobs_finished_total", **by_type("test")) == 1
    assert value(m, "actorq_jobs_failed_total", **by_type("test")) == 1


async def test_dequeue_wait_and_run_time(autojump_clock: MockClock) -> None:
    m = QueueMetrics()
    async with actorq.open_queue(metrics=m) as q:
        got: list[actorq.DequeuedJob] = []

        async def dequeuer() -> None:
            got.append(await q.dequeue(["t"]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dequeuer)
            await trio.sleep(5)  # the dequeuer waits 5 s for a job
            await q.enqueue("t")
        await trio.sleep(7)  # the job runs 7 s
        await q.finish_job(got[0].id, None)
        await q.enqueue("t")
        await q.dequeue(["t"], timeout=0)  # a ready job: no wait

    assert value(m, "actorq_dequeue_wait_seconds_count", **by_type("t")) == 2
    assert value(m, "actorq_dequeue_wait_seconds_sum", **by_type("t")) == pytest.approx(5)
    assert value(m, "actorq_job_run_seconds_count", **by_type("t")) == 1
    assert value(m, "actorq_job_run_seconds_sum", **by_type("t")) == pytest.approx(7)


async def test_queue_latency(autojump_clock: MockClock) -> None:
    m = QueueMetrics()
    async with actorq.open_queue(metrics=m, maintenance=None) as q:
        root = await q.enqueue("t")
        child = await q.enqueue("u", None, [root])
        await trio.sleep(3)
        job = await q.dequeue(["t"], timeout=0)  # ready 3 s
        await trio.sleep(10)
        await q.finish_job(job.id, None)  # the child becomes ready now, not when enqueued
        await trio.sleep(2)
        job = await q.dequeue(["u"], timeout=0)  # ready 2 s
        assert job.id == child
        assert await q.requeue_or_finish_job(job.id, 1, None)
        await trio.sleep(4)
        await q.dequeue(["u"], timeout=0)  # ready again 4 s after the requeue

    assert value(m, "actorq_queue_latency_seconds_count", **by_type("t")) == 1
    assert value(m, "actorq_queue_latency_seconds_sum", **by_type("t")) == pytest.approx(3)
    assert value(m, "actorq_queue_latency_seconds_count", **by_type("u")) == 2
    assert value(m, "actorq_queue_latency_seconds_sum", **by_type("u")) == pytest.approx(6)
    assert value(m, "actorq_queue_latency_seconds_bucket", le="2.5", **by_type("u")) == 1


async def test_gauges_come_from_the_queue_state(autojump_clock: MockClock) -> None:
    m = QueueMetrics()
    async with actorq.open_queue(metrics=m) as q:
        a = await q.enqueue("a", None, (), "x")
        await q.enqueue("a", None, (), "x")
        await q.enqueue("b")
        await q.enqueue("b", None, [a])  # blocked
        await q.insert_worker("", "x86_64")
        await q.dequeue(["b"], timeout=0)
        assert value(m, "actorq_jobs_ready", type="a", channel="x") == 2
        assert value(m, "actorq_jobs_ready", type="b", channel="") == 0
        assert value(m, "actorq_jobs", state="pending") == 3
        assert value(m, "actorq_jobs", state="running") == 1
        assert value(m, "actorq_jobs_blocked") == 1
        assert value(m, "actorq_workers") == 1
        assert value(m, "actorq_scheduler_requests_total") == q._scheduler.messages
        assert value(m, "actorq_scheduler_batches_total") == q._scheduler.batches > 0

        # a scrape from another thread reads the state in the queue's thread
        text = (await trio.to_thread.run_sync(exposition, m.registry)).decode()
        assert 'actorq_jobs_ready{channel="x",type="a"} 2.0' in text
    # once closed, the queue's gauges are gone; counters stay
    assert m.registry.get_sample_value("actorq_jobs", {"state": "pending"}) is None
    assert value(m, "actorq_jobs_enqueued_total", type="a", channel="x") == 2


def gauges(m: QueueMetrics) -> dict[str, Any]:
    """The gauges as a scrape sees them."""
    ready: dict[tuple[str, str], float] = {}
    for family in m.registry.collect():
        if family.name == "actorq_jobs_ready":
            for sample in family.samples:
                if sample.value:
                    ready[sample.labels["type"], sample.labels["channel"]] = sample.value
    return {
        "jobs": {state.value: value(m, "actorq_jobs", state=state.value) for state in JobState},
        "ready": ready,
        "blocked": value(m, "actorq_jobs_blocked"),
        "waiting": value(m, "actorq_dequeuers_waiting"),
        "workers": value(m, "actorq_workers"),
    }


def expected(stats: actorq.QueueStats) -> dict[str, Any]:
    return {
        "jobs": {state.value: getattr(stats, state.value) for state in JobState},
        "ready": {(t, c): n for t, c, n in stats.ready},
        "blocked": stats.blocked,
        "waiting": stats.waiting_dequeuers,
        "workers": stats.workers,
    }


async def test_gauges_follow_the_events_from_a_restored_start(autojump_clock: MockClock) -> None:
    store = actorq.MemoryStore()
    async with actorq.open_queue(store, maintenance=None) as q:  # nobody observes this one
        old_root = await q.enqueue("a", None, (), "x")
        await q.enqueue("b", None, [old_root])
        running = await q.enqueue("c")
        await q.dequeue_by_id(running)
        old_worker = await q.insert_worker("", "arm64")
        await q.cancel_job(await q.enqueue("d"))

    m = QueueMetrics()
    async with actorq.open_queue(store, metrics=m, maintenance=None) as q:

        async def check(step: str) -> None:
            stats = await q.stats()  # its batch is published before it returns
            assert gauges(m) == expected(stats), step

        await check("seeded from the restored state")
        worker = await q.insert_worker("", "x86_64")
        await check("worker registered")
        await q.finish_job(running, None)
        await check("a restored running job finished")
        job = await q.dequeue(["a"], ["x"], timeout=0, worker_id=worker)
        await check("started")
        assert await q.requeue_or_finish_job(job.id, 2, None)
        await check("requeued")
        job = await q.dequeue(["a"], ["x"], timeout=0)
        await q.finish_job(job.id, {"error": "no"})
        await check("finished: the dependent is ready")
        blocked_root = await q.enqueue("e")
        blocked = await q.enqueue("f", None, [blocked_root])
        await check("enqueued, one blocked")
        await q.fail_job(blocked, {"error": "given up"})
        await check("a blocked job failed before starting")
        await q.dequeue_by_id(blocked_root)
        await q.enqueue("g", None, [blocked_root])
        await q.cancel_job(blocked_root)
        await check("a running job canceled with its dependent")
        await q.delete_job(blocked)
        await check("deleted")
        with pytest.raises(actorq.DequeueTimeoutError):
            await q.dequeue(["none"], timeout=1)
        await check("a dequeuer that timed out")

        async with trio.open_nursery() as nursery:
            got: list[actorq.DequeuedJob] = []

            async def dequeuer() -> None:
                got.append(await q.dequeue(["h"]))

            nursery.start_soon(dequeuer)
            nursery.start_soon(dequeuer)
            await trio.testing.wait_all_tasks_blocked()
            await check("two dequeuers parked")
            assert value(m, "actorq_dequeuers_waiting") == 2
            await q.enqueue("h")
            await q.enqueue("h")
        await check("both served")
        q.release(got[0])
        await q.delete_worker(old_worker)
        await check("given back, a worker removed")
        assert value(m, "actorq_jobs_ready", type="h", channel="") == 1


async def test_gauges_are_an_immutable_snapshot(autojump_clock: MockClock) -> None:
    m = QueueMetrics()
    assert m.gauges is None
    async with actorq.open_queue(metrics=m) as q:
        before = m.gauges
        assert before is not None
        assert before.ready == ()
        await q.enqueue("t")
        after = m.gauges
        assert after is not None
        assert after is not before
        assert before.ready == ()
        assert before.pending == 0
        assert after.ready == ((("t", ""), 1),)
        assert after.pending == 1
    assert m.gauges is None


async def test_store_commit_latency_and_batch_size(autojump_clock: MockClock) -> None:
    m = QueueMetrics()
    store = actorq.MemoryStore()
    async with actorq.open_queue(store, metrics=m) as q, trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(q.enqueue, "t", i)
    assert value(m, "actorq_store_commit_seconds_count") == store.commits
    assert value(m, "actorq_store_commit_requests_sum") >= 10


async def test_each_queue_has_its_own_registry(autojump_clock: MockClock) -> None:
    m1, m2 = QueueMetrics(), QueueMetrics()
    async with actorq.open_queue(metrics=m1) as q1, actorq.open_queue(metrics=m2) as q2:
        await q1.enqueue("t")
        await q2.enqueue("t")
        await q2.enqueue("t")
        with pytest.raises(RuntimeError):
            async with actorq.open_queue(metrics=m1):
                pass
    assert value(m1, "actorq_jobs_enqueued_total", **by_type("t")) == 1
    assert value(m2, "actorq_jobs_enqueued_total", **by_type("t")) == 2


async def test_http_exporter() -> None:
    # real sockets, real time (no MockClock): the exporter is a thread
    m = QueueMetrics()
    async with actorq.open_queue(metrics=m) as q:
        await q.enqueue("t", None, (), "c")
        server, _ = start_http_server(0, m.registry)
        try:
            url = f"http://127.0.0.1:{server.server_port}/metrics"

            def fetch() -> str:
                with urllib.request.urlopen(url, timeout=10) as response:
                    body: bytes = response.read()
                    return body.decode()

            text = await trio.to_thread.run_sync(fetch)
        finally:
            server.shutdown()
            server.server_close()
    assert 'actorq_jobs_enqueued_total{channel="c",type="t"} 1.0' in text
    assert 'actorq_jobs_ready{channel="c",type="t"} 1.0' in text


def test_error_results_are_recognised() -> None:
    assert is_error_result('{"error":{"type":"E"}}')
    assert is_error_result('{"error": "failed"}')
    assert not is_error_result('{"error":null,"ok":1}')
    assert not is_error_result('"error"')
    assert not is_error_result('{"result":"fine"}')


# ------------------------------------------------------------------ logs


def fields(record: logging.LogRecord) -> dict[str, Any]:
    keys = ("event", "job_id", "job_type", "channel", "worker_id")
    return {k: getattr(record, k, None) for k in keys}


async def test_state_changes_are_logged_with_fields(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actorq.jobs")
    caplog.set_level(logging.INFO, logger="actorq.workers")
    async with actorq.open_queue() as q:
        worker = Worker(q, channels=["c"])

        @worker.handler("build")
        async def build(job: actorq.Job) -> str:
            if job.args == "fail":
                raise RuntimeError("no")
            return "ok"

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            worker_id = str(worker.id)
            good = await q.enqueue("build", "fine", (), "c")
            bad = await q.enqueue("build", "fail", (), "c")
            await trio.sleep(10)
            assert (await q.job_status(bad)).state is JobState.FAILED
            worker.shutdown()

    records = [fields(r) for r in caplog.records if r.name == "actorq.jobs"]
    g, b = str(good), str(bad)
    assert {"event": "job_enqueued", "job_id": g, "job_type": "build", "channel": "c",
            "worker_id": None} in records  # fmt: skip
    assert {"event": "job_started", "job_id": g, "job_type": "build", "channel": "c",
            "worker_id": worker_id} in records  # fmt: skip
    assert {"event": "job_finished", "job_id": g, "job_type": "build", "channel": "c",
            "worker_id": worker_id} in records  # fmt: skip
    assert {"event": "job_failed", "job_id": b, "job_type": "build", "channel": "c",
            "worker_id": worker_id} in records  # fmt: skip
    worker_events = [
        getattr(r, "event", None) for r in caplog.records if r.name == "actorq.workers"
    ]
    assert worker_events == ["worker_registered", "worker_removed"]


def enqueue_and_take_events(state: QueueState) -> list[Any]:
    state.enqueue("t", "null")
    return state.take_events()


async def test_no_events_when_nobody_listens(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="actorq.jobs")
    caplog.set_level(logging.WARNING, logger="actorq.workers")
    async with actorq.open_queue() as q:  # no metrics, nobody listening: no events
        assert await q._call(enqueue_and_take_events) == []
    caplog.set_level(logging.INFO, logger="actorq.workers")
    async with actorq.open_queue() as q:  # a log listens
        assert len(await q._call(enqueue_and_take_events)) == 1
    caplog.set_level(logging.WARNING, logger="actorq.workers")
    async with actorq.open_queue(metrics=QueueMetrics()) as q:
        assert len(await q._call(enqueue_and_take_events)) == 1


async def test_other_changes_are_logged(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="actorq.jobs")
    async with actorq.open_queue(maintenance=None) as q:
        worker = await q.insert_worker("", "x86_64")
        root = await q.enqueue("t")
        child = await q.enqueue("u", None, [root])
        job = await q.dequeue(["t"], timeout=0, worker_id=worker)
        q.release(job)
        job = await q.dequeue(["t"], timeout=0, worker_id=worker)
        assert await q.requeue_or_finish_job(job.id, 1, None)
        job = await q.dequeue(["t"], timeout=0, worker_id=worker)
        await q.finish_job(job.id, None)  # the child becomes ready
        await q.cancel_job(child)
        await q.delete_job(child)  # and the root it depends on
        never = await q.enqueue("v")
        await q.fail_job(never, {"error": "no"})

    records = [fields(r) for r in caplog.records if r.name == "actorq.jobs"]
    r, c, n, w = str(root), str(child), str(never), str(worker)
    assert [(x["event"], x["job_id"], x["worker_id"]) for x in records] == [
        ("job_enqueued", r, None),
        ("job_enqueued", c, None),
        ("job_started", r, w),
        ("job_released", r, w),
        ("job_started", r, w),
        ("job_requeued", r, w),
        ("job_started", r, w),
        ("job_finished", r, w),
        ("job_ready", c, None),
        ("job_canceled", c, None),
        ("job_deleted", c, None),
        ("job_deleted", r, None),  # the finished dependency nothing else needs
        ("job_enqueued", n, None),
        ("job_failed", n, None),
    ]
    assert {x["job_type"] for x in records if x["job_id"] == c} == {"u"}
