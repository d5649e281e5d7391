"""Queue kinds for the conformance suite contributed by the sqlite implementation.

``KINDS`` maps a kind name to a zero-argument factory returning an async
context manager that yields a fresh, empty :class:`actorq.JobQueue`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

KINDS: dict[str, Callable[[], AbstractAsyncContextManager[Any]]] = {}
