"""Fixtures shared by the suite.

``queue`` yields a fresh :class:`actorq.JobQueue` for every implementation in
``QUEUE_KINDS``; the conformance suite (``test_conformance.py``) runs once per
kind, so every implementation is held to the very same tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from _kinds_postgres import KINDS as POSTGRES_KINDS
from _kinds_remote import KINDS as REMOTE_KINDS
from _kinds_sqlite import KINDS as SQLITE_KINDS

import actorq

QueueFactory = Callable[[], AbstractAsyncContextManager[actorq.JobQueue]]


def _memory() -> AbstractAsyncContextManager[actorq.JobQueue]:
    return actorq.open_queue()


def _memory_store() -> AbstractAsyncContextManager[actorq.JobQueue]:
    return actorq.open_queue(actorq.MemoryStore())


QUEUE_KINDS: dict[str, QueueFactory] = {
    "memory": _memory,
    "memory-store": _memory_store,
    **SQLITE_KINDS,
    **REMOTE_KINDS,
    **POSTGRES_KINDS,
}


@pytest.fixture(params=sorted(QUEUE_KINDS))
def queue_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def queue(queue_kind: str) -> AsyncIterator[Any]:
    async with QUEUE_KINDS[queue_kind]() as q:
        yield q
