"""One exception policy for every public context manager and serving call.

The user's exception comes out as itself (never in an exception group, with
its traceback and cause); a failure of actorq's own tasks comes out as one
typed :class:`actorq.JobQueueError` with the original as ``__cause__``;
cancellation and :class:`KeyboardInterrupt` are never converted
(``docs/errors.md``).
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import actorq
from actorq._core._unwrap import ErrorPolicy
from actorq._remote._client import connect_stream
from actorq._remote._server import QueueServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trio.testing import MockClock

# ------------------------------------------------------------------ helpers


def raised_here(info: pytest.ExceptionInfo[BaseException], function: str) -> bool:
    """True if the traceback still reaches the frame that raised the exception."""
    return any(entry.name == function for entry in info.traceback)


class WatchFails(actorq.MemoryStore):
    """A store whose watch() fails after a second, as a deposed leader's does."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def watch(self) -> None:
        await trio.sleep(1)
        raise self.error


class BreakableStream(trio.abc.Stream):
    """A stream that fails with a bug (RuntimeError) on the first read after ``broken``."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.broken = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        if self.broken:
            raise RuntimeError("the stream broke")
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def memory_server(
    queue: Any,
) -> AsyncIterator[tuple[trio.abc.Stream, QueueServer]]:
    """A server for ``queue`` on one in-memory connection; yields the client's end."""
    client, server_end = trio.testing.memory_stream_pair()
    server = QueueServer(queue)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_end)
        yield client, server
        nursery.cancel_scope.cancel()


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """Hands out the streams put into it; ``fail`` makes accept() fail with a bug."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[trio.abc.Stream](1)
        self.fail: Exception | None = None

    async def accept(self) -> trio.abc.Stream:
        if self.fail is not None:
            raise self.fail
        return await self.receive.receive()

    async def aclose(self) -> None:
        self.receive.close()


class ExitingQueue:
    """A servable queue whose every operation runs ``sys.exit(3)``."""

    def __init__(self, inner: actorq.LocalQueue) -> None:
        self.inner = inner

    async def execute(self, op: Any, *, scope: Any = None) -> Any:
        sys.exit(3)

    def submit(self, op: Any, target: Any, *, scope: Any = None) -> None:
        sys.exit(3)

    def release(self, job: actorq.DequeuedJob, *, scope: Any = None) -> None:
        self.inner.release(job, scope=scope)

    def subscribe(self, subscription: Any, target: Any) -> None:
        sys.exit(3)

    def settle(self, subscription: Any, finishes: Any, credit: int, target: Any) -> None:
        sys.exit(3)

    def unsubscribe(self, subscription: Any) -> None:
        self.inner.unsubscribe(subscription)


class BrokenDequeue:
    """A queue whose dequeue, and job stream, have a bug: they raise RuntimeError."""

    def __init__(self, inner: actorq.LocalQueue) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def dequeue(self, *args: Any, **kwargs: Any) -> Any:
        await trio.sleep(1)
        raise RuntimeError("dequeue bug")

    @asynccontextmanager
    async def open_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        await trio.sleep(1)
        raise RuntimeError("dequeue bug")
        yield  # an async generator, as asynccontextmanager wants


# ------------------------------------------------------------------ open_queue


async def test_open_queue_lets_the_users_error_out_as_itself() -> None:
    with pytest.raises(KeyError) as info:
        async with actorq.open_queue():
            raise KeyError("mine") from ValueError("why")
    assert type(info.value) is KeyError
    assert isinstance(info.value.__cause__, ValueError)
    assert raised_here(info, "test_open_queue_lets_the_users_error_out_as_itself")


async def test_open_queue_turns_a_failed_task_into_a_typed_error(
    autojump_clock: MockClock,
) -> None:
    with pytest.raises(actorq.QueueClosedError) as info:
        async with actorq.open_queue(WatchFails(RuntimeError("watch bug")), maintenance=None):
            await trio.sleep_forever()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "watch bug"


async def test_open_queue_keeps_a_tasks_own_typed_error(autojump_clock: MockClock) -> None:
    error = actorq.StoreError("deposed")
    with pytest.raises(actorq.StoreError) as info:
        async with actorq.open_queue(WatchFails(error), maintenance=None):
            await trio.sleep_forever()
    assert info.value is error


async def test_open_queue_the_users_error_wins_and_notes_the_internal_one(
    autojump_clock: MockClock,
) -> None:
    with pytest.raises(KeyError) as info:
        async with actorq.open_queue(WatchFails(RuntimeError("watch bug")), maintenance=None):
            try:
                await trio.sleep_forever()
            finally:
                raise KeyError("cleanup failed")
    assert any("watch bug" in note for note in info.value.__notes__)


async def test_open_queue_passes_cancellation_and_keyboard_interrupt_through(
    autojump_clock: MockClock,
) -> None:
    with trio.move_on_after(5) as scope:
        async with actorq.open_queue():
            await trio.sleep_forever()
    assert scope.cancelled_caught
    with pytest.raises(KeyboardInterrupt):
        async with actorq.open_queue():
            raise KeyboardInterrupt


# ------------------------------------------------------------------ connect_stream


async def test_connect_stream_lets_the_users_error_out_as_itself() -> None:
    async with actorq.open_queue() as local, memory_server(local) as (client, _):
        with pytest.raises(KeyError) as info:
            async with connect_stream(client, heartbeat_interval=None):
                raise KeyError("mine")
    assert type(info.value) is KeyError
    assert raised_here(info, "test_connect_stream_lets_the_users_error_out_as_itself")


async def test_connect_stream_turns_a_failed_task_into_a_typed_error(
    autojump_clock: MockClock,
) -> None:
    async with actorq.open_queue() as local, memory_server(local) as (client, _):
        stream = BreakableStream(client)
        with pytest.raises(actorq.QueueClosedError) as info:
            async with connect_stream(stream, heartbeat_interval=None) as remote:
                stream.broken = True
                await remote.stats()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "the stream broke"


# ------------------------------------------------------------------ connect (real sockets)


@asynccontextmanager
async def real_server() -> AsyncIterator[str]:
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        server = await nursery.start(actorq.serve, local, "127.0.0.1", 0)
        yield f"ws://127.0.0.1:{server.port}"
        server.close()


async def test_connect_lets_the_users_error_out_as_itself() -> None:
    async with real_server() as url:
        with pytest.raises(KeyError) as info:
            async with actorq.connect(url, heartbeat_interval=None):
                raise KeyError("mine")
    assert type(info.value) is KeyError
    assert raised_here(info, "test_connect_lets_the_users_error_out_as_itself")


async def test_connect_turns_a_failed_task_into_a_typed_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams: list[BreakableStream] = []
    open_tcp_stream = trio.open_tcp_stream

    async def breakable(host: str, port: int) -> trio.abc.Stream:
        streams.append(BreakableStream(await open_tcp_stream(host, port)))
        return streams[-1]

    async with real_server() as url:
        monkeypatch.setattr(trio, "open_tcp_stream", breakable)
        with pytest.raises(actorq.QueueClosedError) as info:
            async with actorq.connect(url, heartbeat_interval=None) as remote:
                streams[0].broken = True
                await remote.stats()
    assert isinstance(info.value.__cause__, RuntimeError)


# ------------------------------------------------------------------ serve


async def test_serve_lets_a_non_exception_of_the_users_queue_out_as_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listener = MemoryListener()

    async def open_tcp_listeners(port: int, *, host: str | None = None) -> list[MemoryListener]:
        return [listener]

    monkeypatch.setattr(trio, "open_tcp_listeners", open_tcp_listeners)
    client, server_end = trio.testing.memory_stream_pair()
    errors: list[BaseException] = []
    served_out = trio.Event()

    async def run_server(queue: ExitingQueue) -> None:
        try:
            await actorq.serve(queue, "127.0.0.1", 0)
        except BaseException as exc:  # recorded as it came out of serve
            errors.append(exc)
        served_out.set()

    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        nursery.start_soon(run_server, ExitingQueue(local))
        await listener.send.send(server_end)
        async with connect_stream(client, heartbeat_interval=None) as remote:
            with pytest.raises(actorq.QueueClosedError):
                await remote.stats()
        await served_out.wait()
    assert [type(e) for e in errors] == [SystemExit]
    assert errors[0].code == 3  # type: ignore[attr-defined]


async def test_serve_turns_a_failed_task_into_a_typed_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listener = MemoryListener()
    listener.fail = RuntimeError("accept bug")

    async def open_tcp_listeners(port: int, *, host: str | None = None) -> list[MemoryListener]:
        return [listener]

    monkeypatch.setattr(trio, "open_tcp_listeners", open_tcp_listeners)
    async with actorq.open_queue() as local:
        with pytest.raises(actorq.QueueClosedError) as info:
            await actorq.serve(local, "127.0.0.1", 0)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "accept bug"


# ------------------------------------------------------------------ Worker.run


async def test_worker_run_lets_a_handlers_exit_out_as_itself(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as queue:
        worker = actorq.Worker(queue)

        @worker.handler("t")
        async def exit_now(job: actorq.Job) -> None:
            sys.exit(3)

        job_id = await queue.enqueue("t")
        with pytest.raises(SystemExit) as info:
            await worker.run()
        # the interrupted job went back, and the worker deregistered
        status = await queue.job_status(job_id)
        assert (status.state, status.retries) == (actorq.JobState.PENDING, 1)
        assert await queue.workers() == []
    assert info.value.code == 3
    assert raised_here(info, "exit_now")


async def test_worker_run_turns_a_failed_task_into_a_typed_error(
    autojump_clock: MockClock,
) -> None:
    async with actorq.open_queue() as queue:
        worker = actorq.Worker(BrokenDequeue(queue))
        worker.add_handler("t", lambda job: None)
        with pytest.raises(actorq.QueueClosedError) as info:
            await worker.run()
        assert await queue.workers() == []  # it still deregistered
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "dequeue bug"


# ------------------------------------------------------------------ the policy itself


def test_policy_ranks_keyboard_interrupt_over_user_over_internal_over_cancelled() -> None:
    policy = ErrorPolicy("the queue")
    user = KeyError("user")
    policy.record_user(user)
    internal = RuntimeError("internal")
    interrupt = KeyboardInterrupt()
    assert policy.resolve(BaseExceptionGroup("", [internal, user, interrupt])) is interrupt
    assert policy.resolve(BaseExceptionGroup("", [internal, user])) is user
    typed = policy.resolve(BaseExceptionGroup("", [BaseExceptionGroup("", [internal])]))
    assert isinstance(typed, actorq.QueueClosedError)
    assert typed.__cause__ is internal
    assert "the queue" in str(typed)


def test_policy_leaves_an_exception_that_is_no_group_alone() -> None:
    with pytest.raises(ValueError, match="bare") as info, ErrorPolicy("the queue"):
        raise ValueError("bare")
    assert not hasattr(info.value, "__notes__")
    assert str(info.value) == "bare"


def test_policy_gives_a_queue_error_in_the_users_code_the_internal_cause() -> None:
    policy = ErrorPolicy("the queue")
    closed = actorq.QueueClosedError("queue is closed")
    mine = KeyError("mine")
    policy.record_user(closed)
    policy.record_user(mine)
    internal = RuntimeError("scheduler bug")
    assert policy.resolve(BaseExceptionGroup("", [internal, closed])) is closed
    assert closed.__cause__ is internal
    # the user's own exception keeps its (absent) cause, and only notes the failure
    assert policy.resolve(BaseExceptionGroup("", [internal, mine])) is mine
    assert mine.__cause__ is None
    assert mine.__notes__ == ["actorq: meanwhile, also raised: RuntimeError('scheduler bug')"]


async def test_policy_never_converts_a_cancellation() -> None:
    caught: list[trio.Cancelled] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            caught.append(exc)
            raise
    policy = ErrorPolicy("the queue")
    policy.record_user(caught[0])  # even from the user's code, it stays a cancellation
    assert policy.resolve(BaseExceptionGroup("", caught)) is caught[0]
