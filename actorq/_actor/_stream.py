"""The consumer's side of a job stream, and the in-process stream.

:class:`JobBuffer` holds the jobs a queue handed to a stream until the
consumer takes them, and turns finishes into batched settle messages; the
in-process :class:`LocalJobStream` and the remote client's stream are built
on it. See :mod:`actorq._core._streaming` for the contract.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from .._core import _validate as v
from .._core._errors import JobQueueError, QueueClosedError
from .._core._json import to_json_text
from .._core._operation import NULL, JsonText, Scope, WaitingOperation, dequeued
from .._core._ops import FinishJob
from .._core._records import Assignment
from ._scheduler import Call, Callback, Release, Reply, Settle, Subscription, Unsubscribe

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from uuid import UUID

    import outcome

    from .._core._models import DequeuedJob
    from ._scheduler import Scheduler

__all__ = ["JobBuffer", "LocalJobStream", "finish_fields", "finish_op", "handle_of"]

log = logging.getLogger("actorq.stream")


def finish_op(job: DequeuedJob, result: Any, failed: bool = False) -> FinishJob:
    """The finish of ``job``'s run, under its token; :class:`TypeError` for a non-JSON result."""
    text, failed = finish_fields(result, failed)
    return FinishJob(job_id=job.id, token=job.token, result=text, failed=failed)


def finish_fields(result: Any, failed: bool = False) -> tuple[JsonText, bool]:
    """A finish's result as JSON text and its checked ``failed`` flag.

    :class:`TypeError` for a result JSON cannot carry or a ``failed`` that is
    not a bool. The common finish (no result, not failed) costs nothing.
    """
    if result is None and failed is False:
        return NULL, False
    return JsonText(to_json_text(result, "result")), v.check_bool(failed, "failed")


def check_credit(credit: object) -> int:
    return v.check_int(credit, "credit", minimum=1)


