"""Prometheus metrics and structured state-change logs, as subscribers to the queue's events.

The core records what changed as events (:mod:`actorq._core._events`), and
the scheduler actor hands each committed batch of them to its subscribers
(:meth:`Scheduler.subscribe`). Two subscribers live here:

- :class:`MetricsSubscriber`, made by :meth:`QueueMetrics.attach`, counts
  events into the Prometheus counters and histograms, and keeps the gauges
  (jobs by state, queue depth, workers, waiting dequeuers) up to date from the
  same events, starting from one :class:`QueueStats` taken as the queue opens.
  After each batch it publishes an immutable :class:`GaugeSnapshot`; a scrape
  from any thread (the HTTP exporter's) reads only that snapshot, never the
  queue's state.
- :class:`EventLog` logs each change to ``actorq.jobs`` (``extra`` fields
  ``event``, ``job_id``, ``job_type``, ``channel`` and ``worker_id``) or
  ``actorq.workers`` (``event``, ``worker_id``, and ``channel`` and ``arch``
  on registration).

:func:`observe` connects them to a queue: the metrics when it has any, the
log when one of those loggers is enabled for INFO as it opens. The core
records events only when one of them is wanted (:func:`wants_events`), so an
unobserved queue pays nothing for them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .._core._events import (
    Committed,
    Event,
    JobCanceled,
    JobDeleted,
    JobEnqueued,
    JobFinished,
    JobReady,
    JobReleased,
    JobRequeued,
    JobRetried,
    JobStarted,
    Phase,
    WorkerDeleted,
    WorkerSeen,
    is_error_result,
)

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from uuid import UUID

    from .._core._models import QueueStats
    from .._core._state import QueueState
    from ._scheduler import Scheduler

__all__ = [
    "CountingMetrics",
    "EventLog",
    "GaugeSnapshot",
    "JobCounter",
    "MetricsSubscriber",
    "QueueMetrics",
    "exposition",
    "is_error_result",
    "observe",
    "start_http_server",
    "wants_events",
]

job_log = logging.getLogger("actorq.jobs")
worker_log = logging.getLogger("actorq.workers")

_LABELS = ("type", "channel")
_TIME_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
)  # fmt: skip
_COMMIT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

Key = tuple[str, str]  # (job type, channel)
_PHASES = {phase: index for index, phase in enumerate(Phase)}


class QueueMetrics:
    """The Prometheus metrics of one queue, in a registry of its own.

    Pass it to :func:`actorq.open_queue` (``metrics=``) and expose
    ``registry`` (:func:`start_http_server`, :func:`exposition`). Every queue
    needs its own instance: one registry cannot hold two queues' metrics.

    Counters, by job ``type`` and ``channel`` (``_total`` appended on export):
    ``actorq_jobs_enqueued``, ``actorq_jobs_dequeued``,
    ``actorq_jobs_finished`` (every finish, failed ones included),
    ``actorq_jobs_failed`` (settled as a failure: ``fail_job``, or a finish
    that said ``failed=True``, as the worker's and the reaper's last attempts
    do; never guessed from the result), ``actorq_jobs_canceled``, ``actorq_jobs_requeued``.
    Histograms, by type and channel: ``actorq_dequeue_wait_seconds`` (how
    long a dequeuer waited for the job it got, 0 when one was ready),
    ``actorq_queue_latency_seconds`` (from a job becoming ready, that is
    enqueued with its dependencies finished, its last dependency finishing,
    requeued or given back, to its start; jobs that were ready when the queue
    was restored from its store are not counted) and ``actorq_job_run_seconds``
    (dequeue to finish); and ``actorq_store_commit_seconds`` and
    ``actorq_store_commit_requests`` (requests per committed batch). Gauges,
    while the queue is open: ``actorq_jobs{state}`` (``failed`` among them),
    ``actorq_jobs_ready{type,channel}`` (queue depth), ``actorq_jobs_blocked``,
    ``actorq_dequeuers_waiting``, ``actorq_workers``; counters
    ``actorq_scheduler_batches`` and ``actorq_scheduler_requests``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise TypeError(f"registry must be a CollectorRegistry, not {type(registry).__name__}")
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, _LABELS, namespace="actorq", registry=r)

        def timer(name: str, doc: str) -> Histogram:
            return Histogram(
                name, doc, _LABELS, namespace="actorq", buckets=_TIME_BUCKETS, registry=r
            )

        self.enqueued = counter("jobs_enqueued", "Jobs enqueued.")
        self.dequeued = counter("jobs_dequeued", "Jobs handed to a dequeuer.")
        self.finished = counter("jobs_finished", "Jobs finished, with any result.")
        self.failed = counter("jobs_failed", "Jobs settled as failures.")
        self.canceled = counter("jobs_canceled", "Jobs canceled, pending or running.")
        self.requeued = counter("jobs_requeued", "Running jobs put back in the queue.")
        self.dequeue_wait = timer(
            "dequeue_wait_seconds", "How long a dequeuer waited for the job it got."
        )
        self.queue_latency = timer(
            "queue_latency_seconds", "Time from a job becoming ready to its start."
        )
        self.run_time = timer("job_run_seconds", "Time from dequeue to finish of a job.")
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
        self._attached = False
        self._counter: JobCounter | None = None
        # Written by the queue's actor, read by scrapes from any thread: a
        # reference to an immutable value, so neither side needs a lock.
        self._snapshot: GaugeSnapshot | None = None
        r.register(_GaugeCollector(self))

    @property
    def gauges(self) -> GaugeSnapshot | None:
        """The gauges after the last published batch; ``None`` while no queue is open."""
        return self._snapshot

    def attach(
        self, stats: QueueStats, by_key: Mapping[Key, Mapping[Phase, int]] | None = None
    ) -> Callable[[Sequence[Event]], None]:
        """Start counting a queue whose state is ``stats`` now; return its event subscriber.

        ``by_key`` is the queue's jobs per ``(type, channel)`` and phase now
        (``QueueState.phase_counts()``), from which :meth:`job_counts` follows;
        without it those counts start at zero. Call where nothing can change
        the queue between taking them and subscribing (before its actor
        starts). Raises :class:`RuntimeError` if these metrics already belong
        to an open queue.
        """
        if self._attached:
            raise RuntimeError("these QueueMetrics already belong to an open queue")
        self._attached = True
        counter = self._counter = JobCounter(by_key or {})
        gauges = MetricsSubscriber(self, stats)

        def both(events: Sequence[Event]) -> None:
            gauges(events)
            counter(events)

        return both

    def detach(self) -> None:
        """The queue closed: drop its gauges and counts. Counters and histograms stay."""
        self._attached = False
        self._snapshot = None
        self._counter = None

    def job_counts(self) -> dict[Key, dict[Phase, int]] | None:
        """Jobs per ``(type, channel)`` and phase after the last published batch.

        A copy, made on demand (one entry per key with jobs), so the queue pays
        nothing for it between reads; ``None`` while no queue is open. Call it
        from the queue's own trio thread: the counts change in its actor.
        """
        counter = self._counter
        return None if counter is None else counter.job_counts()

    def job_totals(self) -> dict[Key, tuple[int, int, int, float]] | None:
        """Per ``(type, channel)`` since the queue opened: jobs finished (failed ones
        included), jobs failed, jobs started with a known queue latency, and the
        sum of those latencies in seconds. A copy made on demand; ``None`` while
        no queue is open. Call it from the queue's own trio thread."""
        counter = self._counter
        return None if counter is None else counter.totals()


