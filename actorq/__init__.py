"""actorq: a durable job queue for trio, run by one scheduler actor.

Jobs have a type, JSON arguments, a channel and dependencies; workers dequeue
by types and channels, hold a token while they run, heartbeat, and finish the
job with a JSON result. See :class:`JobQueue` for the full contract.

Every public name is loaded on first use: ``import actorq`` costs little more
than ``import trio`` would, and the websocket, database, command-line and
Prometheus libraries are imported only by the names that need them (an
in-process queue never loads a websocket library, for instance). Type
checkers and IDEs see every name through the ``TYPE_CHECKING`` imports below.
An unknown name raises :class:`AttributeError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._actor._local import LocalQueue, open_queue
    from ._actor._maintenance import Maintenance
    from ._core._errors import (
        ActiveJobsError,
        CanceledError,
        DequeueTimeoutError,
        FinishedError,
        HasDependentsError,
        JobQueueError,
        NotExistError,
        NotPendingError,
        NotRetryableError,
        NotRunningError,
        ProtocolError,
        QueueClosedError,
        RunningError,
        StoreError,
        WaitTimeoutError,
        WorkerNotExistError,
    )
    from ._core._json import JSON, converter, structure
    from ._core._models import (
        DequeuedJob,
        JobInfo,
        JobState,
        JobStatus,
        JobSummary,
        NewJob,
        QueueStats,
        ScheduleInfo,
        WorkerInfo,
    )
    from ._core._protocol import JobQueue
    from ._core._records import Changes, JobRecord, ScheduleRecord, WorkerRecord
    from ._core._streaming import JobStream, StreamingQueue
    from ._remote._blocking import BlockingQueue, connect_blocking
    from ._remote._client import RemoteQueue, connect
    from ._remote._server import QueueServer, serve
    from ._stores._base import MemoryStore, Store
    from ._stores._postgres import PostgresStore
    from ._stores._sqlite import SqliteStore
    from ._worker._backoff import Backoff
    from ._worker._job import Job, error_result
    from ._worker._worker import Worker

__version__ = "0.1.0"

# Where each public name lives, relative to this package.
_MODULES: dict[str, str] = {
    "LocalQueue": "._actor._local",
    "open_queue": "._actor._local",
    "Maintenance": "._actor._maintenance",
    "Backoff": "._worker._backoff",
    "ActiveJobsError": "._core._errors",
    "CanceledError": "._core._errors",
    "DequeueTimeoutError": "._core._errors",
    "WaitTimeoutError": "._core._errors",
    "FinishedError": "._core._errors",
    "HasDependentsError": "._core._errors",
    "JobQueueError": "._core._errors",
    "NotExistError": "._core._errors",
    "NotPendingError": "._core._errors",
    "NotRetryableError": "._core._errors",
    "NotRunningError": "._core._errors",
    "QueueClosedError": "._core._errors",
    "RunningError": "._core._errors",
    "StoreError": "._core._errors",
    "WorkerNotExistError": "._core._errors",
    "JSON": "._core._json",
    "converter": "._core._json",
    "structure": "._core._json",
    "DequeuedJob": "._core._models",
    "JobInfo": "._core._models",
    "JobState": "._core._models",
    "JobStatus": "._core._models",
    "JobSummary": "._core._models",
    "NewJob": "._core._models",
    "QueueStats": "._core._models",
    "ScheduleInfo": "._core._models",
    "WorkerInfo": "._core._models",
    "JobQueue": "._core._protocol",
    "JobStream": "._core._streaming",
    "StreamingQueue": "._core._streaming",
    "Changes": "._core._records",
    "JobRecord": "._core._records",
    "ScheduleRecord": "._core._records",
    "WorkerRecord": "._core._records",
    "RemoteQueue": "._remote._client",
    "connect": "._remote._client",
    "BlockingQueue": "._remote._blocking",
    "connect_blocking": "._remote._blocking",
    "QueueServer": "._remote._server",
    "serve": "._remote._server",
    "ProtocolError": "._core._errors",
    "MemoryStore": "._stores._base",
    "Store": "._stores._base",
    "PostgresStore": "._stores._postgres",
    "SqliteStore": "._stores._sqlite",
    "Job": "._worker._job",
    "Worker": "._worker._worker",
    "error_result": "._worker._job",
}

__all__ = [
    "JSON",
    "ActiveJobsError",
    "Backoff",
    "BlockingQueue",
    "CanceledError",
    "Changes",
    "DequeueTimeoutError",
    "DequeuedJob",
    "FinishedError",
    "HasDependentsError",
    "Job",
    "JobInfo",
    "JobQueue",
    "JobQueueError",
    "JobRecord",
    "JobState",
    "JobStatus",
    "JobStream",
    "JobSummary",
    "LocalQueue",
    "Maintenance",
    "MemoryStore",
    "NewJob",
    "NotExistError",
    "NotPendingError",
    "NotRetryableError",
    "NotRunningError",
    "PostgresStore",
    "ProtocolError",
    "QueueClosedError",
    "QueueServer",
    "QueueStats",
    "RemoteQueue",
    "RunningError",
    "ScheduleInfo",
    "ScheduleRecord",
    "SqliteStore",
    "Store",
    "StoreError",
    "StreamingQueue",
    "WaitTimeoutError",
    "Worker",
    "WorkerInfo",
    "WorkerNotExistError",
    "WorkerRecord",
    "connect",
    "connect_blocking",
    "converter",
    "error_result",
    "open_queue",
    "serve",
    "structure",
]


if not TYPE_CHECKING:
    # Hidden from type checkers, which see the imports above: a misspelt name
    # in a user's program is then an error, not Any.

    def __getattr__(name: str) -> Any:
        """Import the module that defines ``name`` and return it (PEP 562).

        The value is cached in the package's namespace, so this runs once per
        name. Errors from the import itself propagate: ``PostgresStore`` without
        psycopg installed (the ``postgres`` extra) raises :class:`ImportError`.
        """
        module = _MODULES.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