class JobBuffer:
    """Jobs handed over and not yet received, and the error that ended the stream.

    Written by the side that receives pushes (the actor, or a connection's
    reader), read by the consumer's tasks; both run in one trio thread.
    """

    def __init__(self, credit: int) -> None:
        self._jobs: deque[DequeuedJob] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._ended: JobQueueError | None = None
        self._credit = credit
        self._consumer: Callable[[DequeuedJob], bool] | None = None

    @property
    def credit(self) -> int:
        return self._credit

    @property
    def ended(self) -> bool:
        return self._ended is not None

    def _take(self, jobs: list[DequeuedJob]) -> None:
        consumer = self._consumer
        if consumer is not None and not self._jobs:
            # Straight to the consumer, in the pushing task: a job starts with
            # no wake-up of a receiving task in between. One it cannot take
            # waits here, for receive() or to go back when the stream stops.
            for index, job in enumerate(jobs):
                if not consumer(job):
                    jobs = jobs[index:]
                    break
            else:
                return
        self._jobs.extend(jobs)
        self._lot.unpark_all()

    async def consume(self, consumer: Callable[[DequeuedJob], bool]) -> NoReturn:
        """Hand every job to ``consumer`` as it arrives, until the stream ends.

        For a consumer that only starts a task per job (the :class:`Worker`):
        ``consumer(job)`` is called synchronously in whichever task delivers
        the push (a connection's reader, or the actor in-process), must not
        block, and returns False if it cannot take the job (which then waits
        to be received, or goes back when the stream stops). Jobs received
        meanwhile are handed over first. Raises the error that ends the
        stream, as :meth:`receive` does; cancelling it stops the hand-over,
        and later jobs wait to be received again.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._consumer = consumer
        try:
            while True:
                while self._jobs:
                    if not consumer(self._jobs[0]):
                        break
                    self._jobs.popleft()
                if self._ended is not None:
                    self._raise_end()
                await self._lot.park()
        finally:
            self._consumer = None

    def _end(self, error: JobQueueError) -> None:
        if self._ended is None:
            self._ended = error
        self._lot.unpark_all()

    def _raise_end(self) -> None:
        error = self._ended
        assert error is not None
        # a fresh exception for each raise: one instance raised twice grows a traceback
        raise type(error)(error.message)

    def receive_nowait(self) -> DequeuedJob:
        if self._jobs:
            return self._jobs.popleft()
        if self._ended is not None:
            self._raise_end()
        raise trio.WouldBlock

    async def receive(self) -> DequeuedJob:
        await trio.lowlevel.checkpoint_if_cancelled()
        jobs = self._jobs
        if jobs:
            job = jobs.popleft()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return job
        while not jobs:
            if self._ended is not None:
                self._raise_end()
            await self._lot.park()
        # Parking was this call's schedule point, as in trio's own channels: a
        # second one would cost the consumer a scheduler pass per wake-up.
        return jobs.popleft()

    def _take_unreceived(self) -> list[DequeuedJob]:
        jobs = list(self._jobs)
        self._jobs.clear()
        return jobs


class LocalJobStream(Subscription, JobBuffer):
    """A stream served by the scheduler actor of this trio run (:meth:`LocalQueue.open_stream`)."""

    def __init__(
        self,
        scheduler: Scheduler,
        op: WaitingOperation,
        credit: int,
        scope: Scope,
        on_revoked: Callable[[UUID, UUID, bool], None] | None,
        on_refused: Callable[[UUID, JobQueueError], None] | None,
    ) -> None:
        Subscription.__init__(self, op, credit, scope)
        JobBuffer.__init__(self, credit)
        self._scheduler = scheduler
        self._on_revoked = on_revoked
        self._on_refused = on_refused
        self._stopped = False

    # ------------------------------------------------------------ actor side

    def push(self, jobs: list[Assignment]) -> bool:
        if self._stopped:
            return False
        self._take([dequeued(got) for got in jobs])
        return True

    def revoke(self, runs: list[tuple[UUID, UUID, bool]]) -> None:
        if self._on_revoked is not None:
            for job_id, token, canceled in runs:
                self._on_revoked(job_id, token, canceled)

    def end(self, error: JobQueueError) -> None:
        self._end(error)

    # ------------------------------------------------------------ consumer side

    def finish(self, job: DequeuedJob, result: Any = None, *, failed: bool = False) -> None:
        op = finish_op(job, result, failed)
        self._settle((op,), 1)

    def give_credit(self, slots: int = 1) -> None:
        self._settle((), v.check_int(slots, "slots", minimum=1))

    def _settle(self, finishes: Sequence[FinishJob], credit: int) -> None:
        reply = None
        if finishes and self._on_refused is not None:
            reply = Callback(functools.partial(self._refused, finishes))
        try:
            self._scheduler.post_nowait(Settle(self, finishes, credit, reply))
        except QueueClosedError:
            self._end(QueueClosedError())

    def _refused(self, finishes: Sequence[FinishJob], got: outcome.Outcome[Any]) -> bool:
        assert self._on_refused is not None
        try:
            refused: list[tuple[int, JobQueueError]] = got.unwrap()
        except JobQueueError as exc:  # the queue closed before the finishes were committed
            refused = [(index, exc) for index in range(len(finishes))]
        for index, error in refused:
            self._on_refused(finishes[index].job_id, error)
        return True

    async def wait_settled(self) -> None:
        # The actor takes messages in order: once a call posted now is answered,
        # every settle posted before it has been applied and committed.
        reply = Reply()
        try:
            self._scheduler.post_nowait(Call(_nothing, reply))
        except QueueClosedError:
            await trio.lowlevel.checkpoint()
            return
        with contextlib.suppress(QueueClosedError):
            await reply.wait()

    def stop(self) -> None:
        """Stop the stream; jobs handed over and not received go back. Never blocks."""
        if self._stopped:
            return
        self._stopped = True
        self._end(QueueClosedError("the stream was closed"))
        with contextlib.suppress(QueueClosedError):
            self._scheduler.post_nowait(Unsubscribe(self))
            for job in self._take_unreceived():
                self._scheduler.post_nowait(Release(handle_of(job), self.scope))


def _nothing(state: object) -> None:
    return None


def handle_of(job: DequeuedJob) -> Assignment:
    """What a :class:`Release` of ``job`` needs (its id and token; its args are not kept)."""
    return Assignment(job.id, job.token, tuple(job.dependencies), job.type, "null", job.channel)
