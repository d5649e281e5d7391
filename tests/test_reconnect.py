"""Reconnects: a remote queue (and a worker on it) survives a dropped connection.

Over in-memory streams from a stream factory, against the real server, under
MockClock autojump: the test drops connections, keeps the server "down" (the
factory refuses) and brings it back, and watches what the client does.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from trio_websocket import wrap_server_stream

import actorq
from actorq._remote import _wire as w
from actorq._remote._client import connect_stream
from actorq._remote._common import LOST_MESSAGE
from actorq._remote._server import QueueServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable


async def settle() -> None:
    """Let every task run until nothing moves (in-memory streams only)."""
    for _ in range(3):
        await trio.testing.wait_all_tasks_blocked()


class Mutable(trio.abc.Stream):
    """The server's end of a connection; while ``muted``, what it sends is lost."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.muted = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self.muted:
            await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Servers:
    """A stream factory in front of the servers: each new connection goes to
    ``self.server`` (swap it for a failover); ``down`` refuses connections."""

    def __init__(self, nursery: trio.Nursery, server: QueueServer) -> None:
        self.nursery = nursery
        self.server = server
        self.down = False
        self.attempts: list[float] = []  # when each connection was asked for
        self.open: list[Mutable] = []  # the server ends, to drop them
        self.handler: Callable[[trio.abc.Stream], Awaitable[None]] | None = None

    async def __call__(self) -> trio.abc.Stream:
        self.attempts.append(trio.current_time())
        if self.down:
            raise OSError("connection refused")
        client, inner = trio.testing.memory_stream_pair()
        server = Mutable(inner)
        handler = self.handler or self.server.handle_stream
        self.handler = None
        self.nursery.start_soon(handler, server)
        self.open.append(server)
        return client

    def mute(self) -> None:
        """Lose whatever the servers send from now on, until the connections drop."""
        for stream in self.open:
            stream.muted = True

    async def drop(self) -> None:
        """Cut every connection, with no close handshake (a crash, a reset)."""
        for stream in self.open:
            await trio.aclose_forcefully(stream)
        self.open.clear()


@asynccontextmanager
async def reconnecting(
    **options: Any,
) -> AsyncIterator[tuple[actorq.LocalQueue, Servers, actorq.RemoteQueue]]:
    # a bound in virtual time, so that a hang fails the test instead of
    # jumping the clock forever
    with trio.fail_after(600):
        async with _reconnecting(**options) as got:
            yield got


@asynccontextmanager
async def _reconnecting(
    **options: Any,
) -> AsyncIterator[tuple[actorq.LocalQueue, Servers, actorq.RemoteQueue]]:
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        servers = Servers(nursery, QueueServer(local))
        options.setdefault("heartbeat_interval", None)
        async with connect_stream(servers, **options) as remote:
            yield local, servers, remote
        nursery.cancel_scope.cancel()


async def test_a_dropped_connection_is_reestablished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reconnecting() as (local, servers, remote):
        first = await remote.enqueue("t", {"n": 1})
        await servers.drop()
        await settle()
        second = await remote.enqueue("t", {"n": 2})  # waits for the new connection
        assert remote.connected
        assert remote.reconnects == 1
        assert len(servers.attempts) == 2
        job = await remote.dequeue(["t"], timeout=0)
        assert job.id == first
        await remote.finish_job(job.id, "done")
        assert (await local.job_status(first)).result == "done"
        assert (await local.job_status(second)).state is actorq.JobState.PENDING


