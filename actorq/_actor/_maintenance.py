"""Scheduler-side maintenance: the heartbeat reaper, stale-worker removal, retention.

These are policies on top of the queue, not part of its rules: each pass is a
single request to the scheduler actor (:meth:`LocalQueue.call`), so a pass sees
and changes the queue atomically and never races with workers.

- The **reaper** (every ``watch_interval``) takes every running job whose last
  heartbeat is at least ``job_timeout`` old and puts it back in the queue, or,
  once it has been retried ``max_retries`` times, finishes it with a
  ``"worker stopped sending heartbeats"`` error result. This is how jobs of a
  crashed or partitioned worker, and jobs left running when a durable queue
  restarted, get done after all.
- **Worker removal** (every ``worker_watch_interval``) deletes workers whose
  status is older than ``worker_timeout``, except those that still hold jobs
  (the reaper frees those first).
- **Retention** (every ``retention_interval``, off unless ``retention`` is set)
  deletes finished or canceled job trees older than ``retention`` seconds.

Every interval runs on trio's clock, so :class:`trio.testing.MockClock` drives
them in tests.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from uuid import UUID

import attrs
import trio

from .._core import _validate as v
from .._core._errors import ActiveJobsError, JobQueueError, QueueClosedError
from .._core._json import to_json_text

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._core._state import QueueState
    from ._local import LocalQueue

__all__ = ["Maintainer", "Maintenance", "ReapedJob", "missing_heartbeat_result"]

log = logging.getLogger("actorq.maintenance")


@attrs.frozen(kw_only=True)
class Maintenance:
    """What the scheduler side does on its own, and how often. Times are in seconds.

    The defaults are upstream osbuild-composer's: a job silent for 120 s is
    requeued (checked every 30 s) and finished with an error after 2 retries;
    a worker silent for an hour is removed (checked every 5 minutes).
    ``worker_timeout=None`` keeps workers forever; ``retention=None`` (the
    default) keeps finished jobs forever.

    Raises :class:`TypeError` or :class:`ValueError` for a value that is not a
    positive number of seconds (or a non-negative ``max_retries``).
    """

    watch_interval: float = 30.0
    job_timeout: float = 120.0
    max_retries: int = 2
    worker_timeout: float | None = 3600.0
    worker_watch_interval: float = 300.0
    retention: float | None = None
    retention_interval: float = 600.0

    def __attrs_post_init__(self) -> None:
        v.check_positive_seconds(self.watch_interval, "watch_interval")
        v.check_positive_seconds(self.job_timeout, "job_timeout")
        v.check_optional_positive_seconds(self.worker_timeout, "worker_timeout")
        v.check_positive_seconds(self.worker_watch_interval, "worker_watch_interval")
        v.check_optional_positive_seconds(self.retention, "retention")
        v.check_positive_seconds(self.retention_interval, "retention_interval")
        v.check_max_retries(self.max_retries)


@attrs.frozen
class ReapedJob:
    """A job the reaper took from a silent worker: requeued, or finished with an error."""

    id: UUID
    type: str
    channel: str
    requeued: bool
    retries: int


def missing_heartbeat_result(max_retries: int) -> dict[str, object]:
    """The result a job gets when the reaper gives up on it."""
    return {
        "error": {
            "type": "MissingHeartbeat",
            "message": (
                "the worker stopped sending heartbeats, "
                f"and the job was already retried {max_retries} times"
            ),
            "traceback": None,
        }
    }


class Maintainer:
    """Runs the passes of a :class:`Maintenance` config against one in-process queue.

    ``wall`` is the queue's wall clock (job timestamps are wall-clock times);
    intervals and ages use trio's clock. Each pass method may also be called
    directly; each raises :class:`QueueClosedError` once the queue is closed.
    """

    def __init__(
        self, queue: LocalQueue, config: Maintenance, wall: Callable[[], datetime]
    ) -> None:
        self.queue = queue
        self.config = config
        self._wall = wall
        self._result_text = to_json_text(missing_heartbeat_result(config.max_retries))
        # Canceled trees carry no cancel time: they age from the first sweep that saw them.
        self._canceled_seen: dict[UUID, float] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every enabled pass on its interval until cancelled or the queue closes.

        A pass that fails unexpectedly is logged and retried on the next tick:
        maintenance must never take the queue down.
        """
        config = self.config
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._every, config.watch_interval, self.reap_jobs)
            if config.worker_timeout is not None:
                nursery.start_soon(self._every, config.worker_watch_interval, self.reap_workers)
            if config.retention is not None:
                nursery.start_soon(self._every, config.retention_interval, self.sweep)
            task_status.started()

    async def _every(self, interval: float, step: Callable[[], Awaitable[object]]) -> None:
        while True:
            await trio.sleep(interval)
            try:
                await step()
            except QueueClosedError:
                return
            except Exception:
                log.exception("maintenance pass %s failed", step.__name__)

    # ------------------------------------------------------------------ passes

    async def reap_jobs(self) -> list[ReapedJob]:
        """Requeue, or finish with an error, every running job silent for ``job_timeout``."""
        config = self.config
        text = self._result_text

        def reap(state: QueueState) -> list[ReapedJob]:
            out: list[ReapedJob] = []
            for token in state.heartbeats(config.job_timeout):
                try:
                    job_id = state.id_from_token(token)
                    status = state.job_status(job_id)
                    requeued = state.requeue_or_finish_job(
                        job_id, config.max_retries, text, failed=True
                    )
                except JobQueueError:  # moved on since heartbeats() listed it
                    continue
                out.append(ReapedJob(job_id, status.type, status.channel, requeued, status.retries))
            return out

        reaped = await self.queue._call(reap)
        for job in reaped:
            log.warning(
                "job %s (%s) lost its worker: %s",
                job.id,
                job.type,
                "requeued" if job.requeued else "failed: out of retries",
                extra={
                    "event": "job_reaped",
                    "job_id": str(job.id),
                    "job_type": job.type,
                    "channel": job.channel,
                    "requeued": job.requeued,
                    "retries": job.retries,
                },
            )
        return reaped

    async def reap_workers(self) -> list[UUID]:
        """Delete workers silent for ``worker_timeout``, except those that still hold jobs."""
        timeout = self.config.worker_timeout
        if timeout is None:
            return []

        def reap(state: QueueState) -> list[UUID]:
            removed: list[UUID] = []
            for worker in state.workers(older_than=timeout):
                try:
                    state.delete_worker(worker.id)
                except ActiveJobsError:  # its jobs go first, through the job reaper
                    continue
                removed.append(worker.id)
            return removed

        removed = await self.queue._call(reap)
        for worker_id in removed:
            log.info(
                "removed worker %s: no status for %s s",
                worker_id,
                timeout,
                extra={"event": "worker_reaped", "worker_id": str(worker_id)},
            )
        return removed

    async def sweep(self) -> list[UUID]:
        """Delete settled job trees older than ``retention``; return the deleted roots.

        A tree is deleted through its root (:meth:`JobQueue.delete_job`), so a
        dependency that another, younger tree still needs is kept. A tree
        holding a canceled job is deleted ``retention`` seconds after the first
        sweep that found it settled, since cancel times are not recorded.
        """
        retention = self.config.retention
        if retention is None:
            return []
        cutoff = self._wall() - timedelta(seconds=retention)
        now = trio.current_time()

        def sweep(state: QueueState) -> list[UUID]:
            seen: dict[UUID, float] = {}
            deleted: list[UUID] = []
            for root, has_canceled in state.settled_roots(cutoff):
                if has_canceled:
                    first = self._canceled_seen.get(root, now)
                    if now - first < retention:
                        seen[root] = first
                        continue
                try:
                    state.delete_job(root)
                except JobQueueError:
                    continue
                deleted.append(root)
            # keep only trees still waiting: deleted or revived ones are forgotten
            self._canceled_seen = seen
            return deleted

        deleted = await self.queue._call(sweep)
        if deleted:
            log.info(
                "retention deleted %d job trees older than %s s",
                len(deleted),
                retention,
                extra={"event": "jobs_expired", "count": len(deleted)},
            )
        return deleted
