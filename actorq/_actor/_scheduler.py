"""The scheduler actor: the one task that owns a queue's state.

Every request reaches it as a message on an unbounded memory channel (its
mailbox) and is answered on a one-shot reply channel, a :class:`Reply`, that
the requester made for it. The actor takes every message waiting in the
mailbox as one batch, applies them all to the
:class:`~actorq._core.QueueState`, commits what changed to the store in one
transaction, and only then sends the replies: group commit, so a store's
fsync is paid once per batch and never per request.

Commits are pipelined: while one batch's commit runs (in a thread, for the
durable stores), the actor takes and applies the next batch in memory, and
holds that batch's replies until its own commit lands. A reply never goes out
before the commit of what it acknowledges, and the store is busy for as long
as there is work, instead of idle while the actor waits on it.

The mailbox is unbounded on purpose: a requester that is being cancelled must
be able to withdraw its wait or hand back a job without blocking
(:meth:`Scheduler.post_nowait`), and every requester has at most one request
in flight, so the mailbox never holds more messages than there are tasks.

Streams (:class:`Subscription`) are standing dequeues with a credit: the
actor parks one waiter in the core per unit of credit, pushes every job those
waiters are handed to the stream once the batch that assigned it has
committed, and parks again as finishes (:class:`Settle`) return credit. No
request per job, and several jobs leave in one push when several are ready.

Observers subscribe (:meth:`Scheduler.subscribe`) to the state-change events
of :mod:`actorq._core._events`: after each batch is committed the actor hands
them that batch's events, then a :class:`~actorq._core._events.Committed`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias
from uuid import UUID

import attrs
import outcome
import trio

from .._core._errors import JobQueueError, QueueClosedError, WaitTimeoutError
from .._core._events import Committed, Event
from .._core._operation import Scope, WaitingOperation, check_access, run
from .._core._records import Assignment, Changes
from .._core._state import QueueState

if TYPE_CHECKING:
    from .._core._ops import FinishJob  # noqa: TC004 (attrs reads annotations lazily)
    from .._stores._base import Store

__all__ = [
    "Call",
    "Callback",
    "Park",
    "Release",
    "Reply",
    "Scheduler",
    "Settle",
    "Subscribe",
    "Subscriber",
    "Subscription",
    "Target",
    "Unsubscribe",
    "Withdraw",
]

log = logging.getLogger("actorq.scheduler")


class Reply:
    """A one-shot reply channel: the actor delivers one outcome, one requester waits for it.

    Built on :func:`trio.lowlevel.wait_task_rescheduled`, the way trio builds
    its own primitives, rather than on a memory channel: there is no buffer,
    so a reply cannot be stranded in one when its requester is cancelled (the
    lost-reply race of trio issue 719 cannot happen). Either the actor
    delivers first, and the requester returns the value even if a cancel
    arrives right after; or the cancel comes first, the reply is *abandoned*,
    and :meth:`deliver` returns False, so the actor knows the value never
    reached anyone (and puts a job it carried back). It is also about three
    times cheaper than a memory channel pair, and this is the hottest path of
    the queue.
    """

    __slots__ = ("_abandoned", "_task", "_value")

    sink: Sink | None = None  # the waiting task takes the value itself

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._value: outcome.Outcome[Any] | None = None
        self._abandoned = False

    @property
    def abandoned(self) -> bool:
        """True once the requester stopped waiting without a reply."""
        return self._abandoned

    def deliver(self, value: outcome.Outcome[Any]) -> bool:
        """Hand ``value`` to the requester. False if it was abandoned (or already answered)."""
        if self._abandoned or self._value is not None:
            return False
        self._value = value
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task, value)
        return True

    def abandon(self) -> None:
        """Give up on the reply (the requester will not wait for it)."""
        if self._value is None:
            self._abandoned = True

    async def wait(self) -> Any:
        """Wait for the reply and return its value (or raise its error).

        Cancellation: if the wait is cancelled before the reply arrives, the
        reply is abandoned and :class:`trio.Cancelled` propagates.
        """
        if self._value is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return self._value.unwrap()
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._task = None
            self._abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        # reschedule() hands the outcome to wait_task_rescheduled, which unwraps it
        return await trio.lowlevel.wait_task_rescheduled(abort)


class Sink(Protocol):
    """Where callbacks queue what they send (a connection's outbox).

    The actor calls :meth:`flush` once it has delivered a round of outcomes
    and pushes, before it waits for anything, so that everything one round
    queued for a connection can leave in one write from the actor's own
    task, with no hop to a writer task. It must be quick and must not block.
    """

    def flush(self) -> None: ...


class Target(Protocol):
    """Where the actor delivers an outcome: a :class:`Reply` a task waits on, or a
    :class:`Callback` that needs no task."""

    @property
    def abandoned(self) -> bool: ...

    @property
    def sink(self) -> Sink | None: ...

    def deliver(self, value: outcome.Outcome[Any]) -> bool: ...


class Callback:
    """A reply target that calls ``fn(outcome)`` in the actor's task, after the commit.

    For front ends that answer without a task per request (the server's read
    loop). ``fn`` must be quick and must not block; it returns False if the
    outcome could not be passed on (a job it carried then goes back). If
    ``fn`` queues its answer in a ``sink``, the actor flushes that sink once
    the round of deliveries is over.
    """

    __slots__ = ("fn", "sink")

    abandoned = False

    def __init__(
        self, fn: Callable[[outcome.Outcome[Any]], bool], sink: Sink | None = None
    ) -> None:
        self.fn = fn
        self.sink = sink

    def deliver(self, value: outcome.Outcome[Any]) -> bool:
        return self.fn(value)


class Subscription:
    """A standing dequeue that the actor feeds, up to a credit of jobs outstanding.

    ``credit`` is what it starts with; each :class:`Settle` adds to it.

    Subclasses say where jobs go: :meth:`push` is called in the actor's task,
    after the commit, with the jobs assigned to the stream since the last
    push, oldest first; it returns False if they cannot reach the consumer
    (then they go back to their places, their tokens void, and the stream
    ends). :meth:`revoke` hears of streamed runs that ended other than by the
    stream's own finish (canceled, reaped, requeued by someone else);
    :meth:`end` that the stream ended (its worker was deleted, the queue
    closed). All three must be quick and must not block.

    ``scope`` limits the stream to a tenant's channels, as for any request.
    ``sink``, if set, is flushed after a round of pushes, as for a
    :class:`Callback`.
    """

    sink: Sink | None = None

    def __init__(self, op: WaitingOperation, credit: int, scope: Scope = None) -> None:
        # ``op`` (checked) says what the stream takes, as a dequeue would
        self.job_types, self.channels = op.matching(scope)
        self.worker_id = op.worker_id
        self._access = None if scope is None else op.access()
        self.opening_credit = credit
        self.scope = scope
        self.closed = False
        # actor-owned: core waiters parked for it, jobs assigned but not pushed,
        # runs ended but not told
        self._waiters: set[int] = set()
        self._outstanding = 0  # jobs handed to it whose credit has not come back
        self._outbox: list[Assignment] = []
        self._revoked: list[tuple[UUID, UUID, bool]] = []

    def check(self, state: QueueState) -> None:
        """Raise unless the stream may open: its tenant's rules, its worker."""
        if self._access is not None and self.scope is not None:
            check_access(state, self._access, self.scope)
        if self.worker_id is not None:
            state.worker_channel(self.worker_id)  # raises for an unknown worker

    def push(self, jobs: list[Assignment]) -> bool:
        raise NotImplementedError

    def revoke(self, runs: list[tuple[UUID, UUID, bool]]) -> None:
        """Runs ``[(job id, token, canceled)]`` that ended without this stream's finish."""

    def end(self, error: JobQueueError) -> None:
        """The stream ended on the queue's side with ``error``; nothing more comes."""


@attrs.define(slots=True, eq=False)
class Call:
    """Run ``fn`` on the state; reply with its return value or its queue error."""

    fn: Callable[[QueueState], object]
    reply: Target


@attrs.define(slots=True, eq=False)
class Park:
    """Run ``prelude``, then dequeue, waiting for a matching job if none is ready.

    ``channels=None`` means any. If ``prelude`` raises, that error is the reply
    and nothing is dequeued.
    """

    prelude: Callable[[QueueState], None] | None
    job_types: tuple[str, ...]
    channels: tuple[str, ...] | None
    worker_id: Any
    reply: Reply


@attrs.define(slots=True, eq=False)
class Withdraw:
    """Stop waiting on behalf of the :class:`Park` that carried ``reply``."""

    reply: Reply


@attrs.define(slots=True, eq=False)
class AwaitSettle:
    """Reply with ``fn``'s value (a job's status) once ``job_id`` has settled.

    ``fn`` raises :class:`WaitTimeoutError` while the job has not settled; any
    other queue error is the reply at once.
    """

    job_id: UUID
    fn: Callable[[QueueState], object]
    reply: Reply


@attrs.define(slots=True, eq=False)
class StopAwaiting:
    """Stop waiting on behalf of the :class:`AwaitSettle` that carried ``reply``."""

    job_id: UUID
    reply: Reply


@attrs.define(slots=True, eq=False)
class Release:
    """Put back a job whose assignment never reached its requester.

    With ``scope``, only a job in one of those channels (a tenant's release).
    """

    assignment: Assignment
    scope: frozenset[str] | None = None


@attrs.define(slots=True, eq=False)
class Subscribe:
    """Start feeding ``subscription``, once its checks pass; reply ``None`` or the error."""

    subscription: Subscription
    reply: Target


@attrs.define(slots=True, eq=False)
class Settle:
    """Finish runs of ``subscription``'s jobs and return ``credit`` to it.

    Replies with ``[(index, error)]`` for the finishes that were refused (a
    token that no longer names its job, say); the others are committed
    before the reply.
    """

    subscription: Subscription
    finishes: Sequence[FinishJob]
    credit: int
    reply: Target | None


@attrs.define(slots=True, eq=False)
class Unsubscribe:
    """Stop feeding ``subscription``. Jobs already pushed stay with their holder."""

    subscription: Subscription


Message: TypeAlias = (
    Call | Park | Withdraw | Release | Subscribe | Settle | Unsubscribe | AwaitSettle | StopAwaiting
)

Subscriber: TypeAlias = Callable[[Sequence[Event]], None]

#: Work one batch may take on, in (type, channel) pairs parked or matched: a
#: dequeue naming thousands of pairs closes its batch, so the actor commits and
#: answers everyone else between such requests instead of after all of them.
BATCH_COST = 20_000


#: Stands for "the first delayed job fell due" among the mailbox's messages.
_DUE: Any = object()


def _cost(message: Message) -> int:
    if type(message) is Park:
        return len(message.job_types) * (1 if message.channels is None else len(message.channels))
    return 1


class _Batch:
    """One batch, applied: what to commit, then what to send once it is committed."""

    __slots__ = (
        "changes",
        "committed",
        "count",
        "error",
        "events",
        "landed",
        "pushes",
        "replies",
        "seconds",
    )

    def __init__(self, replies: list[tuple[Target, outcome.Outcome[Any]]], count: int) -> None:
        self.replies = replies
        self.count = count  # requests it served (0 for a follow-up round)
        self.changes: Changes | None = None
        self.events: list[Event] = []
        self.pushes: list[tuple[Subscription, list[Assignment], list[tuple[UUID, UUID, bool]]]] = []
        self.committed: trio.Event | None = None  # set once its commit ends; None: no commit
        self.error: BaseException | None = None
        self.seconds: float | None = None
        self.landed: Callable[[], None] | None = None  # wakes the actor when committed


class Scheduler:
    """Owns a :class:`QueueState` and serves requests for it, one batch at a time."""

    def __init__(
        self, state: QueueState, store: Store | None = None, *, max_batch: int = 1024
    ) -> None:
        self.state = state
        self.store = store
        self.max_batch = max_batch
        self._send, self._receive = trio.open_memory_channel[Message](math.inf)
        self._parked: dict[Target, int] = {}  # reply channel -> waiter id
        self._parked_by_waiter: dict[int, Target] = {}
        self._subscriptions: set[Subscription] = set()
        self._stream_waiters: dict[int, Subscription] = {}  # core waiter id -> stream
        self._streamed: dict[UUID, Subscription] = {}  # token -> stream holding the run
        self._to_push: dict[Subscription, None] = {}  # streams with jobs or news to push
        self._dirty: dict[Sink, None] = {}  # sinks delivered to since the last flush
        self._unlanded: list[_Batch] = []  # applied, replies not yet sent
        self._building: list[tuple[Target, outcome.Outcome[Any]]] = []  # replies, not closed yet
        # callers of wait(), by the job they wait for: the reply, and what answers it
        self._settle_waiters: dict[UUID, dict[Reply, Callable[[QueueState], object]]] = {}
        state.track_revocations()
        self.batches = 0
        self.messages = 0
        self.commits = 0
        self._subscribers: list[Subscriber] = []

    # ------------------------------------------------------------ requesters

    def post_nowait(self, message: Message) -> None:
        """Hand a message to the actor without blocking; raise QueueClosedError once it stopped."""
        try:
            self._send.send_nowait(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise QueueClosedError() from None

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with the events of every committed batch; return the unsubscribe.

        It is called in the actor's task, synchronously, with the batch's
        events in the order the changes happened and a
        :class:`~actorq._core._events.Committed` last; events of a batch whose
        commit failed never reach it. It must be quick and must not block: the
        queue waits for it. An exception it raises is logged and ignored. It
        sees events only if the state was built with ``track_events=True``.
        """
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    # ------------------------------------------------------------------ actor

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Parked and queued requesters are told the queue closed."""
        try:
            async with trio.open_nursery() as committers:
                task_status.started()
                await self._serve(committers)
        finally:
            self._shut_down()

    async def _next_message(self) -> Any:
        """The next message, or :data:`_DUE` when the first delayed job falls due first.

        The state's timer heap says when that is: the actor sleeps exactly
        until then (trio's clock, so a MockClock drives it), never polling.
        """
        due = self.state.next_due()
        if due is None:
            return await self._receive.receive()
        with trio.move_on_at(due):
            return await self._receive.receive()
        return _DUE

    async def _serve(self, committers: trio.Nursery) -> None:
        receive = self._receive
        inflight: _Batch | None = None  # applied, its commit running, replies held
        # applied since the last close: while a commit runs, the next batch
        # grows here, and it is closed (and committed) when that commit lands
        count = 0
        while True:
            replies = self._building
            if inflight is None and count:
                closed = self._close(replies, count)
                self._building, count = [], 0
                if closed.changes:
                    self._start_commit(closed, committers)
                    inflight = closed
                else:
                    await self._land(closed, committers, follow_up=True)
                continue
            if inflight is None:
                first = await self._next_message()
            else:
                # Whichever comes first: a message to apply while the commit
                # runs, or the commit (then its replies go out at once).
                assert inflight.committed is not None  # only a committing batch is in flight
                with trio.CancelScope() as waiting:
                    inflight.landed = waiting.cancel
                    if inflight.committed.is_set():
                        waiting.cancel()
                    first = await self._next_message()
                inflight.landed = None
                if waiting.cancelled_caught:
                    await self._land(inflight, committers, follow_up=not count)
                    inflight = None
                    continue
            batch = [first]
            cost = _cost(first)
            while len(batch) < self.max_batch and cost < BATCH_COST:
                try:
                    message = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(message)
                cost += _cost(message)
            self.batches += 1
            self.messages += len(batch)
            count += len(batch)
            for message in batch:
                self._apply(message, replies)
                # before the next message: a Withdraw must not find a waiter that
                # this message already served
                self._collect_assignments(replies)

    def _close(self, replies: list[tuple[Target, outcome.Outcome[Any]]], count: int) -> _Batch:
        """Everything one batch did, taken out of the state, to commit and then send."""
        self._collect_assignments(replies)
        self._collect_revocations()
        self._collect_settled(replies)
        batch = _Batch(replies, count)
        if self.store is not None:
            batch.changes = self.state.take_changes()
        if self._subscribers:
            batch.events = self.state.take_events()
        for sub in self._to_push:
            batch.pushes.append((sub, sub._outbox, sub._revoked))
            sub._outbox, sub._revoked = [], []
        self._to_push.clear()
        self._unlanded.append(batch)
        return batch

    def _start_commit(self, batch: _Batch, committers: trio.Nursery) -> None:
        store = self.store
        assert store is not None
        committed = batch.committed = trio.Event()

        async def commit() -> None:
            start = trio.current_time()
            assert batch.changes is not None
            try:
                await store.commit(batch.changes)
            except BaseException as exc:
                batch.error = exc
                if not isinstance(exc, Exception):
                    raise  # Cancelled and the like: the actor is going away
            else:
                batch.seconds = trio.current_time() - start
            finally:
                committed.set()
                if batch.landed is not None:
                    batch.landed()

        committers.start_soon(commit)

    async def _land(self, batch: _Batch, committers: trio.Nursery, *, follow_up: bool) -> None:
        """Wait for ``batch``'s commit, then send its replies and pushes.

        A reply that cannot be delivered because its requester went away gives
        its job back, which is itself a change to commit and may hand the job
        to another waiter. With ``follow_up``, rounds run until quiet; without
        (a later batch is being applied), those changes join that batch.
        """
        while True:
            if batch.committed is not None:
                await batch.committed.wait()
                if batch.error is not None:
                    for pending in self._unlanded:
                        self._fail_all(pending.replies, batch.error)
                    self._unlanded.clear()
                    self._fail_all(self._building, batch.error)  # applied behind it
                    self._building = []
                    self.state.take_events()  # not committed: never published
                    raise batch.error
                self.commits += 1
            self._unlanded.remove(batch)
            if self._subscribers:
                self._publish(batch.events, batch.count, batch.seconds)
            for reply, value in batch.replies:
                self._deliver(reply, value)
            self._push(batch.pushes)
            self._flush_sinks()
            if not follow_up:
                return
            after = self._close([], 0)
            if not (after.replies or after.pushes or after.changes):
                self._unlanded.remove(after)
                if after.events and self._subscribers:
                    self._publish(after.events, 0, None)
                return
            batch = after
            if batch.changes:
                self._start_commit(batch, committers)

    def _apply(self, message: Message, replies: list[tuple[Target, outcome.Outcome[Any]]]) -> None:
        state = self.state
        if message is _DUE:
            state.release_due()
            return
        if isinstance(message, (Call, Park)):
            if message.reply.abandoned:
                return  # its requester was cancelled before we got to it: do nothing
            try:
                if isinstance(message, Call):
                    replies.append((message.reply, outcome.Value(message.fn(state))))
                    return
                if message.prelude is not None:
                    message.prelude(state)
                got = state.add_waiter(message.job_types, message.channels, message.worker_id)
            except JobQueueError as exc:
                replies.append((message.reply, outcome.Error(exc)))
                return
            except Exception as exc:  # a bug; the state checks before it changes anything
                log.exception("request failed inside the scheduler")
                replies.append((message.reply, outcome.Error(exc)))
                return
            if isinstance(got, Assignment):
                replies.append((message.reply, outcome.Value(got)))
            else:
                self._parked[message.reply] = got
                self._parked_by_waiter[got] = message.reply
        elif type(message) is Withdraw:
            waiter_id = self._parked.pop(message.reply, None)
            if waiter_id is not None:
                del self._parked_by_waiter[waiter_id]
                state.remove_waiter(waiter_id)
        elif type(message) is Release:
            job_id, scope = message.assignment.id, message.scope
            if scope is None or state.has_job_in(job_id, scope):
                state.release(job_id, message.assignment.token)
        elif type(message) is AwaitSettle:
            if message.reply.abandoned:
                return
            try:
                replies.append((message.reply, outcome.Value(message.fn(state))))
            except WaitTimeoutError:  # not settled yet: answered when it is
                # settles are recorded only while somebody waits for one
                state.track_settles()
                waiting = self._settle_waiters.setdefault(message.job_id, {})
                waiting[message.reply] = message.fn
            except JobQueueError as exc:
                replies.append((message.reply, outcome.Error(exc)))
        elif type(message) is StopAwaiting:
            others = self._settle_waiters.get(message.job_id)
            if others is not None:
                others.pop(message.reply, None)
                if not others:
                    del self._settle_waiters[message.job_id]
                    if not self._settle_waiters:
                        state.track_settles(False)
        elif type(message) is Settle:
            self._settle_stream(message, replies)
        elif type(message) is Subscribe:
            self._subscribe(message, replies)
        elif type(message) is Unsubscribe:
            self._close_stream(message.subscription)

    # ------------------------------------------------------------ streams

    def _subscribe(
        self, message: Subscribe, replies: list[tuple[Target, outcome.Outcome[Any]]]
    ) -> None:
        sub = message.subscription
        if message.reply.abandoned or sub.closed:
            return
        try:
            sub.check(self.state)
        except JobQueueError as exc:
            sub.closed = True
            replies.append((message.reply, outcome.Error(exc)))
            return
        self._subscriptions.add(sub)
        credit, sub.opening_credit = sub.opening_credit, 0
        self._feed(sub, credit)
        replies.append((message.reply, outcome.Value(None)))

    def _settle_stream(
        self, message: Settle, replies: list[tuple[Target, outcome.Outcome[Any]]]
    ) -> None:
        sub = message.subscription
        state = self.state
        streamed = self._streamed
        refused: list[tuple[int, JobQueueError]] = []
        for index, finish in enumerate(message.finishes):
            if finish.token is not None and streamed.get(finish.token) is sub:
                del streamed[finish.token]  # its own finish: nothing to tell it
            try:
                run(finish, state, sub.scope)
            except JobQueueError as exc:
                refused.append((index, exc))
        # never more credit back than jobs were handed out: a consumer cannot
        # grow the waiters it keeps beyond the credit it opened with
        credit = min(message.credit, sub._outstanding)
        if credit and not sub.closed:
            sub._outstanding -= credit
            self._feed(sub, credit)
        if message.reply is not None:
            replies.append((message.reply, outcome.Value(refused)))

    def _feed(self, sub: Subscription, credit: int) -> None:
        # One core waiter per unit of credit: the core hands each the next
        # matching job, oldest waiter first, so streams share jobs in turn.
        add_waiter = self.state.add_waiter
        for _ in range(credit):
            try:
                got = add_waiter(sub.job_types, sub.channels, sub.worker_id)
            except JobQueueError as exc:  # its worker was deleted meanwhile
                self._end_stream(sub, exc)
                return
            if type(got) is int:
                sub._waiters.add(got)
                self._stream_waiters[got] = sub
            else:
                assert isinstance(got, Assignment)
                self._handed(sub, got)

    def _handed(self, sub: Subscription, got: Assignment) -> None:
        sub._outstanding += 1
        sub._outbox.append(got)
        self._streamed[got.token] = sub
        self._to_push[sub] = None

    def _end_stream(self, sub: Subscription, error: JobQueueError) -> None:
        self._close_stream(sub)
        try:
            sub.end(error)
        except Exception:
            log.exception("a stream failed to end")

    def _close_stream(self, sub: Subscription) -> None:
        if sub.closed:
            return
        sub.closed = True
        self._subscriptions.discard(sub)
        for waiter_id in sub._waiters:
            del self._stream_waiters[waiter_id]
            self.state.remove_waiter(waiter_id)  # False for one served just now: fine
        sub._waiters.clear()
        # jobs assigned but not yet pushed never reach anyone: back they go
        for got in sub._outbox:
            self.state.release(got.id, got.token)
        sub._outbox.clear()
        sub._revoked.clear()
        self._to_push.pop(sub, None)

    def _collect_revocations(self) -> None:
        streamed = self._streamed
        if not streamed:
            self.state.take_revocations()
            return
        for job_id, token, canceled in self.state.take_revocations():
            sub = streamed.pop(token, None)
            if sub is not None and not sub.closed:
                sub._revoked.append((job_id, token, canceled))
                self._to_push[sub] = None

    def _push(
        self, pushes: list[tuple[Subscription, list[Assignment], list[tuple[UUID, UUID, bool]]]]
    ) -> None:
        # After the commit: what each stream was handed, then what it lost.
        dirty = self._dirty
        for sub, jobs, revoked in pushes:
            if sub.sink is not None:
                dirty[sub.sink] = None
            if sub.closed:
                for got in jobs:  # it closed meanwhile: nobody takes these
                    self.state.release(got.id, got.token)
                continue
            try:
                ok = not jobs or sub.push(jobs)
            except Exception:
                log.exception("a stream failed to take its jobs")
                ok = False
            if not ok:
                for got in jobs:
                    self.state.release(got.id, got.token)
                self._close_stream(sub)
                continue
            if revoked:
                try:
                    sub.revoke(revoked)
                except Exception:
                    log.exception("a stream failed to hear of ended runs")

    def _publish(self, events: list[Event], requests: int, seconds: float | None) -> None:
        if not (events or requests or seconds is not None):
            return  # a quiet follow-up round
        events.append(Committed(requests, seconds, self.state.waiter_count))
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(events)
            except Exception:
                log.exception("an event subscriber failed; the queue carries on")

    def _collect_settled(self, replies: list[tuple[Target, outcome.Outcome[Any]]]) -> None:
        # answered with the batch that settled the job: after its commit
        waiters = self._settle_waiters
        if not waiters:
            return
        for job_id in self.state.take_settled():
            waiting = waiters.pop(job_id, None)
            if waiting is None:
                continue
            for reply, fn in waiting.items():
                try:
                    replies.append((reply, outcome.Value(fn(self.state))))
                except JobQueueError as exc:  # deleted
                    replies.append((reply, outcome.Error(exc)))
        if not waiters:
            self.state.track_settles(False)

    def _collect_assignments(self, replies: list[tuple[Target, outcome.Outcome[Any]]]) -> None:
        for waiter_id, got in self.state.take_assignments():
            reply = self._parked_by_waiter.pop(waiter_id, None)
            if reply is None:
                sub = self._stream_waiters.pop(waiter_id, None)
                if sub is None:
                    continue  # its stream closed earlier in this batch; it holds nothing
                sub._waiters.discard(waiter_id)
                if isinstance(got, Assignment):
                    self._handed(sub, got)
                else:
                    self._end_stream(sub, got)
                continue
            del self._parked[reply]
            value = outcome.Value(got) if isinstance(got, Assignment) else outcome.Error(got)
            replies.append((reply, value))

    def _flush_sinks(self) -> None:
        # Every path that delivers ends here before the actor waits again:
        # a sink never holds what a round queued while the actor sleeps.
        dirty = self._dirty
        for sink in dirty:  # a flush only writes: it delivers nothing that adds here
            try:
                sink.flush()
            except Exception:
                log.exception("a connection failed to flush its replies")
        dirty.clear()

    def _deliver(self, reply: Target, value: outcome.Outcome[Any]) -> None:
        sink = reply.sink
        if sink is not None:
            self._dirty[sink] = None
        if not reply.deliver(value) and isinstance(value, outcome.Value):
            got = value.value
            if isinstance(got, Assignment):
                log.debug("requester of job %s went away; putting it back", got.id)
                self.state.release(got.id, got.token)

    def _fail_all(
        self, replies: list[tuple[Target, outcome.Outcome[Any]]], exc: BaseException
    ) -> None:
        message = f"the store failed to commit: {exc!r}"
        for reply, _ in replies:  # one exception each: each is raised in its own task
            self._deliver(reply, outcome.Error(QueueClosedError(message)))
        self._flush_sinks()

    def _shut_down(self) -> None:
        # A fresh outcome for each reply: an outcome can be unwrapped only once.
        for batch in self._unlanded:  # applied, never committed: nobody hears otherwise
            for reply, _ in batch.replies:
                self._deliver(reply, outcome.Error(QueueClosedError()))
        self._unlanded.clear()
        for reply, _ in self._building:
            self._deliver(reply, outcome.Error(QueueClosedError()))
        self._building = []
        for reply in self._parked:
            self._deliver(reply, outcome.Error(QueueClosedError()))
        self._parked.clear()
        self._parked_by_waiter.clear()
        for waiting in self._settle_waiters.values():
            for reply in waiting:
                self._deliver(reply, outcome.Error(QueueClosedError()))
        self._settle_waiters.clear()
        for sub in list(self._subscriptions):
            sub._outbox.clear()  # not committed: the store never saw them handed out
            self._end_stream(sub, QueueClosedError())
        self._send.close()
        while True:
            try:
                message = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            target = (
                message.reply
                if isinstance(message, Call | Park | Subscribe | Settle | AwaitSettle)
                else None
            )
            if target is not None:
                self._deliver(target, outcome.Error(QueueClosedError()))
        self._receive.close()
        self._flush_sinks()