async def test_a_call_made_while_disconnected_waits_for_the_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reconnecting() as (local, servers, remote):
        servers.down = True
        await servers.drop()
        await settle()
        assert not remote.connected
        assert not remote.closed
        done: list[uuid.UUID] = []

        async def call() -> None:
            done.append(await remote.enqueue("t"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.sleep(3)  # the client keeps trying meanwhile
            assert done == []
            assert len(servers.attempts) > 3
            servers.down = False
        assert remote.connected
        assert (await local.job_status(done[0])).state is actorq.JobState.PENDING


async def test_a_waiting_dequeue_is_sent_again(autojump_clock: trio.testing.MockClock) -> None:
    async with reconnecting() as (local, servers, remote):
        got: list[actorq.DequeuedJob] = []

        async def dequeue() -> None:
            got.append(await remote.dequeue(["t"]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dequeue)
            await settle()
            await servers.drop()
            await settle()
            assert remote.connected
            assert remote.reconnects == 1
            assert (await local.stats()).waiting_dequeuers == 1  # on the new connection
            job_id = await local.enqueue("t")
        assert got[0].id == job_id
        # its token is held and refreshed like any other
        assert remote.held_jobs == {job_id: got[0].token}


async def test_a_wait_is_sent_again(autojump_clock: trio.testing.MockClock) -> None:
    async with reconnecting() as (local, servers, remote):
        job_id = await local.enqueue("t")
        got: list[actorq.JobStatus] = []

        async def wait() -> None:
            got.append(await remote.wait(job_id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await settle()
            await servers.drop()
            await settle()
            assert remote.connected
            await local.fail_job(job_id, {"error": "x"})
        assert [s.state for s in got] == [actorq.JobState.FAILED]
        assert local._scheduler._settle_waiters == {}  # the lost connection's wait went too


async def test_held_tokens_keep_working_and_are_refreshed_after_a_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reconnecting(heartbeat_interval=1.0) as (local, servers, remote):
        job_id = await remote.enqueue("t")
        job = await remote.dequeue(["t"], timeout=0)
        before = await local.heartbeats(0.0)
        assert job.token in before
        await servers.drop()
        await settle()
        await trio.sleep(2.5)  # refreshes went out on the new connection
        assert await local.heartbeats(2.0) == []  # none older than 2 s: refreshed
        await remote.finish_job(job_id, "after")
        assert (await local.job_status(job_id)).result == "after"


async def hello_then_drop(stream: trio.abc.Stream) -> None:
    """A server that welcomes the client, takes one request, and dies without answering."""
    async with trio.open_nursery() as nursery:
        request = await wrap_server_stream(nursery, stream)
        ws = await request.accept()
        hello = w.decode(await ws.get_message())
        welcome = w.Welcome(
            id=hello.id, version=2, server="x", max_message_size=1 << 20, max_in_flight=8
        )
        await ws.send_message(w.encode(welcome))
        await ws.get_message()
        await trio.aclose_forcefully(stream)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("what", ["enqueue", "finish_job"])
async def test_a_call_lost_in_flight_that_is_not_safe_to_resend_raises(
    what: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        servers = Servers(nursery, QueueServer(local))
        servers.handler = hello_then_drop
        async with connect_stream(servers, heartbeat_interval=None) as remote:
            with pytest.raises(actorq.QueueClosedError) as info:
                if what == "enqueue":
                    await remote.enqueue("t")
                else:
                    await remote.finish_job(uuid.uuid4(), None)
            assert str(info.value) == LOST_MESSAGE
            assert not remote.closed
            # the next call goes to the real server, on the new connection
            job_id = await remote.enqueue("t")
            assert (await local.job_status(job_id)).state is actorq.JobState.PENDING
        nursery.cancel_scope.cancel()


async def test_a_read_lost_in_flight_is_sent_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        job_id = await local.enqueue("t", {"x": 1})
        servers = Servers(nursery, QueueServer(local))
        servers.handler = hello_then_drop
        async with connect_stream(servers, heartbeat_interval=None) as remote:
            status = await remote.job_status(job_id)
            assert status.state is actorq.JobState.PENDING
            assert remote.reconnects == 1
        nursery.cancel_scope.cancel()


async def test_backoff_is_bounded_jittered_and_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reconnecting(reconnect_timeout=30) as (_, servers, remote):
        servers.down = True
        await servers.drop()
        lost_at = trio.current_time()
        with pytest.raises(actorq.QueueClosedError, match=r"could not reconnect .* within 30 s"):
            await remote.enqueue("t")
        assert remote.closed
        gave_up = trio.current_time() - lost_at
        assert gave_up <= 30
        attempts = servers.attempts[1:]
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert attempts[0] - lost_at < 0.01  # the first retry goes at once
        assert all(gap <= 5.0 for gap in gaps)
        assert max(gaps) >= 2.5  # it grew towards the cap
        assert gaps[0] <= 0.1  # and started small
        assert len(set(gaps)) == len(gaps)  # jittered: no two pauses alike
        # closed for good: no more attempts, every call raises at once
        count = len(servers.attempts)
        await trio.sleep(60)
        assert len(servers.attempts) == count
        with pytest.raises(actorq.QueueClosedError):
            await remote.stats()


async def test_an_unauthorized_reconnect_is_not_retried(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with reconnecting(token="open-sesame") as (local, servers, remote):
        await remote.stats()
        # the server comes back with another token: the client's is refused (4001)
        servers.server = QueueServer(local, auth="something-else")
        await servers.drop()
        with pytest.raises(actorq.QueueClosedError, match="refused the reconnect"):
            await remote.stats()
        assert remote.closed
        count = len(servers.attempts)
        await trio.sleep(60)
        assert len(servers.attempts) == count == 2


async def test_a_server_shutting_down_1001_is_a_cue_to_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reconnecting() as (local, servers, remote):
        old = servers.server
        servers.server = QueueServer(local)  # the one that takes over
        old.close()  # 1001 "going away" on every connection
        await settle()
        assert remote.reconnects == 1
        assert (await remote.stats()).pending == 0
        assert servers.server.connections == 1


async def test_a_stream_is_resubscribed_with_its_remaining_credit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reconnecting() as (local, servers, remote):
        first = [await local.enqueue("t", {"n": n}) for n in range(2)]
        async with remote.open_stream(["t"], credit=3) as stream:
            a = await stream.receive()
            b = await stream.receive()
            assert {a.id, b.id} == set(first)
            await servers.drop()
            await settle()
            assert remote.reconnects == 1
            later = [await local.enqueue("t", {"n": n}) for n in range(2, 6)]
            await settle()
            # one slot was free: one job, no more
            c = await stream.receive()
            assert c.id == later[0]
            with pytest.raises(trio.WouldBlock):
                stream.receive_nowait()
            # finishing jobs of the first connection returns their credit
            stream.finish(a, "a")
            stream.finish(b, "b")
            await stream.wait_settled()
            d, e = await stream.receive(), await stream.receive()
            assert [d.id, e.id] == later[1:3]
            for job in (c, d, e):
                stream.finish(job, "x")
            await stream.wait_settled()
        await settle()  # the job pushed to the stream as it closed goes back
        assert (await local.job_status(a.id)).result == "a"
        assert (await local.job_status(b.id)).result == "b"
        assert (await local.job_status(later[3])).state is actorq.JobState.PENDING


async def test_a_stream_with_no_free_slot_subscribes_once_one_frees(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reconnecting() as (local, servers, remote):
        first = await local.enqueue("t")
        async with remote.open_stream(["t"], credit=1) as stream:
            a = await stream.receive()
            assert a.id == first
            await servers.drop()
            await settle()
            second = await local.enqueue("t")
            await settle()
            assert (await local.job_status(second)).state is actorq.JobState.PENDING
            stream.finish(a, "a")  # the finish goes first, then the job comes
            b = await stream.receive()
            assert b.id == second
            stream.finish(b, "b")
            await stream.wait_settled()
        assert (await local.job_status(first)).result == "a"
        assert (await local.job_status(second)).result == "b"


async def test_a_resent_finish_that_was_applied_is_one_log_line(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with reconnecting() as (local, servers, remote):
        job_id = await local.enqueue("t")
        refused: list[uuid.UUID] = []
        async with remote.open_stream(
            ["t"], credit=1, on_refused=lambda job, error: refused.append(job)
        ) as stream:
            job = await stream.receive()
            servers.down = True
            servers.mute()
            stream.finish(job, "r")
            # the settle reaches the server and is applied; its reply is lost
            await settle()
            await servers.drop()
            await settle()
            assert (await local.job_status(job_id)).result == "r"
            with caplog.at_level(logging.INFO, logger="actorq.client"):
                servers.down = False
                await stream.wait_settled()
        assert refused == []  # the worker is not told about a refusal of its own repeat
        lines = [r.getMessage() for r in caplog.records if "sent again after" in r.getMessage()]
        assert len(lines) == 1
        assert str(job_id) in lines[0]


async def test_a_worker_keeps_running_through_a_drop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reconnecting() as (local, servers, remote):
        release = trio.Event()
        ran: list[int] = []
        worker = actorq.Worker(remote, concurrency=2, heartbeat_interval=1.0)

        @worker.handler("t")
        async def handle(job: actorq.Job, args: dict[str, int]) -> int:
            if args["n"] == 0:
                await release.wait()
            ran.append(args["n"])
            return args["n"] * 10

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            worker_id = worker.id
            slow = await local.enqueue("t", {"n": 0})
            await settle()
            assert worker.running_jobs == [slow]
            servers.down = True
            await servers.drop()
            await trio.sleep(1)
            release.set()  # the finish is made while disconnected
            await trio.sleep(1)
            assert ran == [0]
            assert (await local.job_status(slow)).state is actorq.JobState.RUNNING
            servers.down = False
            await trio.sleep(10)
            assert (await local.job_status(slow)).result == 0  # delivered after the reconnect
            later = [await local.enqueue("t", {"n": n}) for n in range(1, 6)]
            await trio.sleep(1)
            for job_id, n in zip(later, range(1, 6), strict=True):
                assert (await local.job_status(job_id)).result == n * 10
            assert worker.id == worker_id  # the same registration: the store kept it
            worker.shutdown()
        assert remote.reconnects == 1


async def test_a_worker_registers_again_with_a_fresh_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with reconnecting() as (_, servers, remote):
        worker = actorq.Worker(remote, concurrency=2)

        @worker.handler("t")
        async def handle(job: actorq.Job) -> str:
            return "ok"

        async with actorq.open_queue() as fresh, trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            first_id = worker.id
            servers.server = QueueServer(fresh)  # restarted on an empty memory store
            await servers.drop()
            await settle()
            await trio.sleep(2)
            job_id = await fresh.enqueue("t")
            await trio.sleep(2)
            assert (await fresh.job_status(job_id)).result == "ok"
            assert worker.id != first_id
            assert [w.id for w in await fresh.workers()] == [worker.id]
            worker.shutdown()


async def test_a_worker_registration_lost_in_flight_is_sent_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        servers = Servers(nursery, QueueServer(local))
        servers.handler = hello_then_drop  # takes the insert_worker and dies unanswered
        async with connect_stream(servers, heartbeat_interval=None) as remote:
            worker_id = await remote.insert_worker("", "x86_64")
            assert remote.reconnects == 1
            # registered on the server that answered, and usable there
            await remote.update_worker_status(worker_id)
            assert worker_id in {w.id for w in await local.workers(0)}
        nursery.cancel_scope.cancel()
