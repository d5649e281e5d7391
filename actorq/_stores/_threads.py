"""Store work on worker threads, safe under :class:`trio.testing.MockClock`.

Every store runs its blocking database calls through :func:`run_sync`, never
through :func:`trio.to_thread.run_sync` directly. The difference matters only
under a mock clock: a task waiting for a thread looks blocked to trio, so a
MockClock with autojump would jump to the next deadline while a commit is on
the disk, and a ``dequeue(timeout=5)`` would time out although its job was
enqueued at t=1. :func:`run_sync` suspends autojump for exactly as long as
store work is in flight, so virtual time stands still while the database
works, as if the disk were infinitely fast.

What is guaranteed, under a MockClock of any ``autojump_threshold``:

* No autojump happens while a call to :func:`run_sync` is in flight in this
  trio run (from its start, including a wait for its limiter, until its
  thread has returned). Concurrent calls nest: autojump resumes when the
  last one ends, with the threshold the clock had when the first one began,
  also when a call fails or is cancelled.
* Explicit time travel still works: ``clock.jump()`` and a clock ``rate``
  other than 0 move virtual time as they always do (a ``rate`` above 0 lets
  virtual time pass while a thread works: that is what it asks for).
* A finite ``autojump_threshold`` assigned while store work is in flight
  takes effect at once and is kept when the work ends.

What is not: :func:`trio.testing.wait_all_tasks_blocked` may return while
store work is in flight, because trio cannot see a thread; "all tasks
blocked" then does not mean "the queue is idle". Await the queue call whose
effect you need instead: every call is answered only after its batch was
committed.

Under the real clock the only cost is one type check of the current clock.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple, Unpack

import attrs
import trio
import trio.lowlevel
import trio.testing

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["run_sync"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@attrs.define
class _Suspension:
    """Autojump suspended in one trio run: how many calls hold it, and what to restore."""

    clock: trio.testing.MockClock
    saved: float
    holders: int = 0


_SUSPENSION: trio.lowlevel.RunVar[_Suspension | None] = trio.lowlevel.RunVar(
    "actorq_autojump_suspension", default=None
)

_MockClock = trio.testing.MockClock
_current_clock = trio.lowlevel.current_clock
_to_thread = trio.to_thread.run_sync


async def run_sync(
    fn: Callable[[Unpack[Ts]], T],
    *args: *Ts,
    limiter: trio.CapacityLimiter | None = None,
) -> T:
    """Run ``fn(*args)`` on a worker thread and return its result (or raise its error).

    As :func:`trio.to_thread.run_sync` without ``abandon_on_cancel``: a
    cancellation that arrives while ``fn`` runs does not interrupt it; the
    call returns ``fn``'s result (or raises its error) and the cancellation
    takes effect at the caller's next checkpoint, so the thread never
    outlives the call. ``limiter`` bounds the
    threads as there. Under a :class:`trio.testing.MockClock`, autojump is
    suspended for the whole call (see the module's documentation).
    """
    clock = _current_clock()
    if not isinstance(clock, _MockClock):
        return await _to_thread(fn, *args, limiter=limiter)
    _hold(clock)
    try:
        return await _to_thread(fn, *args, limiter=limiter)
    finally:
        _release()


def _hold(clock: trio.testing.MockClock) -> None:
    suspension = _SUSPENSION.get()
    if suspension is None:
        suspension = _Suspension(clock, clock.autojump_threshold)
        _SUSPENSION.set(suspension)
        clock.autojump_threshold = math.inf
    suspension.holders += 1


def _release() -> None:
    suspension = _SUSPENSION.get()
    assert suspension is not None, "store thread bookkeeping out of step"
    suspension.holders -= 1
    if suspension.holders:
        return
    _SUSPENSION.set(None)
    # A threshold other than the one set here was assigned by the test while
    # the work was in flight: that newer wish stands.
    if suspension.clock.autojump_threshold == math.inf:
        suspension.clock.autojump_threshold = suspension.saved