class GaugeSnapshot(NamedTuple):
    """The gauges of one open queue at one moment; immutable, so any thread may read it.

    Job counts by state (``pending`` includes ``blocked``); ``ready`` is the
    queue depth as ``((type, channel), count)`` pairs, a pair staying at 0
    once its key had ready jobs. A named tuple: one is made per batch.
    """

    pending: int
    running: int
    finished: int
    canceled: int
    blocked: int
    ready: tuple[tuple[Key, int], ...]
    waiting: int
    workers: int
    batches: int
    requests: int
    failed: int = 0


class _Children(dict[Key, Any]):
    """The children of one labelled metric by (type, channel), made on first use.

    ``labels()`` validates and locks on every call; the cached child is one
    dict lookup.
    """

    def __init__(self, metric: Counter | Histogram) -> None:
        super().__init__()
        self._metric = metric

    def __missing__(self, key: Key) -> Any:
        child = self[key] = self._metric.labels(*key)
        return child


class MetricsSubscriber:
    """Counts a queue's events into its :class:`QueueMetrics`, and keeps its gauges.

    A :data:`~actorq._actor._scheduler.Subscriber`: called in the actor's task
    with each committed batch. It keeps counts per job phase and per
    ``(type, channel)``, never per job, and publishes a new
    :class:`GaugeSnapshot` after each batch; copying the queue depth costs
    one tuple of its ``(type, channel)`` keys, only after a batch that
    changed it.
    """

    def __init__(self, metrics: QueueMetrics, stats: QueueStats) -> None:
        self._m = metrics
        self._enqueued = _Children(metrics.enqueued)
        self._dequeued = _Children(metrics.dequeued)
        self._finished_jobs = _Children(metrics.finished)
        self._failed = _Children(metrics.failed)
        self._canceled_jobs = _Children(metrics.canceled)
        self._requeued = _Children(metrics.requeued)
        self._dequeue_wait = _Children(metrics.dequeue_wait)
        self._queue_latency = _Children(metrics.queue_latency)
        self._run_time = _Children(metrics.run_time)
        self._blocked = stats.blocked
        self._running = stats.running
        self._finished = stats.finished
        self._failed_count = stats.failed
        self._canceled = stats.canceled
        self._ready: dict[Key, int] = {(t, c): n for t, c, n in stats.ready}
        self._ready_count = stats.pending - stats.blocked
        self._ready_rows: tuple[tuple[Key, int], ...] = ()
        self._ready_changed = True
        self._workers = stats.workers
        self._waiting = stats.waiting_dequeuers
        self._batches = 0
        self._requests = 0
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            JobEnqueued: self._on_enqueued,
            JobReady: self._on_ready,
            JobStarted: self._on_started,
            JobFinished: self._on_finished,
            JobRequeued: self._on_requeued,
            JobReleased: self._on_released,
            JobCanceled: self._on_canceled,
            JobRetried: self._on_retried,
            JobDeleted: self._on_deleted,
            WorkerSeen: self._on_worker_seen,
            WorkerDeleted: self._on_worker_deleted,
            Committed: self._on_committed,
        }
        self._publish()

    def __call__(self, events: Sequence[Event]) -> None:
        handlers = self._handlers
        for event in events:
            handlers[type(event)](event)
        self._publish()

    def _publish(self) -> None:
        if self._ready_changed:
            self._ready_rows = tuple(self._ready.items())
            self._ready_changed = False
        self._m._snapshot = GaugeSnapshot(
            self._blocked + self._ready_count,
            self._running,
            self._finished,
            self._canceled,
            self._blocked,
            self._ready_rows,
            self._waiting,
            self._workers,
            self._batches,
            self._requests,
            self._failed_count,
        )

    def _add_ready(self, key: Key) -> None:
        ready = self._ready
        ready[key] = ready.get(key, 0) + 1
        self._ready_count += 1
        self._ready_changed = True

    def _leave(self, key: Key, phase: Phase) -> None:
        if phase is Phase.READY:
            self._ready[key] -= 1
            self._ready_count -= 1
            self._ready_changed = True
        elif phase is Phase.RUNNING:
            self._running -= 1
        elif phase is Phase.BLOCKED:
            self._blocked -= 1
        elif phase is Phase.FINISHED:
            self._finished -= 1
        elif phase is Phase.FAILED:
            self._failed_count -= 1
        else:
            self._canceled -= 1

    def _on_enqueued(self, e: JobEnqueued) -> None:
        key = (e.job_type, e.channel)
        self._enqueued[key].inc()
        if e.ready:
            self._add_ready(key)
        else:
            self._blocked += 1

    def _on_ready(self, e: JobReady) -> None:
        self._blocked -= 1
        self._add_ready((e.job_type, e.channel))

    def _on_started(self, e: JobStarted) -> None:
        key = (e.job_type, e.channel)
        self._dequeued[key].inc()
        self._dequeue_wait[key].observe(e.dequeue_wait)
        if e.waited is not None:
            self._queue_latency[key].observe(e.waited)
        self._leave(key, Phase.READY)
        self._running += 1

    def _on_finished(self, e: JobFinished) -> None:
        key = (e.job_type, e.channel)
        self._finished_jobs[key].inc()
        if e.error:
            self._failed[key].inc()
        if e.ran is not None:
            self._run_time[key].observe(e.ran)
        self._leave(key, e.before)
        if e.error:
            self._failed_count += 1
        else:
            self._finished += 1

    def _on_requeued(self, e: JobRequeued) -> None:
        key = (e.job_type, e.channel)
        self._requeued[key].inc()
        self._running -= 1
        self._add_ready(key)

    def _on_released(self, e: JobReleased) -> None:
        self._running -= 1
        self._add_ready((e.job_type, e.channel))

    def _on_canceled(self, e: JobCanceled) -> None:
        key = (e.job_type, e.channel)
        self._canceled_jobs[key].inc()
        self._leave(key, e.before)
        self._canceled += 1

    def _on_deleted(self, e: JobDeleted) -> None:
        self._leave((e.job_type, e.channel), e.phase)

    def _on_retried(self, e: JobRetried) -> None:
        key = (e.job_type, e.channel)
        self._leave(key, e.before)
        if e.ready:
            self._add_ready(key)
        else:
            self._blocked += 1

    def _on_worker_seen(self, e: WorkerSeen) -> None:
        if e.new:
            self._workers += 1

    def _on_worker_deleted(self, e: WorkerDeleted) -> None:
        self._workers -= 1

    def _on_committed(self, e: Committed) -> None:
        if e.requests:
            self._batches += 1
            self._requests += e.requests
        self._waiting = e.waiting
        if e.seconds is not None:
            self._m.commit_latency.observe(e.seconds)
            self._m.batch_size.observe(e.requests)


