"""actorq: a durable job queue for trio, run by one scheduler actor.

Jobs have a type, JSON arguments, a channel and dependencies; workers dequeue
by types and channels, hold a token while they run, heartbeat, and finish the
job with a JSON result. See :class:`JobQueue` for the full contract.
"""

from typing import TYPE_CHECKING, Any

from ._client import RemoteQueue, connect
from ._core import QueueState
from ._errors import (
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
from ._json import JSON, converter, structure
from ._local import LocalQueue, open_queue
from ._maintenance import Maintenance
from ._models import (
    DequeuedJob,
    JobInfo,
    JobState,
    JobStatus,
    JobSummary,
    QueueStats,
    WorkerInfo,
)
from ._protocol import JobQueue
from ._server import QueueServer, serve
from ._sqlite import SqliteStore
from ._store import MemoryStore, Store
from ._wire import ProtocolError
from ._worker import Job, Worker, error_result

if TYPE_CHECKING:
    from ._postgres import PostgresStore

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
        from ._postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module 'actorq' has no attribute {name!r}")
