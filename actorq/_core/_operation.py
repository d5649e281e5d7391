"""The operation base classes: what every entry of the operation table is.

See :mod:`actorq._core._ops` for the contract and the table itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Generic, NewType, TypeAlias, TypeVar
from uuid import UUID

import attrs
import orjson

from . import _validate as v
from ._errors import NotExistError, ProtocolError, WorkerNotExistError
from ._json import loads
from ._models import DequeuedJob
from ._records import Assignment

if TYPE_CHECKING:
    from ._state import QueueState

__all__ = [
    "MAX_MATCH_KEYS",
    "NOTHING",
    "NULL",
    "REGISTRY",
    "SINCE_3",
    "Access",
    "JsonText",
    "Operation",
    "Scope",
    "WaitingOperation",
    "check_access",
    "run",
    "token_visible",
]

JsonText = NewType("JsonText", str)
"""A JSON value, kept as the text it was accepted as (args and results)."""

NULL: JsonText = JsonText("null")

"""JSON ``null``, the default args and result."""

MAX_MATCH_KEYS = 10_000
"""The most (job type, channel) pairs one dequeue may name."""

SINCE_3: dict[str, int] = {"since": 3}
"""Field metadata: the field exists from protocol version 3 on. A client leaves
it out of a request while it has its default (so an older server reads the
request), and a server leaves it out of a reply to an older client."""

Scope: TypeAlias = frozenset[str] | None
"""The channels a caller may use; ``None`` for every channel."""

R = TypeVar("R")  # what the core returns
P = TypeVar("P")  # what the in-process API returns


@attrs.frozen
class Access:
    """What an operation touches, as far as the tenancy rules are concerned.

    ``channels`` must be open to the caller (else ``forbidden``); ``jobs``,
    ``workers`` and the jobs ``tokens`` name, outside the caller's channels,
    do not exist for it; ``forbidden`` names an operation no tenant may run
    at all.
    """

    jobs: tuple[UUID, ...] = ()
    channels: tuple[str, ...] = ()
    workers: tuple[UUID, ...] = ()
    tokens: tuple[UUID, ...] = ()
    forbidden: str | None = None


NOTHING = Access()

REGISTRY: dict[str, type[Operation[Any, Any]]] = {}
"""Every operation class with a ``NAME``, by name, in definition order."""


def check_access(state: QueueState, access: Access, scope: frozenset[str]) -> None:
    """Raise unless a caller limited to ``scope`` may run an operation touching ``access``."""
    if access.forbidden is not None:
        raise ProtocolError(f"{access.forbidden} are not open to tenant tokens", "forbidden")
    for channel in access.channels:
        if channel not in scope:
            raise ProtocolError(f"channel {channel!r} is not open to this token", "forbidden")
    for job_id in access.jobs:
        # A job outside the token's channels does not exist, as far as it can tell.
        if state.job_channel(job_id) not in scope:
            raise NotExistError(f"job {job_id} does not exist")
    for worker_id in access.workers:
        if state.worker_channel(worker_id) not in scope:
            raise WorkerNotExistError(f"worker {worker_id} does not exist")
    for token in access.tokens:
        # the error an unknown token gets: a token tells a tenant nothing
        if not token_visible(state, token, scope):
            raise NotExistError("token does not name a running job")


def token_visible(state: QueueState, token: UUID, scope: frozenset[str]) -> bool:
    """False if ``token`` names a job outside ``scope`` (an unknown token is visible:
    the operation itself then says it names nothing)."""
    job_id = state.token_job(token)
    return job_id is None or state.job_channel(job_id) in scope


def run(op: Operation[R, Any], state: QueueState, scope: Scope) -> R:
    """Apply ``op`` to ``state`` for a caller limited to ``scope``: the actor's side of a call."""
    if scope is not None:
        check_access(state, op.access(), scope)
    return op.apply(state, scope)


