"""The one exception policy of actorq's context managers and serving calls.

trio's strict exception groups make an internal nursery wrap even a single
error. :class:`ErrorPolicy` sits around such a nursery and decides what the
caller sees, so that every public entry point (``open_queue``, ``connect``,
``connect_stream``, ``serve``, ``Worker.run``) behaves the same way
(``docs/errors.md`` states it for users):

1. A :class:`BaseException` that is not an :class:`Exception`
   (:class:`KeyboardInterrupt`, :class:`SystemExit`, ...) other than
   :class:`trio.Cancelled` comes out as itself, whoever raised it.
2. Otherwise an exception raised by the user's code, recorded with
   :meth:`ErrorPolicy.user` (the body of an ``async with``) or
   :meth:`ErrorPolicy.record_user` (a handler), comes out as itself, with its
   traceback, ``__cause__`` and ``__context__`` as they were.
3. Otherwise a failure of one of actorq's own tasks comes out as one typed
   error: a :class:`JobQueueError` as itself, anything else as a
   :class:`QueueClosedError` whose ``__cause__`` is the original.
4. Otherwise (only cancellations) the first :class:`trio.Cancelled` comes out,
   so that the cancel scope that owns it catches it.

Whatever loses is kept visible as a note on the winner. When the winner is a
:class:`JobQueueError` that the user's code got from a queue call (the queue
closed under it) and has no ``__cause__``, the internal failure becomes its
cause. Cancellations never become anything else.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal, NoReturn

import trio

from ._errors import JobQueueError, QueueClosedError

if TYPE_CHECKING:
    import types
    from collections.abc import Iterator

__all__ = ["ErrorPolicy", "leaves"]


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` (itself, if it is no group), depth first, in order."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    out: list[BaseException] = []
    for inner in exc.exceptions:
        out.extend(leaves(inner))
    return out


def _is_passthrough(exc: BaseException) -> bool:
    return not isinstance(exc, Exception | trio.Cancelled)


class ErrorPolicy:
    """Apply the policy to whatever escapes the ``with`` block it guards.

    ``what`` names the component in the message of a :class:`QueueClosedError`
    made for an untyped internal failure (``"the queue"``, ``"the server"``).
    Use it (``with`` or ``async with``) around the internal nursery, and mark
    the user's code inside::

        policy = ErrorPolicy("the queue")
        async with policy, trio.open_nursery() as nursery:
            ...
            with policy.user():
                yield queue

    An exception that is not a group passes through unchanged: the nursery
    has not wrapped it, so it did not come out of a task.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._user: list[BaseException] = []

    @contextmanager
    def user(self) -> Iterator[None]:
        """Mark the enclosed code as the user's: what it raises is the user's exception."""
        try:
            yield
        except BaseException as exc:
            self.record_user(exc)
            raise

    def record_user(self, exc: BaseException) -> None:
        """Note that ``exc`` was raised by the user's code (cancellations are not)."""
        if not isinstance(exc, trio.Cancelled):
            self._user.append(exc)

    def __enter__(self) -> ErrorPolicy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> Literal[False]:
        if isinstance(exc, BaseExceptionGroup):
            _raise_as_is(self.resolve(exc))
        return False

    async def __aenter__(self) -> ErrorPolicy:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)

    def resolve(self, group: BaseExceptionGroup[BaseException]) -> BaseException:
        """The one exception to raise in place of ``group``, with notes on what lost."""
        found = leaves(group)
        user_ids = {id(e) for e in self._user}
        passthrough = [e for e in found if _is_passthrough(e)]
        user = [e for e in found if id(e) in user_ids and not _is_passthrough(e)]
        internal = [e for e in found if isinstance(e, Exception) and id(e) not in user_ids]
        cancelled = [e for e in found if isinstance(e, trio.Cancelled)]
        if passthrough:
            winner = passthrough[0]
        elif user:
            winner = user[0]
        elif internal:
            winner = self._typed(internal[0])
        elif cancelled:
            winner = cancelled[0]
        else:  # an empty group cannot be built; keep the group rather than guess
            return group
        if (
            internal
            and any(winner is e for e in user)
            and isinstance(winner, JobQueueError)
            and winner.__cause__ is None
        ):
            # An actorq error raised into the user's code (a queue call finding
            # the queue closed) most likely stems from the internal failure.
            winner.__cause__ = internal[0]
        for other in passthrough + user + internal:
            if other is not winner and other is not winner.__cause__:
                winner.add_note(f"actorq: meanwhile, also raised: {other!r}")
        return winner

    def _typed(self, exc: Exception) -> JobQueueError:
        if isinstance(exc, JobQueueError):
            return exc
        error = QueueClosedError(f"{self.what} stopped: an internal task failed: {exc!r}")
        error.__cause__ = exc
        return error


def _raise_as_is(exc: BaseException) -> NoReturn:
    # Raising here, while the group is being handled, would set the group as
    # the exception's __context__; put back the context it was raised with.
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context
