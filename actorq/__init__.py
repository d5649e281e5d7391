"""actorq: a durable job queue for trio, run by one scheduler actor.

Jobs have a type, JSON arguments, a channel and dependencies; workers dequeue
by types and channels, hold a token while they run, heartbeat, and finish the
job with a JSON result. See :class:`JobQueue` for the full contract.
"""

from typing import TYPE_CHECKING, Any

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
    NotRunningError,
    QueueClosedError,
    RunningError,
    StoreError,
    WorkerNotExistError,
)
from ._core._json import JSON, converter, structure
from ._core._models import (
    DequeuedJob,
    JobInfo,
    JobState,
    JobStatus,
    JobSummary,
    QueueStats,
    WorkerInfo,
)
from ._core._protocol import JobQueue
from ._core._state import QueueState
from ._remote._client import RemoteQueue, connect
from ._remote._server import QueueServer, serve
from ._remote._wire import ProtocolError
from ._stores._base import MemoryStore, Store
from ._stores._sqlite import SqliteStore
from ._worker._worker import Job, Worker, error_result

if TYPE_CHECKING:
    from ._stores._postgres import PostgresStore

__version__ = "0.1.0"

__all__ = [
    "JSON",
    "ActiveJobsError",
    "CanceledError",
    "DequeueTimeoutError",
    "DequeuedJob",
    "FinishedError",
    "HasDependentsError",
    "Job",
    "JobInfo",
    "JobQueue",
    "JobQueueError",
    "JobState",
    "JobStatus",
    "JobSummary",
    "LocalQueue",
    "Maintenance",
    "MemoryStore",
    "NotExistError",
    "NotPendingError",
    "NotRunningError",
    "PostgresStore",
    "ProtocolError",
    "QueueClosedError",
    "QueueServer",
    "QueueState",
    "QueueStats",
    "RemoteQueue",
    "RunningError",
    "SqliteStore",
    "Store",
    "StoreError",
    "Worker",
    "WorkerInfo",
    "WorkerNotExistError",
    "connect",
    "converter",
    "error_result",
    "open_queue",
    "serve",
    "structure",
]


def __getattr__(name: str) -> Any:
    # PostgresStore needs psycopg (the "postgres" extra), which takes long to
    # import: load it on first use, so that "import actorq" never does.
    if name == "PostgresStore":
        from ._stores._postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module 'actorq' has no attribute {name!r}")
