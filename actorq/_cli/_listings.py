"""What ``actorq jobs`` and ``actorq workers`` read and print."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._core._models import JobSummary, WorkerInfo
    from .._core._protocol import JobQueue

__all__ = ["count_more", "job_rows", "split_workers", "worker_rows"]


async def count_more(
    queue: JobQueue,
    state: str | None,
    job_type: str | None,
    channel: str | None,
    limit: int | None,
) -> tuple[list[JobSummary], int]:
    """The first ``limit`` matching jobs (all for ``None``), and how many more match.

    One listing of ``limit + 1`` tells whether more exist. Their number comes
    from ``stats()`` when only ``state`` filters (no job is read for it); with a
    type or channel filter, or a tenant's token (which may not read stats), it
    takes a listing of every matching job.
    """
    from .._core._errors import JobQueueError
    from .._core._models import JobState

    job_state = JobState(state) if state else None
    if limit is None:
        return await queue.list_jobs(job_state, job_type, channel, None), 0
    jobs = await queue.list_jobs(job_state, job_type, channel, limit + 1)
    if len(jobs) <= limit:
        return jobs, 0
    total: object = None
    if job_type is None and channel is None:
        try:
            stats = await queue.stats()
        except JobQueueError:
            pass  # a tenant's token: counted by listing below
        else:
            total = stats.jobs if job_state is None else getattr(stats, job_state.value, None)
    if not isinstance(total, int):
        total = len(await queue.list_jobs(job_state, job_type, channel, None))
    # the calls are not one snapshot: at least the one job seen beyond the limit exists
    return jobs[:limit], max(total - limit, 1)


def job_rows(jobs: list[JobSummary]) -> list[list[str]]:
    from ._main import _time

    return [
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
        for j in jobs
    ]


async def split_workers(
    queue: JobQueue, silent_after: float
) -> tuple[list[WorkerInfo], list[WorkerInfo]]:
    """Registered workers as (live, silent): silent ones sent no status for ``silent_after`` s."""
    everyone = await queue.workers(0)
    silent_ids = {w.id for w in await queue.workers(silent_after)}
    live = [w for w in everyone if w.id not in silent_ids]
    silent = [w for w in everyone if w.id in silent_ids]
    return live, silent


def worker_rows(workers: list[WorkerInfo]) -> list[list[str]]:
    from ._main import _time

    return [[str(w.id), _channels(w), w.arch, _time(w.updated)] for w in workers]


def _channels(worker: WorkerInfo) -> str:
    # every channel it serves (a server older than protocol 3 names only the first)
    return ",".join(c or "''" for c in (worker.channels or (worker.channel,)))
