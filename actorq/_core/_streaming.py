"""The stream protocol: a standing dequeue that the queue feeds, up to a credit.

A :class:`JobStream` is what a worker runtime wants from a queue: it says
once which jobs it takes and how many it can run at once (its *credit*), and
the queue hands it matching jobs as they become ready, with no request per
job. Each finish (or :meth:`JobStream.give_credit`) frees a slot, and the
queue fills it. The in-process queue and the remote client both offer
streams (:class:`StreamingQueue`); the rest of :class:`actorq.JobQueue` keeps
its semantics beside them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from contextlib import AbstractAsyncContextManager
    from uuid import UUID

    from ._errors import JobQueueError
    from ._models import DequeuedJob

__all__ = ["JobStream", "StreamingQueue"]


class JobStream(Protocol):
    """Jobs handed to one consumer, up to its credit. Made by :meth:`StreamingQueue.open_stream`."""

    async def receive(self) -> DequeuedJob:
        """The next job handed to this stream, waiting for one if need be.

        Raises the error that ended the stream (:class:`QueueClosedError` when
        the queue or the connection closed, :class:`WorkerNotExistError` when
        its worker was deleted). Cancellation loses nothing: a job not yet
        returned stays for the next call.
        """
        ...

    def receive_nowait(self) -> DequeuedJob:
        """A job already handed over, or :class:`trio.WouldBlock`."""
        ...

    def finish(self, job: DequeuedJob, result: Any = None, *, failed: bool = False) -> None:
        """Finish ``job`` with ``result`` and free its slot. Never blocks.

        ``failed=True`` settles the job as a failure (:attr:`JobState.FAILED`).

        Raises :class:`TypeError` at once for a result that is not JSON. The
        finish itself travels in the background, batched with others; one the
        queue refuses (the job was requeued or canceled meanwhile, so the
        token is void) is reported to the stream's ``on_refused``.
        """
        ...

    def give_credit(self, slots: int = 1) -> None:
        """Free ``slots`` without finishing a job (a run that ended otherwise). Never blocks."""
        ...

    async def wait_settled(self) -> None:
        """Wait until every finish given so far has been applied by the queue
        (committed, or refused). For a worker about to deregister."""
        ...

    @property
    def credit(self) -> int:
        """The slots this stream has: jobs running plus jobs it can take now."""
        ...


@runtime_checkable
class StreamingQueue(Protocol):
    """A queue that offers :class:`JobStream` streams."""

    def open_stream(
        self,
        job_types: Sequence[str],
        channels: Sequence[str] = ("",),
        *,
        any_channel: bool = False,
        worker_id: UUID | None = None,
        credit: int = 1,
        on_revoked: Callable[[UUID, UUID, bool], None] | None = None,
        on_refused: Callable[[UUID, JobQueueError], None] | None = None,
    ) -> AbstractAsyncContextManager[JobStream]:
        """A stream of jobs of ``job_types`` in ``channels`` (every channel with
        ``any_channel``), at most ``credit`` of them outstanding at once.

        ``on_revoked(job_id, token, canceled)`` hears, as soon as the queue
        knows, of a streamed run (named by its token) that ended other than by
        this stream's finish: it was canceled (``canceled`` True), or
        requeued, reaped or released.
        ``on_refused(job_id, error)`` hears of a finish the queue refused.
        Both are called in the queue's own task and must be quick.

        Leaving the block stops the stream: jobs handed over but not yet
        received go back to their places, their tokens void; jobs received
        and not finished stay running under their tokens.
        """
        ...
