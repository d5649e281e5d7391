"""A pytest plugin for testing code that uses actorq, in zero wall time.

Enable it in a ``conftest.py`` with ``pytest_plugins = ["actorq.testing"]``
(it is also registered as a ``pytest11`` entry point, so an installed actorq
offers it to every test run). It needs pytest-trio.

Fixtures:

``actorq_harness``
    A :class:`Harness`: an in-process queue (:attr:`Harness.queue`) with the
    heartbeat reaper running, plus helpers to start :class:`actorq.Worker`\\ s,
    wait for jobs, let time pass and simulate crashed workers.
``actorq_queue``
    The harness's queue alone, a :class:`actorq.LocalQueue`.
``actorq_maintenance``
    The :class:`actorq.Maintenance` config of the queue (upstream's defaults);
    override it in your ``conftest.py`` to test other timeouts or retention.
``actorq_store``
    The queue's store: ``None`` (memory). Override it with a fixture that
    returns a :class:`actorq.Store` or a store URL: a
    :class:`actorq.MemoryStore` to test restarts, or a fresh SQLite file to
    run on the durable store itself::

        @pytest.fixture
        def actorq_store(tmp_path):
            return f"sqlite:///{tmp_path / 'queue.db'}"

    Durable stores work under the mock clock: while their work is on a
    thread, the queue holds autojump, so a commit takes no virtual time.
    :func:`trio.testing.wait_all_tasks_blocked` may still return during a
    commit (trio cannot see threads): await the queue call instead.

Every test that uses one of these fixtures runs under
:class:`trio.testing.MockClock` with autojump, unless it asks for a clock
fixture itself: whenever every task is waiting, the clock jumps to the next
deadline, so a two-minute heartbeat timeout passes in an instant. The queue's
wall clock (job timestamps) follows the mock clock too, from
:data:`MOCK_EPOCH`.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from ._actor._local import LocalQueue, open_queue
from ._actor._maintenance import Maintenance
from ._core._models import JobState, JobStatus
from ._worker._worker import Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence
    from uuid import UUID

    from ._stores._base import Store

__all__ = ["MOCK_EPOCH", "Harness", "mock_wall_clock"]

#: The wall-clock time at trio time 0 in a test under this plugin.
MOCK_EPOCH = datetime(2030, 1, 1, tzinfo=UTC)

_FIXTURES = frozenset({"actorq_harness", "actorq_queue", "actorq_clock"})


def mock_wall_clock() -> datetime:
    """Wall time that follows trio's clock: :data:`MOCK_EPOCH` plus ``trio.current_time()``."""
    return MOCK_EPOCH + timedelta(seconds=trio.current_time())


class Harness:
    """An in-process queue and the workers a test starts on it.

    Workers started with :meth:`start` run in the background until the test
    ends; they are then shut down with no grace period (handlers cancelled,
    jobs requeued). A worker that raises fails the test.
    """

    def __init__(self, queue: LocalQueue, nursery: trio.Nursery) -> None:
        self.queue = queue
        self._nursery = nursery
        self._workers: list[Worker] = []

    @property
    def clock(self) -> trio.testing.MockClock:
        """The test's mock clock."""
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock)
        return clock

    def worker(self, channels: Sequence[str] | None = ("",), **options: Any) -> Worker:
        """A new :class:`actorq.Worker` on this queue; register handlers, then :meth:`start` it."""
        return Worker(self.queue, channels, **options)

    async def start(self, worker: Worker) -> Worker:
        """Run ``worker`` in the background; returns once it is registered."""
        await self._nursery.start(worker.run)
        self._workers.append(worker)
        return worker

    def crash(self, worker: Worker) -> None:
        """Make ``worker`` stop as if its process was killed.

        Its handlers are cancelled and it makes no further call to the queue:
        its jobs stay running until the reaper notices their heartbeats
        stopped (``job_timeout`` later) and requeues them.
        """
        worker._crash()

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of (mock) time pass while everything else runs."""
        await trio.sleep(seconds)

    async def wait(
        self, job_id: UUID, *, timeout: float = 24 * 3600.0, poll: float = 0.5
    ) -> JobStatus:
        """Wait until the job has settled (finished, failed or canceled); return its status.

        Checks every ``poll`` seconds of mock time. Raises
        :class:`trio.TooSlowError` after ``timeout`` seconds.
        """
        with trio.fail_after(timeout):
            while True:
                status = await self.queue.job_status(job_id)
                if status.state in (JobState.FINISHED, JobState.FAILED, JobState.CANCELED):
                    return status
                await trio.sleep(poll)

    async def run(
        self,
        job_type: str,
        args: Any = None,
        dependencies: Sequence[UUID] = (),
        channel: str = "",
        *,
        timeout: float = 24 * 3600.0,
    ) -> JobStatus:
        """Enqueue a job and :meth:`wait` for it."""
        job_id = await self.queue.enqueue(job_type, args, dependencies, channel)
        return await self.wait(job_id, timeout=timeout)

    def _shut_down(self) -> None:
        for worker in self._workers:
            worker.shutdown(grace=0)


# ------------------------------------------------------------------ the clock


def _run_with_autojump(fn: Callable[[], Any], *, clock: Any = None, **kwargs: Any) -> Any:
    # pytest-trio passes the clock a test asked for (None if none); default to autojump
    if clock is None:
        clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(fn, clock=clock, **kwargs)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run async tests that use actorq fixtures under an autojump MockClock.

    pytest-trio takes the runner from the nearest ``trio`` marker with a
    ``run`` argument: this one comes first, so it wins over trio mode's.
    """
    for item in items:
        names = getattr(item, "fixturenames", ())
        function = getattr(item, "obj", None)
        if _FIXTURES.intersection(names) and inspect.iscoroutinefunction(function):
            item.add_marker(pytest.mark.trio(run=_run_with_autojump), append=False)


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def actorq_maintenance() -> Maintenance:
    """The queue's maintenance config; override to change timeouts or retention."""
    return Maintenance()


@pytest.fixture
def actorq_store() -> Store | str | None:
    """The queue's store (``None``: memory only); override to test durability."""
    return None


@pytest.fixture
async def actorq_clock() -> trio.testing.MockClock:
    """The test's :class:`trio.testing.MockClock`."""
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        pytest.fail("actorq fixtures need a trio.testing.MockClock as the test's clock")
    return clock


@pytest.fixture
async def actorq_queue(
    actorq_clock: trio.testing.MockClock,
    actorq_maintenance: Maintenance,
    actorq_store: Store | str | None,
) -> AsyncIterator[LocalQueue]:
    """An in-process queue with the reaper running, under the mock clock."""
    async with open_queue(
        actorq_store, clock=mock_wall_clock, maintenance=actorq_maintenance
    ) as queue:
        yield queue


@pytest.fixture
async def actorq_harness(actorq_queue: LocalQueue) -> AsyncIterator[Harness]:
    """A :class:`Harness` on ``actorq_queue``; its workers stop when the test ends."""
    async with trio.open_nursery() as nursery:
        harness = Harness(actorq_queue, nursery)
        try:
            yield harness
        finally:
            harness._shut_down()
