"""The exceptions actorq raises.

Every error that describes the state of the queue (as opposed to a bad
argument, which raises :class:`TypeError` or :class:`ValueError`) is a
subclass of :class:`JobQueueError`. Each has a stable ``code``: the string that
names it on the wire, so a remote client raises the very same class.
"""

from __future__ import annotations

from typing import ClassVar


class JobQueueError(Exception):
    """Base class of every queue error."""

    code: ClassVar[str] = "job_queue_error"
    default_message: ClassVar[str] = "job queue error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)

    @property
    def message(self) -> str:
        return str(self.args[0])


class NotExistError(JobQueueError):
    """The job (or token) does not exist, or the token no longer names a running job."""

    code = "not_exist"
    default_message = "job does not exist"


class NotPendingError(JobQueueError):
    """The job is not pending: it runs, has finished, was canceled, or waits on dependencies."""

    code = "not_pending"
    default_message = "job is not pending"


class NotRunningError(JobQueueError):
    """The job is not running (it is still pending, or it has finished)."""

    code = "not_running"
    default_message = "job is not running"


class CanceledError(JobQueueError):
    """The job was canceled."""

    code = "canceled"
    default_message = "job was canceled"


class DequeueTimeoutError(JobQueueError, TimeoutError):
    """No matching job became ready before the dequeue timeout elapsed."""

    code = "dequeue_timeout"
    default_message = "dequeue timed out"


class WaitTimeoutError(JobQueueError, TimeoutError):
    """The job did not settle before the ``wait`` timeout elapsed."""

    code = "wait_timeout"
    default_message = "the job did not settle in time"


class RunningError(JobQueueError):
    """The job is running, and the operation needs a job that is not."""

    code = "running"
    default_message = "job is running"


class FinishedError(JobQueueError):
    """The job has already finished."""

    code = "finished"
    default_message = "job has already finished"


class HasDependentsError(JobQueueError):
    """The job cannot be deleted while other jobs depend on it."""

    code = "has_dependents"
    default_message = "other jobs depend on this job"


class NotRetryableError(JobQueueError):
    """The job cannot be retried now: it is pending, a dependency it needs is
    canceled, a dependency it opted out after has failed, or another job holds
    its unique key. The message says which."""

    code = "not_retryable"
    default_message = "job cannot be retried"


class WorkerNotExistError(JobQueueError):
    """The worker does not exist."""

    code = "worker_not_exist"
    default_message = "worker does not exist"


class ActiveJobsError(JobQueueError):
    """The worker still has running jobs."""

    code = "active_jobs"
    default_message = "worker has active jobs"


class QueueClosedError(JobQueueError):
    """The queue has been closed (or its connection was lost) and serves no more requests."""

    code = "closed"
    default_message = "queue is closed"


class StoreError(JobQueueError):
    """The store cannot be opened or written: corrupt, unreadable, or from a newer actorq."""

    code = "store_error"
    default_message = "store error"


class ProtocolError(JobQueueError):
    """A message broke the protocol, or the peer refused the connection.

    ``reason`` is a stable code saying what was wrong (see ``docs/protocol.md``):
    ``bad_json``, ``not_object``, ``missing_kind``, ``unknown_kind``,
    ``unexpected_kind``, ``bad_field``, ``bad_uuid``, ``oversize``, ``binary``,
    ``inexact_integer``, ``duplicate_id``, ``too_many_requests``, ``hello_expected``,
    ``unsupported_version``, ``unauthorized``, ``forbidden``, ``internal``.
    ``request_id`` is the id of the offending request when it could be read.
    """

    code = "protocol_error"
    default_message = "protocol error"

    def __init__(
        self,
        message: str | None = None,
        reason: str = "protocol_error",
        request_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.request_id = request_id


class InexactIntegerError(ProtocolError):
    """A frame holds an integer outside ``-(2**53-1) .. 2**53-1`` (reason ``inexact_integer``).

    Its ``code`` is ``type_error``: the reply a server sends for it is the
    :class:`TypeError` the in-process API raises for the same value, and a
    client raises exactly that.
    """

    code = "type_error"

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message, "inexact_integer", request_id)


ERRORS_BY_CODE: dict[str, type[JobQueueError]] = {
    cls.code: cls
    for cls in (
        JobQueueError,
        NotExistError,
        NotPendingError,
        NotRunningError,
        CanceledError,
        DequeueTimeoutError,
        WaitTimeoutError,
        RunningError,
        FinishedError,
        HasDependentsError,
        NotRetryableError,
        WorkerNotExistError,
        ActiveJobsError,
        QueueClosedError,
        StoreError,
    )
}
