"""The :class:`actorq.JobQueue` methods, written once for every front end.

Each method turns its arguments into an operation (:mod:`._ops`) and hands it
to :meth:`QueueAPI._run`, which a front end implements: the in-process queue
runs it through the scheduler actor, the remote client sends it to a server.
Arguments and results are JSON values (or attrs classes / dataclasses,
unstructured through :data:`actorq.converter`), kept as JSON text from here
on; anything else raises :class:`TypeError` before anything is sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from . import _ops as o
from ._json import to_json_text
from ._models import NewJob

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime
    from uuid import UUID

    from ._models import (
        DequeuedJob,
        JobInfo,
        JobState,
        JobStatus,
        JobSummary,
        QueueStats,
        ScheduleInfo,
        WorkerInfo,
    )

__all__ = ["QueueAPI"]

P = TypeVar("P")


def _json(value: object, what: str) -> o.JsonText:
    return o.JsonText(to_json_text(value, what))


class QueueAPI:
    """Every :class:`actorq.JobQueue` method, in terms of :meth:`_run`."""

    __slots__ = ()

    async def _run(self, op: o.Operation[Any, P]) -> P:
        """Run ``op`` (already built from the caller's arguments) and return its result."""
        raise NotImplementedError

    async def enqueue(
        self,
        job_type: str,
        args: Any = None,
        dependencies: Iterable[UUID] = (),
        channel: str = "",
        *,
        cancel_on_failed_dependency: bool = False,
        priority: int = 0,
        delay: float | None = None,
        not_before: datetime | None = None,
        unique_key: str | None = None,
    ) -> UUID:
        deps: Any = dependencies
        op = o.Enqueue(
            job_type=job_type,
            args=_json(args, "args"),
            dependencies=deps,
            channel=channel,
            cancel_on_failed_dependency=cancel_on_failed_dependency,
            priority=priority,
            delay=delay,
            not_before=not_before,
            unique_key=unique_key,
        )
        return await self._run(op)

    async def enqueue_many(
        self, jobs: Iterable[NewJob | tuple[str, Any]], channel: str = ""
    ) -> list[UUID]:
        """Enqueue several jobs in one step: all of them, or none.

        Each job is a :class:`actorq.NewJob`, or a ``(job_type, args)`` pair
        enqueued in ``channel`` with no dependencies.
        """
        specs = []
        for index, job in enumerate(jobs):
            if isinstance(job, NewJob):
                deps: Any = job.dependencies
                spec = o.JobSpec(
                    job.job_type,
                    _json(job.args, "args"),
                    deps,
                    job.channel,
                    job.cancel_on_failed_dependency,
                )
            elif isinstance(job, tuple) and len(job) == 2:
                spec = o.JobSpec(job[0], _json(job[1], "args"), (), channel)
            else:
                raise TypeError(
                    f"job {index} must be an actorq.NewJob or a (job_type, args) pair, "
                    f"not {type(job).__name__}"
                )
            specs.append(spec)
        return await self._run(o.EnqueueMany(jobs=tuple(specs)))

    async def dequeue(
        self,
        job_types: Sequence[str],
        channels: Sequence[str] = ("",),
        *,
        timeout: float | None = None,
        worker_id: UUID | None = None,
    ) -> DequeuedJob:
        types: Any = job_types
        chans: Any = channels
        return await self._run(
            o.Dequeue(job_types=types, channels=chans, timeout=timeout, worker_id=worker_id)
        )

    async def dequeue_any_channel(
        self,
        job_types: Sequence[str],
        *,
        timeout: float | None = None,
        worker_id: UUID | None = None,
    ) -> DequeuedJob:
        types: Any = job_types
        return await self._run(
            o.Dequeue(
                job_types=types, channels=(), any_channel=True, timeout=timeout, worker_id=worker_id
            )
        )

    async def dequeue_by_id(self, job_id: UUID, *, worker_id: UUID | None = None) -> DequeuedJob:
        return await self._run(o.DequeueById(job_id=job_id, worker_id=worker_id))

    async def finish_job(self, job_id: UUID, result: Any = None, *, failed: bool = False) -> None:
        await self._run(o.FinishJob(job_id=job_id, result=_json(result, "result"), failed=failed))

    async def finish_and_dequeue(
        self,
        job_id: UUID,
        result: Any,
        job_types: Sequence[str],
        channels: Sequence[str] = ("",),
        *,
        any_channel: bool = False,
        timeout: float | None = None,
        worker_id: UUID | None = None,
        failed: bool = False,
    ) -> DequeuedJob:
        """Finish ``job_id`` with ``result`` (``failed``: as a failure), then dequeue
        the next job in the same step.

        If the finish fails its error is raised and nothing is dequeued. Any
        other outcome (a job, :class:`DequeueTimeoutError`, an error about the
        dequeue arguments, a cancellation once the request was sent) may come
        after the finish took effect.
        """
        types: Any = job_types
        chans: Any = () if any_channel else channels
        op = o.FinishAndDequeue(
            job_id=job_id,
            result=_json(result, "result"),
            failed=failed,
            job_types=types,
            channels=chans,
            any_channel=any_channel,
            timeout=timeout,
            worker_id=worker_id,
        )
        return await self._run(op)

    async def requeue_or_finish_job(
        self,
        job_id: UUID,
        max_retries: int,
        result: Any = None,
        *,
        failed: bool = False,
        delay: float | None = None,
    ) -> bool:
        return await self._run(
            o.RequeueOrFinishJob(
                job_id=job_id,
                max_retries=max_retries,
                result=_json(result, "result"),
                failed=failed,
                delay=delay,
            )
        )

    async def update_job_result(self, job_id: UUID, result: Any) -> None:
        await self._run(o.UpdateJobResult(job_id=job_id, result=_json(result, "result")))

    async def fail_job(self, job_id: UUID, result: Any) -> None:
        await self._run(o.FailJob(job_id=job_id, result=_json(result, "result")))

    async def cancel_job(self, job_id: UUID) -> None:
        await self._run(o.CancelJob(job_id=job_id))

    async def retry_job(self, job_id: UUID) -> list[UUID]:
        return await self._run(o.RetryJob(job_id=job_id))

    async def job_status(self, job_id: UUID) -> JobStatus:
        return await self._run(o.GetJobStatus(job_id=job_id))

    async def wait(self, job_id: UUID, *, timeout: float | None = None) -> JobStatus:
        return await self._run(o.WaitForJob(job_id=job_id, timeout=timeout))

    async def job(self, job_id: UUID) -> JobInfo:
        return await self._run(o.GetJob(job_id=job_id))

    async def id_from_token(self, token: UUID) -> UUID:
        return await self._run(o.IdFromToken(token=token))

    async def heartbeats(self, older_than: float) -> list[UUID]:
        return await self._run(o.GetHeartbeats(older_than=older_than))

    async def refresh_heartbeat(self, token: UUID) -> None:
        await self._run(o.RefreshHeartbeat(token=token))

    async def refresh_heartbeats(self, tokens: Iterable[UUID]) -> list[UUID]:
        """Refresh many tokens at once; return those that no longer name a running job."""
        given: Any = tokens
        return await self._run(o.RefreshHeartbeats(tokens=given))

    async def all_root_job_ids(self) -> list[UUID]:
        return await self._run(o.AllRootJobIds())

    async def delete_job(self, job_id: UUID) -> None:
        await self._run(o.DeleteJob(job_id=job_id))

    async def insert_worker(self, channel: str, arch: str, *, channels: Sequence[str] = ()) -> UUID:
        given: Any = channels
        return await self._run(o.InsertWorker(channel=channel, arch=arch, channels=given))

    async def update_worker_status(self, worker_id: UUID) -> None:
        await self._run(o.UpdateWorkerStatus(worker_id=worker_id))

    async def workers(self, older_than: float = 0.0) -> list[WorkerInfo]:
        return await self._run(o.GetWorkers(older_than=older_than))

    async def delete_worker(self, worker_id: UUID) -> None:
        await self._run(o.DeleteWorker(worker_id=worker_id))

    async def list_jobs(
        self,
        state: JobState | None = None,
        job_type: str | None = None,
        channel: str | None = None,
        limit: int | None = None,
        *,
        offset: int = 0,
        id_prefix: str = "",
        newest_first: bool = False,
    ) -> list[JobSummary]:
        return await self._run(
            o.ListJobs(
                state=state,
                job_type=job_type,
                channel=channel,
                limit=limit,
                offset=offset,
                id_prefix=id_prefix,
                newest_first=newest_first,
            )
        )

    async def stats(self) -> QueueStats:
        return await self._run(o.GetStats())

    async def schedule(
        self,
        name: str,
        cron: str,
        job_type: str,
        args: Any = None,
        channel: str = "",
        *,
        timezone: str = "UTC",
        catch_up: str = "last",
    ) -> ScheduleInfo:
        return await self._run(
            o.Schedule(
                name=name,
                cron=cron,
                job_type=job_type,
                args=_json(args, "args"),
                channel=channel,
                timezone=timezone,
                catch_up=catch_up,
            )
        )

    async def unschedule(self, name: str) -> bool:
        return await self._run(o.Unschedule(name=name))

    async def schedules(self) -> list[ScheduleInfo]:
        return await self._run(o.ListSchedules())