@attrs.frozen(kw_only=True)
class Operation(Generic[R, P]):
    """Base of every operation. See the module docstring for the contract."""

    NAME: ClassVar[str] = ""
    RESULT: ClassVar[Any] = None
    #: Carries the token of the job it acts on; a remote client fills it in
    #: from the jobs it holds, so the server acts only while that token still
    #: names the job.
    TOKEN: ClassVar[bool] = False
    #: Ends the caller's hold on ``job_id`` when it succeeds.
    SETTLES: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # attrs rebuilds slotted classes, so the final class replaces the first
        if cls.__dict__.get("NAME"):
            REGISTRY[cls.NAME] = cls

    def checked(self) -> Operation[R, P]:
        return self

    def access(self) -> Access:
        return NOTHING

    def apply(self, state: QueueState, scope: Scope) -> R:
        raise NotImplementedError

    def apply_unscoped(self, state: QueueState) -> R:
        """:meth:`apply` for a caller who may see every channel (the in-process API)."""
        return self.apply(state, None)

    def present(self, raw: R) -> P:
        result: P = raw  # type: ignore[assignment]
        return result

    def to_wire(self, raw: R) -> Any:
        return raw


def _job(got: Assignment | None, args: Any) -> DequeuedJob:
    assert got is not None
    return DequeuedJob(
        id=got.id,
        token=got.token,
        dependencies=list(got.dependencies),
        type=got.type,
        args=args,
        channel=got.channel,
    )


def dequeued(got: Assignment | None) -> DequeuedJob:
    """A job handed out, as the in-process API returns it: args decoded."""
    assert got is not None
    return _job(got, loads(got.args))


def dequeued_for_wire(got: Assignment | None) -> DequeuedJob:
    """A job handed out, for a reply frame: args embedded as the stored text."""
    assert got is not None
    return _job(got, orjson.Fragment(got.args))


@attrs.frozen(kw_only=True)
class WaitingOperation(Operation[Assignment | None, DequeuedJob]):
    """An operation that hands out a job, waiting up to ``timeout`` for one."""

    RESULT = DequeuedJob

    job_types: tuple[str, ...]
    channels: tuple[str, ...] = ("",)
    any_channel: bool = False
    timeout: float | None = None
    worker_id: UUID | None = None

    def _checked_wait(self) -> tuple[Any, ...]:
        any_channel = bool(self.any_channel)
        types = v.check_job_types(self.job_types)
        channels = () if any_channel else v.check_channels(self.channels)
        if len(types) * max(len(channels), 1) > MAX_MATCH_KEYS:
            # each (type, channel) pair is a key the scheduler looks at and
            # parks a waiter under: one request must not cost it unbounded work
            raise ValueError(
                f"{len(types)} job types x {len(channels)} channels is more than "
                f"{MAX_MATCH_KEYS} (type, channel) pairs"
            )
        return (
            types,
            channels,
            any_channel,
            v.check_timeout(self.timeout),
            v.check_optional_uuid(self.worker_id, "worker_id"),
        )

    def _wait_access(self, jobs: tuple[UUID, ...] = ()) -> Access:
        workers = () if self.worker_id is None else (self.worker_id,)
        return Access(
            jobs=jobs, channels=() if self.any_channel else self.channels, workers=workers
        )

    def matching(self, scope: Scope) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        """The job types and channels to match (``None``: every channel)."""
        if not self.any_channel:
            return self.job_types, self.channels
        # a tenant's "any channel" is any of its channels
        return self.job_types, None if scope is None else tuple(sorted(scope))

    def prelude(self, state: QueueState) -> None:
        """What runs before the dequeue, in the same step."""

    def apply(self, state: QueueState, scope: Scope) -> Assignment | None:
        self.prelude(state)
        types, channels = self.matching(scope)
        return state.dequeue(types, channels, self.worker_id)

    def present(self, raw: Assignment | None) -> DequeuedJob:
        return dequeued(raw)

    def to_wire(self, raw: Assignment | None) -> DequeuedJob:
        return dequeued_for_wire(raw)