class _Dispatcher:
    """A subscriber that hands each event to its handler by type; events of
    other types are ignored."""

    _handlers: dict[type[Any], Callable[[Any], None]]

    def __call__(self, events: Sequence[Event]) -> None:
        handlers = self._handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)


class JobCounter(_Dispatcher):
    """Jobs per ``(type, channel)`` and phase, and per ``(type, channel)`` totals of
    finishes, failures and queue latency, kept from a queue's events.

    A :data:`~actorq._actor._scheduler.Subscriber`: a dict lookup and a few
    additions per event, no locks and no Prometheus series, so it costs the
    actor next to nothing. A key whose jobs are all deleted goes (its totals
    stay). Read it only from the queue's trio thread.
    """

    def __init__(self, by_key: Mapping[Key, Mapping[Phase, int]]) -> None:
        # one count per Phase, in the enum's order
        self._by_key: dict[Key, list[int]] = {
            key: [row.get(phase, 0) for phase in Phase] for key, row in by_key.items()
        }
        # finished, failed, started with a known latency, latency seconds
        self._totals: dict[Key, list[float]] = {}
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            JobEnqueued: self._on_enqueued,
            JobReady: self._on_ready,
            JobStarted: self._on_started,
            JobFinished: self._on_finished,
            JobRequeued: self._on_back,
            JobReleased: self._on_back,
            JobCanceled: self._on_canceled,
            JobRetried: self._on_retried,
            JobDeleted: self._on_deleted,
        }

    def job_counts(self) -> dict[Key, dict[Phase, int]]:
        """A copy: per key, the phases with jobs and how many."""
        return {
            key: {phase: n for phase, n in zip(Phase, row, strict=True) if n}
            for key, row in self._by_key.items()
        }

    def totals(self) -> dict[Key, tuple[int, int, int, float]]:
        """A copy: per key, (finished, failed, started with a latency, latency seconds)."""
        return {
            key: (int(row[0]), int(row[1]), int(row[2]), row[3])
            for key, row in self._totals.items()
        }

    def _move(self, key: Key, left: Phase | None, entered: Phase | None) -> None:
        row = self._by_key.get(key)
        if row is None:
            row = self._by_key[key] = [0] * len(_PHASES)
        if left is not None:
            row[_PHASES[left]] -= 1
        if entered is not None:
            row[_PHASES[entered]] += 1
        elif not any(row):
            del self._by_key[key]

    def _total(self, key: Key) -> list[float]:
        row = self._totals.get(key)
        if row is None:
            row = self._totals[key] = [0, 0, 0, 0.0]
        return row

    def _on_enqueued(self, e: JobEnqueued) -> None:
        self._move((e.job_type, e.channel), None, Phase.READY if e.ready else Phase.BLOCKED)

    def _on_ready(self, e: JobReady) -> None:
        self._move((e.job_type, e.channel), Phase.BLOCKED, Phase.READY)

    def _on_started(self, e: JobStarted) -> None:
        key = (e.job_type, e.channel)
        self._move(key, Phase.READY, Phase.RUNNING)
        if e.waited is not None:
            row = self._total(key)
            row[2] += 1
            row[3] += e.waited

    def _on_finished(self, e: JobFinished) -> None:
        key = (e.job_type, e.channel)
        self._move(key, e.before, Phase.FAILED if e.error else Phase.FINISHED)
        row = self._total(key)
        row[0] += 1
        if e.error:
            row[1] += 1

    def _on_back(self, e: JobRequeued | JobReleased) -> None:
        self._move((e.job_type, e.channel), Phase.RUNNING, Phase.READY)

    def _on_canceled(self, e: JobCanceled) -> None:
        self._move((e.job_type, e.channel), e.before, Phase.CANCELED)

    def _on_deleted(self, e: JobDeleted) -> None:
        self._move((e.job_type, e.channel), e.phase, None)

    def _on_retried(self, e: JobRetried) -> None:
        entered = Phase.READY if e.ready else Phase.BLOCKED
        self._move((e.job_type, e.channel), e.before, entered)


