"""The remote client: a :class:`actorq.JobQueue` that talks to :func:`actorq.serve`.

``async with actorq.connect("ws://host:port", token=...) as queue:`` gives a
:class:`RemoteQueue`: the same methods, arguments, checks, return types and
exceptions as the in-process queue. One connection carries any number of
concurrent requests: each has an id, a reader task hands every reply to the
request that carries its id, and a writer task sends every frame (so a
cancelled caller never leaves half a frame on the socket). The connection's
rules (ids, limits, the welcome, which replies belong to cancelled requests)
are :class:`actorq._remote._session.ClientSession`'s; the tasks here only move
frames between it and the socket.

Cancellation follows :class:`LocalQueue`: a cancelled call raises
:class:`trio.Cancelled`, tells the server to stop (a ``cancel`` message), and
gives back any job that reaches it too late (a ``release`` message), so no job
is lost. Jobs this client holds (dequeued, not yet finished or requeued) get
their heartbeats refreshed automatically.

A connection that drops is re-established (:func:`connect`, ``reconnect``):
each connection is a :class:`_Link` with its own session and tasks, and the
queue, its held jobs and its streams carry over from one link to the next
(``docs/protocol.md``, "Reconnects").
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar
from uuid import UUID

import attrs
import outcome
import trio

from .._actor._stream import JobBuffer, check_credit, finish_fields
from .._core import _validate as v
from .._core._api import QueueAPI
from .._core._errors import (
    CanceledError,
    DequeueTimeoutError,
    FinishedError,
    JobQueueError,
    NotExistError,
    NotRunningError,
    ProtocolError,
    QueueClosedError,
)
from .._core._models import DequeuedJob
from .._core._ops import (
    Dequeue,
    Operation,
    RefreshHeartbeat,
    RefreshHeartbeats,
)
from .._core._unwrap import ErrorPolicy
from . import _session as ss
from . import _wire as w
from ._common import (
    _RESENDABLE,
    DEFAULT_KEEPALIVE_TIMEOUT,
    LOST_MESSAGE,
    _check_keepalive,
    _check_options,
    _check_reconnect_timeout,
    _parse_url,
    _Reply,
    _reply_value,
    _retryable_close,
    _tls_failure,
    check_urls,
    structure_reply,
)
from ._transport import (
    ABNORMAL_CLOSURE,
    ConnectionClosed,
    HandshakeError,
    WebSocket,
    open_websocket,
)

__all__ = ["RemoteQueue", "connect", "connect_stream"]

log = logging.getLogger("actorq.client")

P = TypeVar("P")


class _Waiter(Protocol):
    """What waits for a reply: a :class:`_ReplySlot`, or a stream waiting for its end."""

    def send_nowait(self, value: _Reply) -> None: ...


class _ReplySlot:
    """One request's reply: the reader hands it over, the requesting task waits.

    Built on :func:`trio.lowlevel.wait_task_rescheduled`, as the actor's
    :class:`~actorq._actor._scheduler.Reply` is, rather than on a memory
    channel: no buffer, so a reply cannot be stranded in one when its
    requester is cancelled (trio issue 719), and no channel pair to build
    per request. Either the reply is handed over first, and the requester
    returns it even if a cancel comes right after; or the requester stops
    waiting first, and :meth:`send_nowait` raises
    :class:`trio.BrokenResourceError`, so the reader gives back a job it
    carried.
    """

    __slots__ = ("_abandoned", "_task", "_value")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._value: _Reply | None = None
        self._abandoned = False

    def send_nowait(self, value: _Reply) -> None:
        if self._abandoned or self._value is not None:
            raise trio.BrokenResourceError
        self._value = value
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Value(value))

    def abandon(self) -> _Reply | None:
        """Stop waiting; return the reply if it came already (it is the caller's then)."""
        self._abandoned = True
        self._task = None
        value, self._value = self._value, None
        return value

    async def wait(self) -> _Reply:
        """The reply, once it comes. If cancelled first, the slot is abandoned."""
        value = self._value
        if value is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return value
        self._task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._task = None
            self._abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        reply: _Reply = await trio.lowlevel.wait_task_rescheduled(abort)
        return reply


@attrs.define
class _Sent:
    """A request on its way (:meth:`RemoteQueue._request_nowait`), its reply not yet awaited."""

    link: _Link
    request_id: int
    slot: _ReplySlot


# Errors after which a token is worth nothing: stop holding (and refreshing) it.
_TOKEN_GONE = (NotExistError, NotRunningError, CanceledError, FinishedError)
_REFRESH_BATCH = 10_000  # tokens per refresh message, well below any frame limit
_MAX_VOID = 4096


def _request(request_id: int, op: Operation[Any, Any]) -> w.Message:
    return w.Request(id=request_id, op=op)


def _frames(texts: list[str], limit: int) -> Iterator[str]:
    """``texts`` as batch frames of at most ``limit`` characters each (protocol 2)."""
    batch: list[str] = []
    size = 0
    for text in texts:
        if batch and size + len(text) + 1 > limit:
            yield w.encode_batch(batch)
            batch, size = [], 0
        batch.append(text)
        size += len(text) + 1
    if batch:
        yield w.encode_batch(batch)


_SETTLE_BATCH = 1000  # finishes per settle message, well below any frame limit

_MAX_CREDIT = 10_000  # the most credit a server takes in one subscribe


class _Lost(QueueClosedError):
    """The reply a request waiting on a connection gets when that connection
    drops and the client reconnects: whether it took effect is unknown."""


class _Link:
    """One websocket connection of a :class:`RemoteQueue`: a client may go
    through several, one at a time, when it reconnects."""

    def __init__(
        self,
        ws: WebSocket,
        stream: trio.abc.Stream,
        session: ss.ClientSession[_Waiter],
        name: str,
    ) -> None:
        self.ws = ws
        self.stream = stream
        self.session = session
        self.name = name
        self.pending: list[str] = []  # frames to send, in order
        self.sending = False  # a task is sending pending now
        self.wake_writer = trio.lowlevel.ParkingLot()
        self.slots = trio.Semaphore(1)  # until the server says how many it takes
        self.error: QueueClosedError | None = None  # why it ended, once it did
        self.retryable = True  # whether the client may reconnect after it ended
        #: the server stopped answering (silent past the keepalive timeout):
        #: reconnecting tries the next URL first, not this one again
        self.unresponsive = False
        self.lost = trio.Event()


class RemoteJobStream(JobBuffer):
    """A job stream on the other end of a websocket (:meth:`RemoteQueue.open_stream`).

    The server pushes jobs; finishes and returned credit wait in
    :attr:`_finishes` and :attr:`_credit_due` until the stream's flusher task
    sends them as one ``settle``. While one settle is on its way, the next
    finishes pile up for the one after: at idle a finish leaves at once,
    under load many share a frame.

    A stream outlives a lost connection: its buffer, credit and callbacks
    stay, and once the client has reconnected it subscribes again with the
    slots it has free (as soon as it has one), then sends the finishes that
    were not acknowledged.
    """

    def __init__(
        self,
        queue: RemoteQueue,
        credit: int,
        on_revoked: Callable[[UUID, UUID, bool], None] | None,
        on_refused: Callable[[UUID, JobQueueError], None] | None,
        subscribe: Callable[[int, int], w.Message],
    ) -> None:
        super().__init__(credit)
        self.id = 0  # the subscribe request's id on the current connection, once sent
        self._queue = queue
        self._on_revoked = on_revoked
        self._on_refused = on_refused
        self._subscribe_message = subscribe
        self._free = credit  # slots free: credit given, less the jobs received
        self._sub_out = 0  # jobs the current subscription pushed, less credit sent back
        self._sub_credit = credit  # the credit the current subscription opened with
        self._finishes: list[w.Finish] = []
        self._credit_due = 0
        self._unsettled: set[UUID] = set()  # tokens pushed, neither settled nor revoked
        self._stopped = False
        self._flushing = False
        self._settling = False  # a settle is on its way
        self._detached = False  # its connection was lost: subscribe again
        self._resent: set[UUID] = set()  # tokens of finishes sent again after a loss
        self._slot: trio.Semaphore | None = None  # the request slot it holds
        self._parked = False  # the flusher waits for something to send
        # a settle sent from the finishing task, for the flusher to see answered
        self._sent: _SentSettle | None = None
        self._wake = trio.lowlevel.ParkingLot()
        self._settled = trio.lowlevel.ParkingLot()  # wait_settled() waiters

    # ------------------------------------------------------------ the reader's side

    def _pushed(self, jobs: list[DequeuedJob]) -> None:
        if self._stopped:  # arrived after the stream was left: give them back
            for job in jobs:
                self._queue.release(job)
            return
        self._free -= len(jobs)
        self._sub_out += len(jobs)
        self._unsettled.update(job.token for job in jobs)
        self._take(jobs)

    def _revoked(self, runs: list[w.RevokedRun]) -> None:
        for run in runs:
            self._unsettled.discard(run.token)
            if self._on_revoked is not None:
                self._on_revoked(run.job_id, run.token, run.canceled)

    def send_nowait(self, value: _Reply) -> None:
        # The subscribe's only reply: the error that ended the stream, or the
        # loss of its connection, after which it subscribes again.
        queue = self._queue
        queue._streams.pop(self.id, None)
        self._free_slot()
        if isinstance(value, _Lost):
            self._detached = True
            self._kick()
        elif isinstance(value, QueueClosedError):
            self._end(QueueClosedError(value.message))
        elif type(value) is w.Error:
            error = w.exception_from_reply(value)
            if not isinstance(error, JobQueueError):
                error = JobQueueError(str(error))
            self._end(error)
        else:
            self._end(QueueClosedError(f"the server ended the stream with {value.KIND}"))
        self._wake.unpark_all()

    def _free_slot(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()

    # ------------------------------------------------------------ the consumer's side

    def finish(self, job: DequeuedJob, result: Any = None, *, failed: bool = False) -> None:
        # checked as JSON now, under the run's token: what travels is the settle's own form
        text, failed = finish_fields(result, failed)
        self._finishes.append(w.Finish(job.id, job.token, text, failed))
        self._credit_due += 1
        self._free = min(self._free + 1, self.credit)
        self._kick()

    def give_credit(self, slots: int = 1) -> None:
        slots = v.check_int(slots, "slots", minimum=1)
        self._credit_due += slots
        # never more slots free than the stream opened with, as the queue counts
        self._free = min(self._free + slots, self.credit)
        self._kick()

    def _kick(self) -> None:
        if not self._flushing:
            nursery = self._queue._nursery
            if nursery is None or self._queue.closed:
                return
            self._flushing = True
            self._parked = True  # it holds nothing until it runs
            nursery.start_soon(self._flush)
        if self._parked and not self._settling and not self._detached:
            self._settle_now()
        self._wake.unpark_all()

    def _idle(self) -> bool:
        if self._finishes:
            return False
        if self._detached:
            return self.ended or self._stopped or self._free < 1
        return not (self._credit_due and not self.ended)

    def _settle_now(self) -> None:
        # The finish of the last run going, made while nothing is being
        # settled, goes out from the finishing task at once, as a lone
        # request does: the flusher wakes only to see it answered, off the
        # path to the next job (a chain's next link, an idle worker's reply).
        if self._idle():
            return
        if len(self._unsettled) > len(self._finishes):
            # Another run is still going and may finish in this same pass:
            # the flusher, one pass later, sends their finishes together.
            return
        queue = self._queue
        link = queue._idle_link()
        if link is None:
            return  # the flusher sends it, behind what is already on its way
        finishes, credit, regrow = self._take_settle([])
        self._settling = True
        try:
            sent: _SettleSent = queue._request_nowait(
                link, partial(_settle_message, stream=self, finishes=finishes, credit=credit)
            )
        except (JobQueueError, ValueError, TypeError) as exc:  # too large: as the flusher's
            sent = exc
        self._sent = _SentSettle(finishes, credit, regrow, sent)

    def _take_settle(self, finishes: list[w.Finish]) -> tuple[list[w.Finish], int, bool]:
        # What the next settle carries: ``finishes`` (sent before, not
        # acknowledged) or the next batch, the credit due, and whether to
        # subscribe again with more credit once it is acknowledged.
        if not finishes:
            finishes = self._finishes[:_SETTLE_BATCH]
            del self._finishes[:_SETTLE_BATCH]
        # The server takes back no more credit than this subscription
        # was handed jobs: credit freed by jobs of an earlier one (from
        # before a reconnect) goes into a new subscription instead.
        due, self._credit_due = self._credit_due, 0
        credit = 0 if self.ended or self._detached else min(due, self._sub_out)
        self._sub_out -= credit
        # fewer slots open on the server than are free here: jobs of
        # an earlier subscription freed them
        regrow = not self._detached and self._free > self._sub_credit - self._sub_out
        return finishes, credit, regrow

    async def _flush(self) -> None:
        finishes: list[w.Finish] = []  # taken, not yet acknowledged
        try:
            while True:
                while not finishes and self._sent is None and self._idle():
                    if self._stopped and not self._unsettled:
                        return
                    self._parked = True
                    await self._wake.park()
                self._parked = False
                sent, self._sent = self._sent, None
                if sent is not None:
                    finishes, credit, regrow = sent.finishes, sent.credit, sent.regrow
                else:
                    if self._detached and not self.ended and not self._stopped and self._free >= 1:
                        await self._resubscribe()
                        continue
                    finishes, credit, regrow = self._take_settle(finishes)
                    self._settling = True  # until these finishes are acknowledged
                try:
                    await self._settle(finishes, credit, None if sent is None else sent.request)
                except _Lost:
                    # Sent again once reconnected (the credit went into the new
                    # subscribe); the server refuses any it applied already.
                    self._resent.update(f.token for f in finishes)
                    continue
                except QueueClosedError:
                    return
                except (JobQueueError, ValueError, TypeError) as exc:
                    log.warning("settling %d finishes failed: %s", len(finishes), exc)
                self._settling = False
                finishes = []
                if regrow and not self.ended and not self._stopped and not self._detached:
                    self._regrow()
                if not self._finishes:
                    self._settled.unpark_all()
        finally:
            sent, self._sent = self._sent, None
            if sent is not None and isinstance(sent.request, _Sent):
                self._queue._drop_sent(sent.request)
            self._flushing = False
            self._parked = False
            self._settling = False
            self._settled.unpark_all()

    def _regrow(self) -> None:
        # Leave the current subscription (jobs it pushes meanwhile go back)
        # and subscribe again, with every free slot as the credit.
        queue = self._queue
        link = queue._link
        if queue._streams.pop(self.id, None) is not None and link is not None:
            queue._queue_frame(link, link.session.cancel(self.id))
        self._free_slot()
        self._detached = True

    async def _resubscribe(self) -> None:
        queue = self._queue
        link = await queue._wait_up()
        await link.slots.acquire()
        if link.error is not None or link is not queue._link:
            link.slots.release()
            return
        if self.ended or self._stopped:
            link.slots.release()
            return
        credit = min(self._free, _MAX_CREDIT)
        self._credit_due = 0
        self._sub_out = 0
        self._sub_credit = credit
        request_id, text = link.session.prepare(lambda i: self._subscribe_message(i, credit))
        self._slot = link.slots
        self.id = request_id
        self._detached = False
        link.session.wait(request_id, self)
        queue._streams[request_id] = self
        await queue._send_frame(link, text)

    async def _settle(
        self,
        finishes: list[w.Finish],
        credit: int,
        sent: _SettleSent | None = None,
    ) -> None:
        if sent is None:
            message = partial(_settle_message, stream=self, finishes=finishes, credit=credit)
            reply = await self._queue._request(message)
        elif isinstance(sent, _Sent):
            reply = await self._queue._sent_reply(sent)
        else:
            raise sent  # it could not be sent
        refused = {r.index: r for r in structure_reply(reply, list[w.Refusal])}
        queue = self._queue
        for index, finish in enumerate(finishes):
            self._unsettled.discard(finish.token)
            queue._forget(finish.job_id, finish.token)
            resent = finish.token in self._resent
            self._resent.discard(finish.token)
            refusal = refused.get(index)
            if refusal is None:
                continue
            if resent:
                log.info(
                    "job %s: a finish sent again after a reconnect was refused (%s): "
                    "it took effect before the connection was lost, or the job was "
                    "requeued meanwhile",
                    finish.job_id,
                    refusal.error,
                )
            elif self._on_refused is not None:
                error = w.exception_from_reply(
                    w.Error(id=0, error=refusal.error, message=refusal.message)
                )
                if isinstance(error, JobQueueError):
                    self._on_refused(finish.job_id, error)

    async def wait_settled(self) -> None:
        while (self._finishes or self._settling) and not self._queue.closed:
            self._wake.unpark_all()
            await self._settled.park()
        await trio.lowlevel.checkpoint()

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        queue = self._queue
        if not self.ended:
            self._end(QueueClosedError("the stream was closed"))
            if not self._detached and queue._streams.pop(self.id, None) is not None:
                self._free_slot()
                link = queue._link
                if link is not None:
                    queue._queue_frame(link, link.session.cancel(self.id))
        for job in self._take_unreceived():
            self._unsettled.discard(job.token)
            queue.release(job)
        queue._all_streams.discard(self)
        self._wake.unpark_all()


# a settle on its way, or why it could not go (a frame too large: raised
# where its reply would have been awaited, as the flusher's own send raises it)
_SettleSent = _Sent | JobQueueError | ValueError | TypeError


@attrs.define
class _SentSettle:
    """A settle sent from a finishing task (:meth:`RemoteJobStream._settle_now`)."""

    finishes: list[w.Finish]
    credit: int
    regrow: bool
    request: _SettleSent


def _settle_message(
    request_id: int, *, stream: RemoteJobStream, finishes: list[w.Finish], credit: int
) -> w.Message:
    # The stream's id is read when the request is made: after a reconnect it
    # names the stream's new subscription.
    return w.Settle(id=request_id, stream=stream.id, finishes=finishes, credit=credit)


Dial = Callable[[int], Awaitable[tuple[trio.abc.Stream, str, str]]]
"""Opens a connection to the ``index``-th URL (modulo the list's length):
``(stream, host header, resource)``."""


@attrs.frozen
class _Reconnect:
    dial: Dial
    timeout: float | None  # None: forever
    connect_timeout: float
    initial_delay: float = 0.1
    max_delay: float = 5.0


class RemoteQueue(QueueAPI):
    """A :class:`actorq.JobQueue` on the other end of a websocket.

    Made by :func:`connect`; usable by any number of tasks at once. Bad
    arguments raise :class:`TypeError`/:class:`ValueError` before anything is
    sent; queue errors raised on the server are raised here as the same class.

    When the connection drops and the queue reconnects (see :func:`connect`
    and ``docs/protocol.md``, "Reconnects"), a call made meanwhile waits for
    the new connection; a call whose reply was outstanding is sent again if it
    is safe to (reads, heartbeat refreshes, dequeues) and raises
    :class:`QueueClosedError` otherwise. Once the queue gives up (or never
    reconnects), every call raises :class:`QueueClosedError`.
    """

    def __init__(
        self,
        *,
        max_message_size: int = w.DEFAULT_MAX_MESSAGE_SIZE,
        send_timeout: float = 10.0,
        token: str | None = None,
        reconnect: _Reconnect | None = None,
        keepalive_timeout: float | None = None,
        url_index: int = 0,
    ) -> None:
        self._max_message_size = max_message_size
        self._keepalive_timeout = keepalive_timeout
        self._url_index = url_index  # the URL of the current connection (reconnects start there)
        self._send_timeout = send_timeout
        self._token = token
        self._reconnect = reconnect
        self._link: _Link | None = None
        self._changed = trio.lowlevel.ParkingLot()  # woken when a link comes or the queue closes
        self._held: dict[UUID, UUID] = {}  # job id -> token, for jobs this client runs
        self._streams: dict[int, RemoteJobStream] = {}  # subscribe id (current link) -> stream
        self._all_streams: set[RemoteJobStream] = set()  # open streams, attached or not
        self._deferred: list[tuple[UUID, UUID]] = []  # releases waiting for a connection
        self._nursery: trio.Nursery | None = None  # the client's, for stream flushers
        # job id -> a token of ours that the server refused for it: token
        # operations on that job keep carrying it (bounded, oldest dropped)
        self._void: dict[UUID, UUID] = {}
        self._closed: QueueClosedError | None = None
        self.reconnects = 0  #: How many times the connection was re-established.

    # ------------------------------------------------------------ plumbing

    def _current(self) -> _Link:
        link = self._link
        assert link is not None  # set before the queue is handed out
        return link

    @property
    def _session(self) -> ss.ClientSession[_Waiter]:
        """The current connection's session."""
        return self._current().session

    @property
    def version(self) -> int:
        """The protocol version agreed with the server."""
        return self._current().session.version

    @property
    def server_max_message_size(self) -> int:
        """The largest frame the server accepts, in characters."""
        return self._current().session.server_max_message_size

    @property
    def max_in_flight(self) -> int:
        """How many requests the server takes at once on this connection."""
        return self._current().session.max_in_flight

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def connected(self) -> bool:
        """True while a connection is up (False while reconnecting, and once closed)."""
        link = self._link
        return self._closed is None and link is not None and link.error is None

    @property
    def held_jobs(self) -> dict[UUID, UUID]:
        """Jobs this client runs (``{job id: token}``), whose heartbeats it refreshes."""
        return dict(self._held)

    def _lose(self, link: _Link, error: QueueClosedError, *, retryable: bool = True) -> None:
        # Synchronous and idempotent: the link is over. Its waiting requests
        # learn it; if the queue will not reconnect, it closes for good.
        if link.error is None:
            link.error = error
            link.retryable = retryable
            link.pending.clear()
            link.wake_writer.unpark_all()
            link.lost.set()
            if link is self._link:
                self._streams.clear()
        if link is not self._link:
            # A connection still being set up: only its hello waits on it, and
            # whoever sets it up decides what comes next.
            for send in link.session.take_waiters():
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    send.send_nowait(QueueClosedError(link.error.message))
            return
        will_retry = self._reconnect is not None and link.retryable and self._closed is None
        if not will_retry:
            self._shut(link.error)
            return
        lost = _Lost(LOST_MESSAGE)
        for send in link.session.take_waiters():
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                send.send_nowait(lost)

    def _shut(self, error: QueueClosedError) -> None:
        # Synchronous and idempotent: fail every waiting request, stop sending.
        if self._closed is None:
            self._closed = error
        link = self._link
        if link is not None:
            if link.error is None:
                link.error = self._closed
                link.lost.set()
            for send in link.session.take_waiters():
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    send.send_nowait(self._closed)
            link.pending.clear()
            link.wake_writer.unpark_all()
        for stream in list(self._all_streams):
            stream._end(QueueClosedError(self._closed.message))
            stream._wake.unpark_all()
        self._deferred.clear()
        self._changed.unpark_all()

    async def _wait_up(self) -> _Link:
        """The current connection, once there is one; raises :class:`QueueClosedError`
        once the queue is closed (the reconnect timeout bounds the wait)."""
        while True:
            if self._closed is not None:
                raise QueueClosedError(self._closed.message)
            link = self._link
            if link is not None and link.error is None:
                return link
            await self._changed.park()

    def _queue_frame(self, link: _Link, text: str) -> None:
        # Cannot block or fail, for the cancellation paths. If the connection is
        # gone, the server has already cancelled the request and released its job.
        if link.error is None:
            link.pending.append(text)
            if not link.sending:
                link.wake_writer.unpark_all()

    async def _request(
        self, make: Callable[[int], w.Message], *, resend: bool = False
    ) -> w.Message:
        """Send one request and wait for its reply; raise the error it carries.

        If the connection drops with the reply outstanding, the request is sent
        again on the next connection when ``resend`` is true; otherwise it
        raises :class:`QueueClosedError` (:data:`LOST_MESSAGE`).
        """
        while True:
            link = await self._wait_up()
            session = link.session
            request_id, text = session.prepare(make)  # refuses a frame too large for the server
            slots = link.slots
            try:
                slots.acquire_nowait()  # the common case, without a scheduler pass
            except trio.WouldBlock:
                await slots.acquire()
            try:
                if link.error is not None:
                    if self._closed is not None:
                        raise QueueClosedError(self._closed.message)
                    continue  # never sent: safe to send on the next connection
                slot = _ReplySlot()
                session.wait(request_id, slot)
                try:
                    # Behind whatever waits to be sent: a request must not overtake a
                    # cancel or release (a cancelled dequeue's job would be handed out
                    # to it before being given back).
                    await self._send_frame(link, text)
                    reply = await slot.wait()
                except BaseException:
                    self._abandon(link, request_id, slot)
                    raise
            finally:
                slots.release()
            if isinstance(reply, _Lost):
                if resend:
                    continue
                raise _Lost(reply.message)
            return _reply_value(reply)

    def _idle_link(self) -> _Link | None:
        """The connection, if a request sent now would go out alone at once:
        nothing else queued, sending or in flight (open streams' subscribes
        aside), and a request slot free."""
        link = self._link
        if (
            link is None
            or link.error is not None
            or link.sending
            or link.pending
            or link.slots.value == 0
            or link.session.in_flight > len(self._streams)
        ):
            return None
        return link

    def _request_nowait(self, link: _Link, make: Callable[[int], w.Message]) -> _Sent:
        """Send one request on ``link`` (an :meth:`_idle_link`) from the caller's
        task, without a schedule point; :meth:`_sent_reply` waits for its reply.

        Raises what :meth:`ClientSession.prepare` raises (a frame too large),
        having sent nothing.
        """
        request_id, text = link.session.prepare(make)
        link.slots.acquire_nowait()
        slot = _ReplySlot()
        link.session.wait(request_id, slot)
        if not link.ws.send_many_nowait((text,)):
            self._queue_frame(link, text)  # the writer task sends it
        elif link.ws.unsent:  # the socket took part of it: the writer sends the rest
            link.wake_writer.unpark_all()
        return _Sent(link, request_id, slot)

    async def _sent_reply(self, sent: _Sent) -> w.Message:
        """The reply to a request sent by :meth:`_request_nowait`, as :meth:`_request`
        returns it (without sending again after a lost connection)."""
        try:
            reply = await sent.slot.wait()
        except BaseException:
            self._drop_sent(sent)
            raise
        sent.link.slots.release()
        if isinstance(reply, _Lost):
            raise _Lost(reply.message)
        return _reply_value(reply)

    def _drop_sent(self, sent: _Sent) -> None:
        # nobody waits for its reply any more (cancelled, or never awaited)
        self._abandon(sent.link, sent.request_id, sent.slot)
        sent.link.slots.release()

    async def _send_frame(self, link: _Link, text: str) -> None:
        """Queue ``text`` and, unless another task is sending, send everything queued.

        Whoever sends takes every frame that piled up meanwhile (other tasks'
        requests, cancels, releases, settles) and, on protocol 2, sends them as
        one batch frame, so concurrent requests share frames. A request alone
        in flight (open streams aside) is written to the socket at once from
        its own task (:meth:`WebSocket.send_many_nowait`), without the yield of
        a trio send: its caller's wait for the reply is the schedule point.
        """
        if (
            not link.sending
            and not link.pending
            # open streams' subscribes are in flight for good: they do not count
            and link.session.in_flight - len(self._streams) <= 1
            and link.ws.send_many_nowait((text,))
        ):
            if link.ws.unsent:  # the socket took part of it: the writer sends the rest
                link.wake_writer.unpark_all()
            return
        link.pending.append(text)
        if not link.sending:
            await self._drain(link)

    async def _drain(self, link: _Link) -> None:
        # Shielded, because a cancelled write would leave half a frame on
        # the stream (a cancelled caller then abandons its request right after);
        # bounded by send_timeout, past which the server is not reading and the
        # connection is aborted.
        link.sending = True
        batching = link.session.version >= w.STREAMS_VERSION
        limit = link.session.server_max_message_size - 2
        timed_out = False
        try:
            with trio.CancelScope(shield=True) as scope:
                while (link.pending or link.ws.unsent) and link.error is None:
                    batch, link.pending = link.pending, []
                    scope.deadline = trio.current_time() + self._send_timeout
                    if not batch:  # what the socket did not take of a nowait write
                        await link.ws.flush()
                        continue
                    # every frame of the batch in one write to the stream
                    await link.ws.send_many(list(_frames(batch, limit)) if batching else batch)
            timed_out = scope.cancelled_caught
        except ConnectionClosed:
            pass  # the reader sees the close too and fails what is waiting
        finally:
            link.sending = False
        if timed_out:
            self._lose(link, QueueClosedError("the queue server does not read our requests"))
            await trio.aclose_forcefully(link.stream)

    def _abandon(self, link: _Link, request_id: int, slot: _ReplySlot) -> None:
        # Runs synchronously when a caller stops waiting (cancelled). If the
        # reply came already, a job in it goes back. If none came yet, the
        # server is told to stop; a job it sends anyway the session turns into
        # a release, since the request is no longer waited for.
        got = slot.abandon()
        if got is None:
            self._queue_frame(link, link.session.cancel(request_id))
        elif type(got) is w.Dequeued:
            self._release_nowait(got.job.id, got.job.token)

    def _release_nowait(self, job_id: UUID, token: UUID) -> None:
        link = self._link
        if link is not None and link.error is None:
            self._queue_frame(link, link.session.release(job_id, token))
        elif self._closed is None and len(self._deferred) < _MAX_VOID:
            self._deferred.append((job_id, token))  # sent once reconnected

    async def _reader(self, link: _Link) -> None:
        session = link.session
        receive = session.receive_frame
        receive_message = link.ws.receive
        Reply, Pushed, Dequeued = ss.Reply, ss.Pushed, w.Dequeued  # bound once: per frame
        error: QueueClosedError | None = None
        retryable = True
        try:
            while True:
                try:
                    frame = await receive_message()
                except ConnectionClosed as exc:
                    if exc.code == ABNORMAL_CLOSURE:
                        error = session.peer_closed(None, None)
                    else:
                        error = session.peer_closed(exc.code, exc.reason or None)
                        retryable = _retryable_close(exc.code)
                    return
                if link.error is not None:
                    return  # given up on already (it stopped reading our requests)
                for event in receive(frame):
                    if type(event) is Reply:
                        try:
                            event.waiter.send_nowait(event.message)
                        except (
                            trio.BrokenResourceError,
                            trio.ClosedResourceError,
                            trio.WouldBlock,
                        ):
                            reply = event.message
                            if type(reply) is Dequeued:
                                self._release_nowait(reply.job.id, reply.job.token)
                    elif type(event) is Pushed:
                        self._pushed(event.message)
                    elif type(event) is ss.Send:
                        self._queue_frame(link, event.frame)  # releases for a cancelled request
                    elif type(event) is ss.Stray:
                        stray = event.message
                        if type(stray) is w.Error:
                            log.warning("error from server: %s %s", stray.error, stray.message)
                    elif type(event) is ss.Broken:
                        error = event.error
                        retryable = False
                        log.warning("closing: %s", error)
                        return
        except Exception as exc:  # a bug; the connection ends, the program goes on
            log.exception("remote queue reader failed")
            error = QueueClosedError(f"the connection failed: {exc!r}")
            error.__cause__ = exc  # what the calls that fail with it name as their cause
            retryable = False
        finally:
            self._lose(
                link,
                error or QueueClosedError("the connection to the queue server was lost"),
                retryable=retryable,
            )

    async def _writer(self, link: _Link) -> None:
        # Sends what synchronous paths queue (cancels, releases) when no
        # request task is sending already.
        try:
            while link.error is None:
                if (link.pending or link.ws.unsent) and not link.sending:
                    await self._drain(link)
                else:
                    await link.wake_writer.park()
        except Exception:  # a bug; the connection ends, the program goes on
            log.exception("remote queue writer failed")
            self._lose(link, QueueClosedError("the connection failed"), retryable=False)

    def _pushed(self, message: w.Message) -> None:
        stream = self._streams.get(message.id)
        if stream is None:  # cannot happen: the session knows the stream is open
            return
        if type(message) is w.Jobs:
            held = self._held
            for job in message.jobs:
                held[job.id] = job.token
            stream._pushed(message.jobs)
        else:
            assert isinstance(message, w.Revoked)
            for run in message.runs:
                self._forget(run.job_id, run.token)
            stream._revoked(message.runs)

    async def _refresher(self, interval: float) -> None:
        # Keep the jobs this client runs alive, however long the work takes,
        # and through reconnects: their tokens stay valid while the server
        # keeps the jobs.
        while True:
            await trio.sleep(interval)
            tokens = list(self._held.values())
            for start in range(0, len(tokens), _REFRESH_BATCH):
                batch = tokens[start : start + _REFRESH_BATCH]
                try:
                    op = RefreshHeartbeats(tokens=tuple(batch))
                    reply = await self._request(partial(_request, op=op), resend=True)
                    gone = set(structure_reply(reply, list[UUID]))
                except QueueClosedError:
                    return
                except JobQueueError as exc:  # busy, or a bad reply: try again next time
                    log.warning("heartbeat refresh failed: %s", exc)
                    continue
                if gone:
                    for job_id, token in list(self._held.items()):
                        if token in gone:
                            del self._held[job_id]

    async def _keepalive(self, link: _Link, timeout: float) -> None:
        # A server that is paused, or cut off behind a proxy or a blackholed
        # network, keeps the TCP connection up and sends nothing. After half
        # the timeout of silence a ping goes out (any websocket server answers
        # it from its reader, whatever its queue is doing); after the whole
        # timeout without a byte, the connection is given up on and the queue
        # reconnects, to the next URL first.
        ws = link.ws
        while link.error is None:
            heard = ws.last_received
            await trio.sleep_until(heard + timeout / 2)
            if ws.last_received != heard or link.error is not None:
                continue
            with trio.move_on_after(timeout / 2) as pinging:
                await ws.ping()
            if not pinging.cancelled_caught:  # else the server reads nothing: give up now
                await trio.sleep_until(heard + timeout)
                if ws.last_received != heard or link.error is not None:
                    continue
            # (a ping cut short may have left half a frame on the stream: it
            # cannot carry anything more in any case)
            link.unresponsive = True
            silent = QueueClosedError(
                f"the queue server {link.name} sent nothing for {timeout:g} s"
            )
            self._lose(link, silent)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(link.stream)  # ends the reader's wait
            return

    async def _greet(self, link: _Link, client: str) -> None:
        """Send the hello and wait for the welcome; the session checks it.

        Raises :class:`ProtocolError` if the server refuses the hello (or its
        welcome does not fit it), :class:`QueueClosedError` if the connection
        ends first.
        """
        send, receive = trio.open_memory_channel[_Reply](1)
        try:
            await self._send_frame(link, link.session.hello(send, token=self._token, client=client))
            reply = await receive.receive()
        finally:
            receive.close()
        if isinstance(reply, QueueClosedError):
            raise QueueClosedError(reply.message)
        if type(reply) is w.Error:
            raise w.exception_from_reply(reply)
        link.slots = trio.Semaphore(link.session.max_in_flight)

    async def _open_link(
        self,
        nursery: trio.Nursery,
        stream: trio.abc.Stream,
        host: str,
        resource: str,
        handshake_timeout: float,
    ) -> _Link:
        """The websocket handshake and hello over ``stream``; its tasks run in ``nursery``.

        On failure the stream is closed and the error raised:
        :class:`QueueClosedError` for a failed handshake or a lost connection,
        :class:`ProtocolError` for a refused hello.
        """
        link: _Link | None = None
        try:
            with _handshake_errors(), trio.fail_after(handshake_timeout):
                ws = await open_websocket(
                    stream, host, resource, max_message_size=self._max_message_size
                )
                link = _Link(
                    ws,
                    stream,
                    ss.ClientSession[_Waiter](max_message_size=self._max_message_size),
                    f"{host}{resource}",
                )
                nursery.start_soon(self._reader, link)
                nursery.start_soon(self._writer, link)
                await self._greet(link, "actorq-python")
                if self._keepalive_timeout is not None:
                    nursery.start_soon(self._keepalive, link, self._keepalive_timeout)
        except BaseException as exc:
            refused = link is not None and not link.retryable
            if link is not None and link.error is None:
                link.error = QueueClosedError("the handshake failed")
                link.lost.set()
                link.wake_writer.unpark_all()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            if refused and isinstance(exc, QueueClosedError):
                # closed with a code that is not worth retrying (4001, say)
                # before the hello's error reply came
                raise ProtocolError(exc.message) from exc
            raise
        return link

    def _attach(self, link: _Link) -> None:
        """Make ``link`` the current connection: wake every waiting call, have
        every open stream subscribe again, and send the releases that waited."""
        self._link = link
        deferred, self._deferred = self._deferred, []
        for job_id, token in deferred:
            self._queue_frame(link, link.session.release(job_id, token))
        for stream in list(self._all_streams):
            if stream._detached:
                stream._kick()
        self._changed.unpark_all()

    async def _maintain(self, nursery: trio.Nursery, handshake_timeout: float) -> None:
        # Watches the current connection; once it is lost, reconnects with
        # jittered exponential backoff until the reconnect timeout, then gives up.
        policy = self._reconnect
        assert policy is not None
        attempt = 0
        while self._closed is None:
            link = self._current()
            await link.lost.wait()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(link.stream)
            if self._closed is not None or not link.retryable:
                return
            error = link.error
            log.warning("connection to the queue server lost (%s); reconnecting", error)
            start = trio.current_time()
            deadline = math.inf if policy.timeout is None else start + policy.timeout
            delay = policy.initial_delay
            # a restart: the same URL first, then round the list; a server
            # that stopped answering: the next URL first
            index = self._url_index + (1 if link.unresponsive else 0)
            while True:
                attempt += 1
                # Each attempt is bounded by the time left, too: giving up
                # happens on time even if a server accepts and never answers.
                left = max(0.0, deadline - trio.current_time())
                try:
                    with trio.fail_after(min(policy.connect_timeout, left)):
                        stream, host, resource = await policy.dial(index)
                    left = max(0.0, deadline - trio.current_time())
                    new = await self._open_link(
                        nursery, stream, host, resource, min(handshake_timeout, left)
                    )
                except ProtocolError as exc:
                    self._shut(QueueClosedError(f"the server refused the reconnect: {exc}"))
                    return
                except (
                    OSError,
                    QueueClosedError,
                    trio.TooSlowError,
                    trio.BrokenResourceError,
                ) as exc:
                    pause = random.uniform(delay / 2, delay)
                    if trio.current_time() + pause >= deadline:
                        self._shut(
                            QueueClosedError(
                                f"could not reconnect to the queue server within "
                                f"{policy.timeout:g} s: {exc!r}"
                            )
                        )
                        return
                    log.debug("reconnect attempt %d failed: %r", attempt, exc)
                    await trio.sleep(pause)
                    delay = min(delay * 2, policy.max_delay)
                    index += 1
                    continue
                break
            self._url_index = index
            self.reconnects += 1
            self._attach(new)
            log.warning(
                "reconnected to the queue server (%s) after %.1f s",
                new.name,
                trio.current_time() - start,
            )

    async def _run(self, op: Operation[Any, P]) -> P:
        """Send ``op`` and return its result, structured as the in-process API returns it.

        An operation on a job this client holds carries the job's token, so the
        server applies it only while that token still names the job.
        """
        op = op.checked()
        job_id: UUID | None = getattr(op, "job_id", None)
        token: UUID | None = None
        if op.TOKEN and job_id is not None:
            token = self._token_for(job_id)
            op = attrs.evolve(op, token=token)  # type: ignore[call-arg]
        request = op
        try:
            reply = await self._request(
                lambda i: w.Request(id=i, op=request), resend=type(op) in _RESENDABLE
            )
        except _TOKEN_GONE as exc:
            if job_id is not None and op.TOKEN:
                self._forget(job_id, token)
                if isinstance(exc, NotExistError) and token is not None:
                    # The job runs under someone else's token now. Keep sending
                    # ours, so a retry cannot touch the other worker's run either.
                    self._void[job_id] = token
                    while len(self._void) > _MAX_VOID:
                        del self._void[next(iter(self._void))]
            elif isinstance(op, RefreshHeartbeat):
                for held_id, held in list(self._held.items()):
                    if held == op.token:
                        del self._held[held_id]
            raise
        except DequeueTimeoutError:
            if job_id is not None and op.SETTLES:
                self._forget(job_id, token)  # the finish took effect before the dequeue timed out
            raise
        except _Lost as exc:
            raise QueueClosedError(exc.message) from None
        # (If the outcome is unknown, say after a cancellation, the token stays
        # held; the next heartbeat refresh drops it if the job settled.)
        if job_id is not None and op.SETTLES:
            self._forget(job_id, self._held.get(job_id))
        if op.RESULT is DequeuedJob:
            if type(reply) is not w.Dequeued:
                raise w.ProtocolError(f"unexpected {reply.KIND} reply", "unexpected_kind")
            self._hold(reply.job)
            job: P = reply.job  # type: ignore[assignment]
            return job
        value: P = structure_reply(reply, op.RESULT)
        return value

    def _token_for(self, job_id: UUID) -> UUID | None:
        return self._held.get(job_id) or self._void.get(job_id)

    def _hold(self, job: DequeuedJob) -> None:
        self._void.pop(job.id, None)
        self._held[job.id] = job.token

    def _forget(self, job_id: UUID, token: UUID | None) -> None:
        if token is not None and self._held.get(job_id) == token:
            del self._held[job_id]

    # ------------------------------------------------------------ streams

    @contextlib.asynccontextmanager
    async def open_stream(
        self,
        job_types: Sequence[str],
        channels: Sequence[str] = ("",),
        *,
        any_channel: bool = False,
        worker_id: UUID | None = None,
        credit: int = 1,
        on_revoked: Callable[[UUID, UUID, bool], None] | None = None,
        on_refused: Callable[[UUID, JobQueueError], None] | None = None,
    ) -> AsyncIterator[RemoteJobStream]:
        """A :class:`~actorq._core._streaming.JobStream` served by the server (protocol 2).

        See :meth:`actorq.StreamingQueue.open_stream` for the contract. The
        stream holds one of the connection's request slots while it is open.
        Raises :class:`NotImplementedError` on a server that speaks only
        protocol 1, and :class:`TypeError`/:class:`ValueError` for bad
        arguments; an error the server ends the stream with (an unknown
        ``worker_id``, say) comes out of :meth:`~JobStream.receive`. A lost
        connection does not end the stream while the queue reconnects: it
        subscribes again on the new connection (see ``docs/protocol.md``).
        """
        types_arg: Any = job_types
        channels_arg: Any = () if any_channel else channels
        op = Dequeue(
            job_types=types_arg, channels=channels_arg, any_channel=any_channel, worker_id=worker_id
        ).checked()
        credit = check_credit(credit)
        link = await self._wait_up()
        if link.session.version < w.STREAMS_VERSION:
            raise NotImplementedError("the server does not offer job streams (protocol 1)")

        def subscribe(request_id: int, credit: int) -> w.Message:
            return w.Subscribe(
                id=request_id,
                job_types=list(op.job_types),
                channels=list(op.channels),
                any_channel=op.any_channel,
                worker_id=op.worker_id,
                credit=credit,
            )

        stream = RemoteJobStream(self, credit, on_revoked, on_refused, subscribe)
        request_id, text = link.session.prepare(partial(subscribe, credit=credit))
        await link.slots.acquire()
        stream._slot = link.slots
        stream.id = request_id
        self._all_streams.add(stream)
        if link.error is not None:  # lost meanwhile: subscribe on the next connection
            stream._free_slot()
            stream._detached = True
        else:
            link.session.wait(request_id, stream)
            self._streams[request_id] = stream
        try:
            if not stream._detached:
                await self._send_frame(link, text)
            yield stream
        finally:
            stream._stop()

    # ------------------------------------------------------------ extras

    def release(self, job: DequeuedJob) -> None:
        """Give back a job this client will not run: it returns to its place, its
        token void. Synchronous and non-blocking (safe in ``finally``); while
        reconnecting it is sent once the connection is back, and if the queue
        is closed the job comes back when its heartbeat expires."""
        self._forget(job.id, job.token)
        self._release_nowait(job.id, job.token)


@contextlib.contextmanager
def _handshake_errors() -> Iterator[None]:
    try:
        yield
    except HandshakeError as exc:
        raise QueueClosedError(f"the websocket handshake failed: {exc}") from exc
    except trio.TooSlowError as exc:
        raise QueueClosedError(
            f"the websocket handshake failed: the server did not answer in time ({exc!r})"
        ) from exc
    except ConnectionClosed as exc:
        raise QueueClosedError(f"the websocket handshake failed: {exc}") from exc


async def _open_stream(
    url: str, ssl_context: ssl.SSLContext | None
) -> tuple[trio.abc.Stream, str, str]:
    host, port, resource, tls = _parse_url(url)
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if tls:
        context = ssl_context or ssl.create_default_context()
        tls_stream = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
        try:
            await tls_stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(stream)
            raise QueueClosedError(_tls_failure(exc.__cause__)) from exc
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        stream = tls_stream
    header_host = host if (port == (443 if tls else 80)) else f"{host}:{port}"
    return stream, header_host, resource


@contextlib.asynccontextmanager
async def _open_session(
    stream: trio.abc.Stream,
    host: str,
    resource: str,
    *,
    token: str | None,
    heartbeat_interval: float | None,
    max_message_size: int,
    send_timeout: float,
    handshake_timeout: float,
    keepalive_timeout: float | None,
    reconnect: _Reconnect | None = None,
    url_index: int = 0,
) -> AsyncIterator[RemoteQueue]:
    """The websocket handshake, hello and background tasks over an open stream."""
    policy = ErrorPolicy("the queue connection")
    async with policy, trio.open_nursery() as nursery:
        queue = RemoteQueue(
            max_message_size=max_message_size,
            send_timeout=send_timeout,
            token=token,
            reconnect=reconnect,
            keepalive_timeout=keepalive_timeout,
            url_index=url_index,
        )
        try:
            queue._nursery = nursery
            queue._link = await queue._open_link(nursery, stream, host, resource, handshake_timeout)
            if reconnect is not None:
                nursery.start_soon(queue._maintain, nursery, handshake_timeout)
            if heartbeat_interval is not None:
                nursery.start_soon(queue._refresher, heartbeat_interval)
            try:
                with policy.user():
                    yield queue
            finally:
                link = queue._link
                queue._shut(QueueClosedError("the queue connection was closed"))
                if link is not None:
                    with trio.move_on_after(2.0) as scope:
                        scope.shield = True
                        await link.ws.aclose()
        finally:
            # Close first, shielded, then cancel: a checkpoint in an already
            # cancelled nursery would raise Cancelled here, replacing (and,
            # once the nursery absorbs it, swallowing) the body's exception.
            with trio.CancelScope(shield=True):
                last = queue._link
                if last is not None:
                    await trio.aclose_forcefully(last.stream)
                await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def connect(
    url: str | Sequence[str],
    *,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    heartbeat_interval: float | None = 30.0,
    connect_timeout: float = 10.0,
    send_timeout: float = 10.0,
    max_message_size: int = w.DEFAULT_MAX_MESSAGE_SIZE,
    reconnect: bool = True,
    reconnect_timeout: float | None = 60.0,
    keepalive_timeout: float | None = DEFAULT_KEEPALIVE_TIMEOUT,
    retry_on_start: bool = False,
) -> AsyncIterator[RemoteQueue]:
    """Connect to an actorq server; yield a :class:`RemoteQueue` for the block.

    ``url`` is ``ws://host:port`` or ``wss://host:port`` (TLS, verified with
    ``ssl_context`` or the system's defaults), or a list of them tried in order
    until one answers. ``token`` is the server's bearer token. Every
    ``heartbeat_interval`` seconds the client refreshes the heartbeats of the
    jobs it holds (``None`` turns that off). A frame the server does not take
    within ``send_timeout`` seconds aborts the connection. ``max_message_size``
    bounds the frames this client accepts.

    A connection on which nothing arrives for ``keepalive_timeout`` seconds
    (10 by default; ``None`` turns the check off) is given up on: the client
    pings the server after half of it, and any websocket server answers a
    ping at once, so only a server that is paused, hung or cut off stays
    silent that long. It is then treated as lost, and reconnecting starts
    with the next URL.

    With ``reconnect`` (the default), a connection lost later (a server
    restart or shutdown, close code 1001 or 1012, a reset, a failover) is
    re-established: to the same URL, then the next of the list and round
    again, with jittered exponential backoff from 0.1 s doubling to 5 s,
    for up to ``reconnect_timeout`` seconds (``None``: forever). Calls made
    meanwhile wait; what is sent again and what raises is stated in
    ``docs/protocol.md`` ("Reconnects"). A refused token (4001), an
    unsupported version or a protocol violation is never retried: the queue
    closes, and every call raises :class:`QueueClosedError`.

    With ``retry_on_start``, the first connection is retried the same way
    (round the URL list, the same backoff, for up to ``reconnect_timeout``
    seconds), so a worker started before its server waits for it; each
    failed round is logged as a warning. Without it (the default) the first
    connection is tried once per URL.

    Raises :class:`QueueClosedError` if no server answers within
    ``connect_timeout`` seconds (after ``reconnect_timeout`` with
    ``retry_on_start``), and
    :class:`ProtocolError` if the server refuses the connection
    (``unauthorized``, ``unsupported_version``). Leaving the block closes the
    connection; running jobs stay running on the server until their
    heartbeats expire or another client finishes them.

    Errors (``docs/errors.md``): an exception raised in the block comes out as
    itself, never in an exception group; a failure of the connection's own
    tasks comes out as a :class:`JobQueueError` (untyped ones as a
    :class:`QueueClosedError` whose ``__cause__`` is the original).
    """
    _check_options(heartbeat_interval, max_message_size, token)
    urls = check_urls(url, ssl_context)
    if not isinstance(reconnect, bool):
        raise TypeError(f"reconnect must be a bool, not {type(reconnect).__name__}")
    if not isinstance(retry_on_start, bool):
        raise TypeError(f"retry_on_start must be a bool, not {type(retry_on_start).__name__}")
    retry_for = _check_reconnect_timeout(reconnect_timeout)
    timeout = v.check_seconds(connect_timeout, "connect_timeout")
    send_wait = v.check_seconds(send_timeout, "send_timeout")
    keepalive = _check_keepalive(keepalive_timeout)
    failures: list[str] = []

    async def dial(index: int) -> tuple[trio.abc.Stream, str, str]:
        return await _open_stream(urls[index % len(urls)], ssl_context)

    give_up = math.inf if retry_for is None else trio.current_time() + retry_for
    policy = _Reconnect(dial, retry_for, timeout)
    delay = policy.initial_delay
    while True:
        async with _first_connection(
            urls,
            failures,
            ssl_context=ssl_context,
            timeout=timeout,
            token=token,
            heartbeat_interval=heartbeat_interval,
            max_message_size=max_message_size,
            send_wait=send_wait,
            keepalive=keepalive,
            reconnect=policy if reconnect else None,
        ) as queue:
            if queue is not None:
                yield queue
                return
        summary = "cannot connect to the queue server: " + "; ".join(failures)
        pause = random.uniform(delay / 2, delay)
        if not retry_on_start or trio.current_time() + pause > give_up:
            raise QueueClosedError(summary)
        log.warning("%s; trying again in %.1f s", summary, pause)
        await trio.sleep(pause)
        delay = min(delay * 2, policy.max_delay)
        failures.clear()


@contextlib.asynccontextmanager
async def _first_connection(
    urls: list[str],
    failures: list[str],
    *,
    ssl_context: ssl.SSLContext | None,
    timeout: float,
    token: str | None,
    heartbeat_interval: float | None,
    max_message_size: int,
    send_wait: float,
    keepalive: float | None,
    reconnect: _Reconnect | None,
) -> AsyncIterator[RemoteQueue | None]:
    """One round of the URL list: yields the queue of the first server that
    answers, or ``None`` with each URL's failure appended to ``failures``."""
    for index, candidate in enumerate(urls):
        try:
            with trio.fail_after(timeout):
                stream, host, resource = await _open_stream(candidate, ssl_context)
        except trio.TooSlowError:
            failures.append(f"{candidate}: no answer within {timeout:g} s (TooSlowError())")
            continue
        except (OSError, trio.BrokenResourceError) as exc:
            failures.append(f"{candidate}: {exc!r}")
            continue
        except QueueClosedError as exc:  # a TLS handshake that failed, said in one sentence
            failures.append(f"{candidate}: {exc.message}")
            continue

        entered = False
        try:
            async with _open_session(
                stream,
                host,
                resource,
                token=token,
                heartbeat_interval=heartbeat_interval,
                max_message_size=max_message_size,
                send_timeout=send_wait,
                handshake_timeout=timeout,
                keepalive_timeout=keepalive,
                reconnect=reconnect,
                url_index=index,
            ) as queue:
                entered = True
                yield queue
        except QueueClosedError as exc:
            # A server that takes the TCP connection but never completes the
            # websocket handshake (paused, or cut off behind a proxy) is passed
            # over for the next one. Once the block runs, errors are the block's.
            if entered:
                raise
            failures.append(f"{candidate}: {exc.message}")
            continue
        return
    yield None


StreamFactory = Callable[[], Awaitable[trio.abc.Stream]]


@contextlib.asynccontextmanager
async def connect_stream(
    stream: trio.abc.Stream | StreamFactory,
    *,
    token: str | None = None,
    host: str = "localhost",
    resource: str = "/",
    heartbeat_interval: float | None = 30.0,
    send_timeout: float = 10.0,
    handshake_timeout: float = 10.0,
    max_message_size: int = w.DEFAULT_MAX_MESSAGE_SIZE,
    reconnect_timeout: float | None = 60.0,
    keepalive_timeout: float | None = DEFAULT_KEEPALIVE_TIMEOUT,
) -> AsyncIterator[RemoteQueue]:
    """Like :func:`connect`, over a trio stream (tests use
    :func:`trio.testing.memory_stream_pair`). The stream is closed on exit.
    Errors follow the same policy as :func:`connect`.

    Given a stream, the queue is single-shot: a lost connection closes it.
    Given a factory (an async callable returning a new stream each time), the
    queue reconnects as :func:`connect` does, through a new stream from the
    factory, for up to ``reconnect_timeout`` seconds (``None``: forever); an
    exception the factory raises counts as a failed attempt if it is an
    :class:`OSError`, :class:`trio.BrokenResourceError` or
    :class:`QueueClosedError`, and ends the queue otherwise."""
    _check_options(heartbeat_interval, max_message_size, token)
    host = v.check_str(host, "host")
    resource = v.check_str(resource, "resource")
    retry_for = _check_reconnect_timeout(reconnect_timeout)
    shake = v.check_seconds(handshake_timeout, "handshake_timeout")
    keepalive = _check_keepalive(keepalive_timeout)
    reconnect: _Reconnect | None = None
    if isinstance(stream, trio.abc.Stream):
        first = stream
    elif callable(stream):
        factory = stream

        async def dial(index: int) -> tuple[trio.abc.Stream, str, str]:
            got = await factory()
            if not isinstance(got, trio.abc.Stream):
                raise TypeError(f"the stream factory returned a {type(got).__name__}")
            return got, host, resource

        first = (await dial(0))[0]
        reconnect = _Reconnect(dial, retry_for, shake)
    else:
        raise TypeError(
            f"stream must be a trio.abc.Stream or a factory of them, not {type(stream).__name__}"
        )
    async with _open_session(
        first,
        host,
        resource,
        token=token,
        heartbeat_interval=heartbeat_interval,
        max_message_size=max_message_size,
        send_timeout=v.check_seconds(send_timeout, "send_timeout"),
        handshake_timeout=shake,
        keepalive_timeout=keepalive,
        reconnect=reconnect,
    ) as queue:
        yield queue
