"""The job as a handler sees it, and the results a worker gives failed runs."""

from __future__ import annotations

import traceback
from typing import Any
from uuid import UUID

import attrs
import cattrs

from .._core._protocol import JobQueue

__all__ = ["Job", "error_result", "message_of", "shutdown_result", "type_name"]


def type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def message_of(exc: BaseException) -> str:
    if isinstance(exc, cattrs.ClassValidationError | cattrs.IterableValidationError):
        # cattrs' own text is "While structuring X (n sub-exceptions)"; name the fields.
        return "invalid job args: " + "; ".join(cattrs.transform_error(exc))
    return str(exc)


def error_result(exc: BaseException) -> dict[str, Any]:
    """The result a job gets when its handler raises ``exc``.

    ``{"error": {"type": ..., "message": ..., "traceback": ...}}``: the
    exception's class (module-qualified unless built in), its message, and the
    formatted traceback.
    """
    return {
        "error": {
            "type": type_name(exc),
            "message": message_of(exc),
            "traceback": "".join(traceback.format_exception(exc)),
        }
    }


def timeout_result(limit: float) -> dict[str, Any]:
    """The error result of an attempt that ran past its handler's time limit."""
    return {
        "error": {
            "type": "HandlerTimeout",
            "message": f"the handler ran past its time limit of {limit:g} s and was cancelled",
            "traceback": None,
        }
    }


def shutdown_result(max_retries: int) -> dict[str, Any]:
    return {
        "error": {
            "type": "WorkerShutdown",
            "message": (
                "the worker shut down before the job finished, "
                f"and the job was already retried {max_retries} times"
            ),
            "traceback": None,
        }
    }


@attrs.define(eq=False)
class Job:
    """A job as a handler sees it.

    ``id``, ``type``, ``args`` (JSON, as enqueued), ``channel`` and
    ``dependencies`` describe the job; ``token`` authorises this run of it and
    ``worker_id`` names the worker running it.
    """

    id: UUID
    token: UUID
    type: str
    args: Any
    channel: str
    dependencies: list[UUID]
    worker_id: UUID | None
    _queue: JobQueue = attrs.field(repr=False, alias="queue")
    #: Earlier attempts of this job (``JobStatus.retries``), for a handler
    #: registered with ``retries``; 0 for other handlers (not looked up).
    retries: int = 0
    _cancel_requested: bool = attrs.field(default=False, init=False, repr=False)

    @property
    def cancel_requested(self) -> bool:
        """True once the worker has started cancelling this handler.

        Async handlers are cancelled through their cancel scope and need not
        look; a sync handler runs in a thread that cannot be interrupted, and
        may poll this to stop early.
        """
        return self._cancel_requested

    async def dependency_results(self) -> list[Any]:
        """The results of this job's dependencies, in the order of ``dependencies``.

        Each dependency has finished (the queue hands a job out only then), so
        each result is whatever its handler returned, or its error result. A
        dependency deleted meanwhile raises :class:`NotExistError`.
        """
        return [(await self._queue.job_status(dep)).result for dep in self.dependencies]

    async def update_result(self, result: Any) -> None:
        """Store a partial result (progress, say) without finishing the job."""
        await self._queue.update_job_result(self.id, result)
