"""Prometheus metrics and structured state-change logs for the in-process queue.

The core stays pure: :class:`ObservedState` is a :class:`QueueState` whose
public methods, after the core has applied a change, tell an :class:`Observer`
what happened. The observer counts it (if the queue has :class:`QueueMetrics`)
and logs it (logger ``actorq.jobs``, with ``extra`` fields ``event``,
``job_id``, ``job_type``, ``channel`` and ``worker_id``). The plain
:class:`QueueState` runs when neither is wanted, so they cost nothing then.

Gauges (queue depth, jobs by state, workers) are not kept up to date on every
change: they are computed from :meth:`QueueState.stats` when Prometheus
scrapes. A scrape from another thread (the HTTP exporter's) reads the state in
the queue's trio thread through :func:`trio.from_thread.run_sync`, so it never
sees the state mid-change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

import orjson
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .._core._errors import JobQueueError, WorkerNotExistError
from .._core._models import JobState, QueueStats
from .._core._records import Assignment
from .._core._state import QueueState
from ._scheduler import Scheduler

__all__ = [
    "ObservedState",
    "Observer",
    "QueueMetrics",
    "exposition",
    "instrument",
    "start_http_server",
    "state_class",
]

events = logging.getLogger("actorq.jobs")
worker_events = logging.getLogger("actorq.workers")

_LABELS = ("type", "channel")
_TIME_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
)  # fmt: skip
_COMMIT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def is_error_result(text: str) -> bool:
    """Whether a result (JSON text) is an error result: an object with a non-null ``"error"``.

    Parsed only when the text mentions ``"error"`` at all, so plain results cost
    one substring search.
    """
    if '"error"' not in text:
        return False
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and value.get("error") is not None


class QueueMetrics:
    """The Prometheus metrics of one queue, in a registry of its own.

    Pass it to :func:`actorq.open_queue` (``metrics=``) and expose
    ``registry`` (:func:`start_http_server`, :func:`exposition`). Every queue
    needs its own instance: one registry cannot hold two queues' metrics.

    Counters, by job ``type`` and ``channel`` (``_total`` appended on export):
    ``actorq_jobs_enqueued``, ``actorq_jobs_dequeued``,
    ``actorq_jobs_finished`` (every finish, failed ones included),
    ``actorq_jobs_failed`` (finished with an error result, or failed before
    starting), ``actorq_jobs_canceled``, ``actorq_jobs_requeued``.
    Histograms: ``actorq_dequeue_wait_seconds`` (how long a dequeuer waited
    for the job it got, 0 when one was ready) and ``actorq_job_run_seconds``
    (dequeue to finish), both by type and channel;
    ``actorq_store_commit_seconds`` and ``actorq_store_commit_requests``
    (requests per committed batch). Gauges, computed at scrape time:
    ``actorq_jobs{state}``, ``actorq_jobs_ready{type,channel}`` (queue depth),
    ``actorq_jobs_blocked``, ``actorq_dequeuers_waiting``, ``actorq_workers``;
    counters ``actorq_scheduler_batches`` and ``actorq_scheduler_requests``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise TypeError(f"registry must be a CollectorRegistry, not {type(registry).__name__}")
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, _LABELS, namespace="actorq", registry=r)

        self.enqueued = counter("jobs_enqueued", "Jobs enqueued.")
        self.dequeued = counter("jobs_dequeued", "Jobs handed to a dequeuer.")
        self.finished = counter("jobs_finished", "Jobs finished, with any result.")
        self.failed = counter("jobs_failed", "Jobs finished with an error result.")
        self.canceled = counter("jobs_canceled", "Jobs canceled, pending or running.")
        self.requeued = counter("jobs_requeued", "Running jobs put back in the queue.")
        self.dequeue_wait = Histogram(
            "dequeue_wait_seconds",
            "How long a dequeuer waited for the job it got.",
            _LABELS,
            namespace="actorq",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.run_time = Histogram(
            "job_run_seconds",
            "Time from dequeue to finish of a job.",
            _LABELS,
            namespace="actorq",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.commit_latency = Histogram(
            "store_commit_seconds",
            "Time to commit one batch of changes to the store.",
            namespace="actorq",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "store_commit_requests",
            "Requests whose changes one store commit carried.",
            namespace="actorq",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self._source: _Source | None = None
        r.register(_StateCollector(self))

    def observe_commit(self, seconds: float, requests: int) -> None:
        """The :attr:`Scheduler.on_commit` hook."""
        self.commit_latency.observe(seconds)
        self.batch_size.observe(requests)

    def attach(self, state: QueueState, scheduler: Scheduler) -> None:
        """Report gauges from ``state`` and ``scheduler``; call in the queue's trio thread.

        Raises :class:`RuntimeError` if these metrics already watch a queue.
        """
        if self._source is not None:
            raise RuntimeError("these QueueMetrics already belong to an open queue")
        self._source = _Source(state, scheduler, trio.lowlevel.current_trio_token())
        scheduler.on_commit = self.observe_commit

    def detach(self) -> None:
        """Stop reporting gauges (the queue closed). Counters and histograms stay."""
        if self._source is not None:
            self._source.scheduler.on_commit = None
        self._source = None


class _Source:
    __slots__ = ("scheduler", "state", "token")

    def __init__(self, state: QueueState, scheduler: Scheduler, token: trio.lowlevel.TrioToken):
        self.state = state
        self.scheduler = scheduler
        self.token = token

    def stats(self) -> QueueStats | None:
        try:
            here = trio.lowlevel.current_trio_token()
        except RuntimeError:
            here = None
        if here is self.token:
            return self.state.stats()
        try:
            return trio.from_thread.run_sync(self.state.stats, trio_token=self.token)
        except (trio.RunFinishedError, RuntimeError):
            return None  # the queue's trio run is over


class _StateCollector:
    """Gauges computed from the queue's state at scrape time."""

    def __init__(self, metrics: QueueMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        source = self._metrics._source
        if source is None:
            return []
        stats = source.stats()
        if stats is None:
            return []
        jobs, ready, blocked, waiting, workers, batches, requests = self._families()
        for state in JobState:
            jobs.add_metric([state.value], getattr(stats, state.value))
        for job_type, channel, count in stats.ready:
            ready.add_metric([job_type, channel], count)
        blocked.add_metric([], stats.blocked)
        waiting.add_metric([], stats.waiting_dequeuers)
        workers.add_metric([], stats.workers)
        batches.add_metric([], source.scheduler.batches)
        requests.add_metric([], source.scheduler.messages)
        return [jobs, ready, blocked, waiting, workers, batches, requests]

    @staticmethod
    def _families() -> tuple[Any, ...]:
        return (
            GaugeMetricFamily("actorq_jobs", "Jobs by state.", labels=["state"]),
            GaugeMetricFamily(
                "actorq_jobs_ready",
                "Pending jobs whose dependencies have finished (queue depth).",
                labels=list(_LABELS),
            ),
            GaugeMetricFamily("actorq_jobs_blocked", "Pending jobs waiting on dependencies."),
            GaugeMetricFamily("actorq_dequeuers_waiting", "Dequeue calls waiting for a job."),
            GaugeMetricFamily("actorq_workers", "Registered workers."),
            CounterMetricFamily("actorq_scheduler_batches", "Batches the scheduler applied."),
            CounterMetricFamily("actorq_scheduler_requests", "Requests the scheduler applied."),
        )


# ------------------------------------------------------------------ events


class Observer:
    """Told of every change an :class:`ObservedState` applies; counts and logs it.

    Runs inside the scheduler actor, synchronously, after the core applied the
    change: it must be quick and must not raise.
    """

    def __init__(self, metrics: QueueMetrics | None, monotonic: Callable[[], float]) -> None:
        self.metrics = metrics
        self._now = monotonic
        # job id -> (type, channel, worker id, monotonic start); jobs restored as
        # running are missing, and get no run time
        self._running: dict[UUID, tuple[str, str, UUID | None, float]] = {}
        self._parked: dict[int, tuple[float, UUID | None]] = {}  # waiter -> (parked at, worker)

    def _log(self, level: int, msg: str, event: str, job_id: UUID, job_type: str, channel: str,
             worker_id: UUID | None = None) -> None:  # fmt: skip
        if events.isEnabledFor(level):
            events.log(
                level,
                msg,
                job_id,
                job_type,
                channel,
                extra={
                    "event": event,
                    "job_id": str(job_id),
                    "job_type": job_type,
                    "channel": channel,
                    "worker_id": None if worker_id is None else str(worker_id),
                },
            )

    def enqueued(self, job_id: UUID, job_type: str, channel: str) -> None:
        if self.metrics is not None:
            self.metrics.enqueued.labels(job_type, channel).inc()
        self._log(logging.INFO, "job %s (%s, channel %r) enqueued", "job_enqueued",
                  job_id, job_type, channel)  # fmt: skip

    def parked(self, waiter_id: int, worker_id: UUID | None) -> None:
        self._parked[waiter_id] = (self._now(), worker_id)

    def unparked(self, waiter_id: int) -> None:
        self._parked.pop(waiter_id, None)

    def assigned(self, got: Assignment, worker_id: UUID | None) -> None:
        """A job handed to a dequeuer that did not wait for it."""
        self._start(got, worker_id, 0.0)

    def assigned_to_waiter(self, got: Assignment, waiter_id: int) -> None:
        """A job handed to a parked dequeuer."""
        parked = self._parked.pop(waiter_id, None)
        if parked is None:
            self._start(got, None, 0.0)
        else:
            self._start(got, parked[1], self._now() - parked[0])

    def _start(self, got: Assignment, worker_id: UUID | None, waited: float) -> None:
        self._running[got.id] = (got.type, got.channel, worker_id, self._now())
        if self.metrics is not None:
            self.metrics.dequeued.labels(got.type, got.channel).inc()
            self.metrics.dequeue_wait.labels(got.type, got.channel).observe(waited)
        self._log(logging.INFO, "job %s (%s, channel %r) started", "job_started",
                  got.id, got.type, got.channel, worker_id)  # fmt: skip

    def released(self, job_id: UUID) -> None:
        got = self._running.pop(job_id, None)
        if got is not None:
            self._log(logging.DEBUG, "job %s (%s, channel %r) given back undelivered",
                      "job_released", job_id, got[0], got[1], got[2])  # fmt: skip

    def finished(self, job_id: UUID, job_type: str, channel: str, result: str) -> None:
        run = self._running.pop(job_id, None)
        failed = is_error_result(result)
        worker_id = None if run is None else run[2]
        if self.metrics is not None:
            self.metrics.finished.labels(job_type, channel).inc()
            if failed:
                self.metrics.failed.labels(job_type, channel).inc()
            if run is not None:
                self.metrics.run_time.labels(job_type, channel).observe(self._now() - run[3])
        if failed:
            self._log(logging.INFO, "job %s (%s, channel %r) failed", "job_failed",
                      job_id, job_type, channel, worker_id)  # fmt: skip
        else:
            self._log(logging.INFO, "job %s (%s, channel %r) finished", "job_finished",
                      job_id, job_type, channel, worker_id)  # fmt: skip

    def failed_unstarted(self, job_id: UUID, job_type: str, channel: str) -> None:
        if self.metrics is not None:
            self.metrics.finished.labels(job_type, channel).inc()
            self.metrics.failed.labels(job_type, channel).inc()
        self._log(logging.INFO, "job %s (%s, channel %r) failed before it started",
                  "job_failed", job_id, job_type, channel)  # fmt: skip

    def requeued(self, job_id: UUID, job_type: str, channel: str) -> None:
        run = self._running.pop(job_id, None)
        if self.metrics is not None:
            self.metrics.requeued.labels(job_type, channel).inc()
        self._log(logging.INFO, "job %s (%s, channel %r) requeued", "job_requeued",
                  job_id, job_type, channel, None if run is None else run[2])  # fmt: skip

    def canceled(self, job_id: UUID, job_type: str, channel: str) -> None:
        run = self._running.pop(job_id, None)
        if self.metrics is not None:
            self.metrics.canceled.labels(job_type, channel).inc()
        self._log(logging.INFO, "job %s (%s, channel %r) canceled", "job_canceled",
                  job_id, job_type, channel, None if run is None else run[2])  # fmt: skip

    def deleted(self, job_id: UUID) -> None:
        if events.isEnabledFor(logging.DEBUG):
            events.debug(
                "job %s deleted", job_id, extra={"event": "job_deleted", "job_id": str(job_id)}
            )

    def worker_registered(self, worker_id: UUID, channel: str, arch: str) -> None:
        worker_events.info(
            "worker %s registered (channel %r, %s)",
            worker_id,
            channel,
            arch,
            extra={
                "event": "worker_registered",
                "worker_id": str(worker_id),
                "channel": channel,
                "arch": arch,
            },
        )

    def worker_deleted(self, worker_id: UUID) -> None:
        worker_events.info(
            "worker %s removed",
            worker_id,
            extra={"event": "worker_removed", "worker_id": str(worker_id)},
        )


class ObservedState(QueueState):
    """A :class:`QueueState` that reports every applied change to :attr:`observer`.

    It overrides public methods only, and only to report after the core's own
    method returned: the rules, checks and errors are the core's, unchanged.
    """

    observer: Observer | None = None

    def enqueue(
        self, job_type: str, args: str, dependencies: Iterable[UUID] = (), channel: str = ""
    ) -> UUID:
        job_id = super().enqueue(job_type, args, dependencies, channel)
        if self.observer is not None:
            self.observer.enqueued(job_id, job_type, channel)
        return job_id

    def dequeue(
        self,
        job_types: tuple[str, ...],
        channels: tuple[str, ...] | None,
        worker_id: UUID | None = None,
    ) -> Assignment | None:
        # add_waiter() serves a ready job through this method, so it is counted here
        got = super().dequeue(job_types, channels, worker_id)
        if got is not None and self.observer is not None:
            self.observer.assigned(got, worker_id)
        return got

    def add_waiter(
        self,
        job_types: tuple[str, ...],
        channels: tuple[str, ...] | None,
        worker_id: UUID | None = None,
    ) -> Assignment | int:
        got = super().add_waiter(job_types, channels, worker_id)
        if isinstance(got, int) and self.observer is not None:
            self.observer.parked(got, worker_id)
        return got

    def remove_waiter(self, waiter_id: int) -> bool:
        removed = super().remove_waiter(waiter_id)
        if self.observer is not None:
            self.observer.unparked(waiter_id)
        return removed

    def take_assignments(self) -> list[tuple[int, Assignment | WorkerNotExistError]]:
        out = super().take_assignments()
        if out and self.observer is not None:
            for waiter_id, got in out:
                if isinstance(got, WorkerNotExistError):
                    self.observer.unparked(waiter_id)
                else:
                    self.observer.assigned_to_waiter(got, waiter_id)
        return out

    def dequeue_by_id(self, job_id: UUID, worker_id: UUID | None = None) -> Assignment:
        got = super().dequeue_by_id(job_id, worker_id)
        if self.observer is not None:
            self.observer.assigned(got, worker_id)
        return got

    def release(self, job_id: UUID, token: UUID) -> bool:
        released = super().release(job_id, token)
        if released and self.observer is not None:
            self.observer.released(job_id)
        return released

    def finish_job(self, job_id: UUID, result: str) -> None:
        super().finish_job(job_id, result)
        if self.observer is not None:
            info = self.job(job_id)
            self.observer.finished(job_id, info.type, info.channel, result)

    def requeue_or_finish_job(self, job_id: UUID, max_retries: int, result: str) -> bool:
        requeued = super().requeue_or_finish_job(job_id, max_retries, result)
        if self.observer is not None:
            info = self.job(job_id)
            if requeued:
                self.observer.requeued(job_id, info.type, info.channel)
            else:
                self.observer.finished(job_id, info.type, info.channel, result)
        return requeued

    def fail_job(self, job_id: UUID, result: str) -> None:
        super().fail_job(job_id, result)
        if self.observer is not None:
            info = self.job(job_id)
            self.observer.failed_unstarted(job_id, info.type, info.channel)

    def cancel_job(self, job_id: UUID) -> None:
        if self.observer is None:
            super().cancel_job(job_id)
            return
        # Canceling reaches dependents too: note which jobs can still be canceled
        # (pending or running) before, and report those that were after.
        before = self._cancelable_tree(job_id)
        super().cancel_job(job_id)
        for dep_id, job_type, channel in before:
            if self.job_state(dep_id) is JobState.CANCELED:
                self.observer.canceled(dep_id, job_type, channel)

    def _cancelable_tree(self, job_id: UUID) -> list[tuple[UUID, str, str]]:
        out: list[tuple[UUID, str, str]] = []
        seen: set[UUID] = set()
        stack = [job_id]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            try:
                status = self.job_status(current)
            except JobQueueError:
                continue
            if status.canceled or status.finished is not None:
                continue
            out.append((current, status.type, status.channel))
            stack.extend(status.dependents)
        return out

    def delete_job(self, job_id: UUID) -> None:
        super().delete_job(job_id)
        if self.observer is not None:
            self.observer.deleted(job_id)

    def insert_worker(self, channel: str, arch: str) -> UUID:
        worker_id = super().insert_worker(channel, arch)
        if self.observer is not None:
            self.observer.worker_registered(worker_id, channel, arch)
        return worker_id

    def delete_worker(self, worker_id: UUID) -> None:
        super().delete_worker(worker_id)
        if self.observer is not None:
            self.observer.worker_deleted(worker_id)


# ------------------------------------------------------------------ wiring


def _observing(metrics: QueueMetrics | None) -> bool:
    return (
        metrics is not None
        or events.isEnabledFor(logging.INFO)
        or worker_events.isEnabledFor(logging.INFO)
    )


def state_class(metrics: QueueMetrics | None) -> type[QueueState]:
    """The state class :func:`actorq.open_queue` builds: observed only if anyone listens.

    State changes are observed when the queue has metrics, or when the
    ``actorq.jobs`` or ``actorq.workers`` logger is enabled for INFO as the
    queue opens; otherwise the plain core runs, at no cost.
    """
    return ObservedState if _observing(metrics) else QueueState


def instrument(
    state: QueueState, scheduler: Scheduler, metrics: QueueMetrics | None
) -> Callable[[], None]:
    """Connect ``state`` and ``scheduler`` to ``metrics`` and the event logs.

    Call in the queue's trio thread; returns the function to call when the
    queue closes.
    """
    if isinstance(state, ObservedState):
        state.observer = Observer(metrics, trio.current_time)
    if metrics is None:
        return lambda: None
    metrics.attach(state, scheduler)
    return metrics.detach


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text format, from any thread."""
    return _generate_latest(registry)


def start_http_server(
    port: int, registry: CollectorRegistry, addr: str = "127.0.0.1"
) -> tuple[Any, threading.Thread]:
    """Serve ``registry`` at ``http://addr:port/metrics`` from a daemon thread.

    Returns the server (``server.server_port`` is the port, useful with
    ``port=0``; ``server.shutdown()`` stops it) and its thread. Binds to
    localhost unless ``addr`` says otherwise: metrics name job types and
    channels, and carry no authentication.
    """
    server, thread = _start_http_server(port, addr=addr, registry=registry)
    return server, thread