class CountingMetrics(QueueMetrics):
    """:class:`QueueMetrics` that keep only :meth:`~QueueMetrics.job_counts` and
    :meth:`~QueueMetrics.job_totals`: no Prometheus series is updated (its
    registry stays empty of values) and :attr:`~QueueMetrics.gauges` stays
    ``None``. For the web dashboard of a server that exports no metrics."""

    def attach(
        self, stats: QueueStats, by_key: Mapping[Key, Mapping[Phase, int]] | None = None
    ) -> Callable[[Sequence[Event]], None]:
        if self._attached:
            raise RuntimeError("these QueueMetrics already belong to an open queue")
        self._attached = True
        counter = self._counter = JobCounter(by_key or {})
        return counter


class _GaugeCollector:
    """Exports the latest :class:`GaugeSnapshot`; safe from any thread."""

    def __init__(self, metrics: QueueMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        snap = self._metrics._snapshot  # one read: the rest is immutable
        if snap is None:
            return []
        jobs, ready, blocked, waiting, workers, batches, requests = self._families()
        for state, count in (
            ("pending", snap.pending),
            ("running", snap.running),
            ("finished", snap.finished),
            ("failed", snap.failed),
            ("canceled", snap.canceled),
        ):
            jobs.add_metric([state], count)
        for (job_type, channel), count in snap.ready:
            ready.add_metric([job_type, channel], count)
        blocked.add_metric([], snap.blocked)
        waiting.add_metric([], snap.waiting)
        workers.add_metric([], snap.workers)
        batches.add_metric([], snap.batches)
        requests.add_metric([], snap.requests)
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


# ------------------------------------------------------------------ logs


class EventLog(_Dispatcher):
    """Logs a queue's events to ``actorq.jobs`` and ``actorq.workers``.

    A :data:`~actorq._actor._scheduler.Subscriber`. Enqueue, start, finish,
    failure, requeue, cancel and retry are logged at INFO, a job becoming ready
    (or waiting again for a retried dependency),
    being given back undelivered or deleted at DEBUG; a worker's registration
    and removal at INFO, its status reports at DEBUG. A level the logger has
    disabled costs one check per event.
    """

    def __init__(self) -> None:
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            JobEnqueued: self._enqueued,
            JobReady: self._readied,
            JobStarted: self._started,
            JobFinished: self._finished,
            JobRequeued: self._requeued,
            JobReleased: self._released,
            JobCanceled: self._canceled,
            JobRetried: self._retried,
            JobDeleted: self._deleted,
            WorkerSeen: self._worker_seen,
            WorkerDeleted: self._worker_deleted,
        }

    @staticmethod
    def _job(level: int, msg: str, event: str, job_id: UUID, job_type: str, channel: str,
             worker_id: UUID | None = None) -> None:  # fmt: skip
        if job_log.isEnabledFor(level):
            job_log.log(
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

    def _enqueued(self, e: JobEnqueued) -> None:
        self._job(logging.INFO, "job %s (%s, channel %r) enqueued", "job_enqueued",
                  e.job_id, e.job_type, e.channel)  # fmt: skip

    def _readied(self, e: JobReady) -> None:
        self._job(logging.DEBUG, "job %s (%s, channel %r) ready: its dependencies finished",
                  "job_ready", e.job_id, e.job_type, e.channel)  # fmt: skip

    def _started(self, e: JobStarted) -> None:
        self._job(logging.INFO, "job %s (%s, channel %r) started", "job_started",
                  e.job_id, e.job_type, e.channel, e.worker_id)  # fmt: skip

    def _finished(self, e: JobFinished) -> None:
        if e.before is not Phase.RUNNING:
            self._job(logging.INFO, "job %s (%s, channel %r) failed before it started",
                      "job_failed", e.job_id, e.job_type, e.channel)  # fmt: skip
        elif e.error:
            self._job(logging.INFO, "job %s (%s, channel %r) failed", "job_failed",
                      e.job_id, e.job_type, e.channel, e.worker_id)  # fmt: skip
        else:
            self._job(logging.INFO, "job %s (%s, channel %r) finished", "job_finished",
                      e.job_id, e.job_type, e.channel, e.worker_id)  # fmt: skip

    def _requeued(self, e: JobRequeued) -> None:
        self._job(logging.INFO, "job %s (%s, channel %r) requeued", "job_requeued",
                  e.job_id, e.job_type, e.channel, e.worker_id)  # fmt: skip

    def _released(self, e: JobReleased) -> None:
        self._job(logging.DEBUG, "job %s (%s, channel %r) given back undelivered",
                  "job_released", e.job_id, e.job_type, e.channel, e.worker_id)  # fmt: skip

    def _canceled(self, e: JobCanceled) -> None:
        self._job(logging.INFO, "job %s (%s, channel %r) canceled", "job_canceled",
                  e.job_id, e.job_type, e.channel, e.worker_id)  # fmt: skip

    def _retried(self, e: JobRetried) -> None:
        if e.before is Phase.READY:
            self._job(logging.DEBUG, "job %s (%s, channel %r) waits again for a retried dependency",
                      "job_blocked", e.job_id, e.job_type, e.channel)  # fmt: skip
        else:
            self._job(logging.INFO, "job %s (%s, channel %r) retried", "job_retried",
                      e.job_id, e.job_type, e.channel)  # fmt: skip

    def _deleted(self, e: JobDeleted) -> None:
        self._job(logging.DEBUG, "job %s (%s, channel %r) deleted", "job_deleted",
                  e.job_id, e.job_type, e.channel)  # fmt: skip

    @staticmethod
    def _worker_seen(e: WorkerSeen) -> None:
        if e.new:
            level, msg, name = (
                logging.INFO,
                "worker %s registered (channel %r, %s)",
                "worker_registered",
            )
        else:
            level, msg, name = (
                logging.DEBUG,
                "worker %s reported (channel %r, %s)",
                "worker_updated",
            )
        if worker_log.isEnabledFor(level):
            worker_log.log(
                level,
                msg,
                e.worker_id,
                e.channel,
                e.arch,
                extra={
                    "event": name,
                    "worker_id": str(e.worker_id),
                    "channel": e.channel,
                    "arch": e.arch,
                },
            )

    @staticmethod
    def _worker_deleted(e: WorkerDeleted) -> None:
        if worker_log.isEnabledFor(logging.INFO):
            worker_log.info(
                "worker %s removed",
                e.worker_id,
                extra={"event": "worker_removed", "worker_id": str(e.worker_id)},
            )


# ------------------------------------------------------------------ wiring


def _logs_listen() -> bool:
    return job_log.isEnabledFor(logging.INFO) or worker_log.isEnabledFor(logging.INFO)


def wants_events(metrics: QueueMetrics | None) -> bool:
    """Whether a queue opening now should record events: it has metrics, or a log listens.

    The logs listen when ``actorq.jobs`` or ``actorq.workers`` is enabled for
    INFO as the queue opens.
    """
    return metrics is not None or _logs_listen()


def observe(
    state: QueueState, scheduler: Scheduler, metrics: QueueMetrics | None
) -> Callable[[], None]:
    """Subscribe ``metrics`` and, if a log listens, the event log to ``scheduler``.

    Returns the function that undoes it. Call before the scheduler starts,
    with the state it owns: the gauges start from ``state.stats()`` taken
    here, and the first events they count are the first batch's. Raises
    :class:`RuntimeError`, subscribing nothing, if ``metrics`` already belong
    to an open queue.
    """
    undo: list[Callable[[], None]] = []
    if metrics is not None:
        undo.append(scheduler.subscribe(metrics.attach(state.stats(), state.phase_counts())))
        undo.append(metrics.detach)
    if _logs_listen():
        undo.append(scheduler.subscribe(EventLog()))

    def unobserve() -> None:
        for step in undo:
            step()

    return unobserve


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
