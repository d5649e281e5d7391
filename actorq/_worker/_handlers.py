"""Handler registration: checking a handler's signature, structuring its args, calling it."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._core._json import converter

if typing.TYPE_CHECKING:
    from ._job import Job

__all__ = ["Handler", "make_handler"]


@attrs.frozen
class Handler:
    """A registered handler: the function, how to call it, and what its args become."""

    fn: Callable[..., Any]
    is_async: bool
    args_type: Any  # None: the handler takes the job only; Any: args as JSON

    async def __call__(self, job: Job, threads: trio.CapacityLimiter) -> Any:
        """Run the handler for ``job`` and return what it returns.

        Args that do not structure into ``args_type`` raise the converter's
        error, as the handler's own error would be raised. A sync handler runs
        in a thread taken from ``threads``; on cancellation the call returns
        at once and the thread is left to run out in the background.
        """
        args: tuple[Any, ...] = (job,)
        if self.args_type is not None:
            value = job.args
            if self.args_type is not Any:
                value = converter.structure(value, self.args_type)
            args = (job, value)
        if self.is_async:
            return await self.fn(*args)
        # a thread cannot be interrupted: on cancellation, stop waiting for it and
        # let it run out in the background (the handler may poll job.cancel_requested)
        return await trio.to_thread.run_sync(
            self.fn, *args, abandon_on_cancel=True, limiter=threads
        )


def make_handler(job_type: str, fn: Callable[..., Any]) -> Handler:
    """Check that ``fn`` takes ``(job)`` or ``(job, args)``; raise :class:`TypeError` if not."""
    if not callable(fn):
        raise TypeError(f"handler for {job_type!r} is not callable")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot inspect handler for {job_type!r}: {exc}") from None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) not in (1, 2) or any(
        p.default is p.empty for p in params if p not in positional and p.kind is p.KEYWORD_ONLY
    ):
        raise TypeError(
            f"handler for {job_type!r} must take (job) or (job, args), not {inspect.signature(fn)}"
        )
    args_type: Any = None
    if len(positional) == 2:
        name = positional[1].name
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            annotation = positional[1].annotation
            if isinstance(annotation, str):
                raise TypeError(
                    f"cannot resolve the annotation {annotation!r} of handler for {job_type!r}; "
                    "define the args class at module level"
                ) from None
            hints = {} if annotation is inspect.Parameter.empty else {name: annotation}
        args_type = hints.get(name, Any)
    # an object whose __call__ is async is an async handler too
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
    return Handler(fn, is_async, args_type)
