"""The blocking client (``actorq.connect_blocking``) against a real server on loopback.

The server runs in the test's trio run; each blocking call runs in a thread
(``trio.to_thread.run_sync``), as a program that does not run trio would make
it. Real sockets and real time (trio-websocket issue 94: no autojump clock
over real sockets); every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import threading
import time
import uuid
import warnings
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import trio
from trio_websocket import wrap_server_stream

import actorq
from actorq._remote import _wire as w
from actorq._remote._common import LOST_MESSAGE
from actorq._remote._server import QueueServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

R = TypeVar("R")


async def blocking(fn: Callable[[], R]) -> R:
    """``fn()`` in a thread, as code that does not run trio calls it; bounded."""
    with trio.fail_after(20):  # a hung call fails the test, its thread abandoned
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


class Front:
    """A loopback listener in front of a :class:`QueueServer`: each connection
    goes to ``handler`` if set (once), else to the server; ``close_all`` cuts
    every connection with no close frame (a crash)."""

    def __init__(self, server: QueueServer) -> None:
        self.server = server
        self.handler: Callable[[trio.abc.Stream], Awaitable[None]] | None = None
        self.connections = 0
        self.open: list[trio.SocketStream] = []
        self.port = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open.append(stream)
        handler, self.handler = self.handler or self.server.handle_stream, None
        await handler(stream)

    async def close_all(self) -> None:
        for stream in self.open:
            await trio.aclose_forcefully(stream)
        self.open.clear()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@asynccontextmanager
async def served(**options: Any) -> AsyncIterator[tuple[actorq.LocalQueue, Front]]:
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        front = Front(QueueServer(local, **options))
        listeners = await nursery.start(partial(trio.serve_tcp, front.serve, 0, host="127.0.0.1"))
        front.port = listeners[0].socket.getsockname()[1]
        yield local, front
        front.server.close()
        nursery.cancel_scope.cancel()


def greet_then(
    after: Callable[[Any, trio.abc.Stream], Awaitable[None]],
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """A server that welcomes the client, reads one request, then does ``after``
    (with the websocket and the stream) instead of answering it."""

    async def handler(stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, stream)
            ws = await request.accept()
            hello = w.decode(await ws.get_message())
            welcome = w.Welcome(
                id=hello.id, version=3, server="x", max_message_size=1 << 20, max_in_flight=8
            )
            await ws.send_message(w.encode(welcome))
            await ws.get_message()
            await after(ws, stream)
            nursery.cancel_scope.cancel()

    return handler


async def _die(ws: Any, stream: trio.abc.Stream) -> None:
    await trio.aclose_forcefully(stream)


async def _send_binary(ws: Any, stream: trio.abc.Stream) -> None:
    await ws.send_message(b"\x00")  # the protocol has no binary frames
    await trio.sleep_forever()


#: dies without answering
hello_then_drop = greet_then(_die)
#: answers with a binary frame
hello_then_binary = greet_then(_send_binary)


class Hung(trio.abc.Stream):
    """A server's end that goes silent after its handshake answer and welcome
    (two writes): a paused or hung server, which answers not even pings."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        if self.writes <= 2:
            await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_producers_calls_round_trip() -> None:
    async with served() as (local, front):
        queue = await blocking(lambda: actorq.connect_blocking(front.url))
        with queue:
            first = await blocking(lambda: queue.enqueue("build", {"ref": "v1"}, channel="red"))
            second, third = await blocking(
                lambda: queue.enqueue_many(
                    [actorq.NewJob("test", {"n": 1}, [first], channel="red"), ("docs", None)]
                )
            )
            # what the server's queue holds is what the calls said
            assert (await local.job(first)).args == {"ref": "v1"}
            assert (await local.job(second)).dependencies == [first]
            status = await blocking(lambda: queue.job_status(second))
            assert status == await local.job_status(second)
            assert status.state is actorq.JobState.PENDING
            assert await blocking(lambda: queue.job(third)) == await local.job(third)
            assert await blocking(queue.stats) == await local.stats()
            # roots: the jobs no other job depends on
            assert sorted(await blocking(queue.all_root_job_ids)) == sorted([second, third])
            listed = await blocking(lambda: queue.list_jobs(channel="red"))
            assert {row.id for row in listed} == {first, second}

            await blocking(lambda: queue.cancel_job(first))
            # canceling a job cancels its pending dependents
            assert (await local.job_status(second)).state is actorq.JobState.CANCELED
            assert await blocking(lambda: queue.retry_job(first)) == [first, second]
            await blocking(lambda: queue.cancel_job(third))
            await blocking(lambda: queue.delete_job(third))
            with pytest.raises(actorq.NotExistError):
                await local.job_status(third)
        assert queue.closed


async def test_errors_are_the_queues_and_bad_arguments_send_nothing() -> None:
    async with served(max_message_size=64 * 1024) as (local, front):
        with await blocking(lambda: actorq.connect_blocking(front.url)) as queue:
            unknown = uuid.uuid4()
            with pytest.raises(actorq.NotExistError):
                await blocking(lambda: queue.job_status(unknown))
            with pytest.raises(TypeError, match="args"):
                await blocking(lambda: queue.enqueue("t", object()))
            with pytest.raises(ValueError, match="job_type"):
                await blocking(lambda: queue.enqueue(""))
            with pytest.raises(actorq.ProtocolError) as info:
                await blocking(lambda: queue.enqueue("t", "x" * 100_000))
            assert info.value.reason == "oversize"
            assert (await local.stats()).jobs == 0
            # the connection goes on after each of them
            job_id = await blocking(lambda: queue.enqueue("t"))
            assert (await local.job_status(job_id)).state is actorq.JobState.PENDING
        with pytest.raises(actorq.QueueClosedError, match="closed"):
            await blocking(lambda: queue.enqueue("t"))


async def test_wait_blocks_until_the_job_settles() -> None:
    async with served() as (local, front):
        with await blocking(lambda: actorq.connect_blocking(front.url)) as queue:
            job_id = await local.enqueue("t")
            got: list[actorq.JobStatus] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    trio.to_thread.run_sync, lambda: got.append(queue.wait(job_id, timeout=10))
                )
                job = await local.dequeue(["t"], timeout=5)
                await trio.sleep(0.05)
                assert got == []  # still waiting: the job runs
                await local.finish_job(job.id, {"done": True})
            assert got[0].state is actorq.JobState.FINISHED
            assert got[0].result == {"done": True}
            with pytest.raises(actorq.WaitTimeoutError):
                pending = await local.enqueue("t")
                await blocking(lambda: queue.wait(pending, timeout=0.05))


async def test_a_token_is_presented_and_a_wrong_one_refused() -> None:
    async with served(auth="s3cret") as (_, front):
        with pytest.raises(actorq.ProtocolError) as info:
            await blocking(lambda: actorq.connect_blocking(front.url, token="wrong"))
        assert info.value.reason == "unauthorized"
        with await blocking(lambda: actorq.connect_blocking(front.url, token="s3cret")) as queue:
            assert isinstance(await blocking(lambda: queue.enqueue("t")), uuid.UUID)


async def test_each_url_is_tried_and_none_answering_raises() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{sock.getsockname()[1]}"
    async with served() as (_, front):
        with await blocking(lambda: actorq.connect_blocking([dead, front.url])) as queue:
            assert await blocking(queue.all_root_job_ids) == []
            assert queue.url == f"127.0.0.1:{front.port}/"
    with pytest.raises(actorq.QueueClosedError, match="cannot connect"):
        await blocking(lambda: actorq.connect_blocking(dead, connect_timeout=2))
    with pytest.raises(ValueError, match="is not a ws:// or wss:// URL"):
        actorq.connect_blocking("http://127.0.0.1:1")


async def test_a_server_restarted_while_idle_is_reconnected_to_before_the_next_call() -> None:
    async with served() as (local, front):
        with await blocking(lambda: actorq.connect_blocking(front.url)) as queue:
            before = await blocking(lambda: queue.enqueue("t"))
            await front.close_all()  # a crash: no close frame
            after = await blocking(lambda: queue.enqueue("t"))
            assert front.connections == 2
            assert {before, after} <= {job.id for job in await local.list_jobs()}
            # a server shutting down says 1001 first: a cue to reconnect too
            front.server.close()
            await trio.sleep(0.1)
            front.server = QueueServer(local)
            assert (await blocking(lambda: queue.job_status(after))).type == "t"
            assert front.connections == 3


async def test_a_lost_enqueue_raises_and_a_lost_read_is_sent_again() -> None:
    async with served() as (local, front):
        with await blocking(lambda: actorq.connect_blocking(front.url)) as queue:
            await front.close_all()
            front.handler = hello_then_drop
            with pytest.raises(actorq.QueueClosedError) as info:
                await blocking(lambda: queue.enqueue("t"))
            assert str(info.value) == LOST_MESSAGE
            assert not queue.closed
            job_id = await local.enqueue("t")
            await front.close_all()
            front.handler = hello_then_drop
            assert (await blocking(lambda: queue.job_status(job_id))).type == "t"
            assert front.connections == 4  # the first, two dropped, the one that answered


async def test_a_silent_server_is_given_up_on_after_the_keepalive_timeout() -> None:
    async with served() as (_, front):
        front.handler = lambda stream: front.server.handle_stream(Hung(stream))
        queue = await blocking(lambda: actorq.connect_blocking(front.url, keepalive_timeout=0.4))
        with queue:
            with pytest.raises(actorq.QueueClosedError) as info:
                await blocking(lambda: queue.enqueue("t"))
            assert str(info.value) == LOST_MESSAGE
            # the next call connects again, to the real server this time
            assert isinstance(await blocking(lambda: queue.enqueue("t")), uuid.UUID)


async def test_threads_sharing_a_client_take_turns() -> None:
    async with served() as (local, front):
        with await blocking(lambda: actorq.connect_blocking(front.url)) as queue:
            made: list[uuid.UUID] = []
            lock = threading.Lock()

            def produce(n: int) -> None:
                for i in range(50):
                    job_id = queue.enqueue("t", {"thread": n, "i": i})
                    with lock:
                        made.append(job_id)

            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(blocking, lambda n=n: produce(n))
            assert len(set(made)) == 200
            assert (await local.stats()).pending == 200


async def test_close_from_another_thread_ends_a_waiting_call() -> None:
    async with served() as (local, front):
        queue = await blocking(lambda: actorq.connect_blocking(front.url))
        job_id = await local.enqueue("t")
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                queue.wait(job_id)
            except BaseException as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocking, wait)
            await trio.sleep(0.1)
            queue.close()
        assert [type(e) for e in errors] == [actorq.QueueClosedError]
        assert queue.closed
        with pytest.raises(actorq.QueueClosedError):
            await blocking(lambda: queue.enqueue("t"))


async def test_tls() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        server: QueueServer = await nursery.start(
            lambda task_status: actorq.serve(
                local, "127.0.0.1", 0, ssl_context=server_context, task_status=task_status
            )
        )
        url = f"wss://127.0.0.1:{server.port}"
        with await blocking(
            lambda: actorq.connect_blocking(url, ssl_context=client_context)
        ) as queue:
            job_id = await blocking(lambda: queue.enqueue("t", {"secure": True}))
            assert (await local.job(job_id)).args == {"secure": True}
        with pytest.raises(actorq.QueueClosedError, match="did not verify"):
            await blocking(lambda: actorq.connect_blocking(url))
        server.close()


async def test_a_large_request_goes_whole_after_an_idle_check() -> None:
    # before each request the client reads what came meanwhile without
    # blocking; the request after it must still be written whole, however
    # much more than a socket buffer it is
    async with served() as (local, front):
        with await blocking(lambda: actorq.connect_blocking(front.url)) as queue:
            await blocking(queue.stats)
            big = {"blob": "x" * 3_000_000}
            job_id = await blocking(lambda: queue.enqueue("t", big))
            assert (await local.job(job_id)).args == big


async def test_a_server_that_breaks_the_protocol_is_not_retried() -> None:
    async with served() as (_, front):
        front.handler = hello_then_binary
        queue = await blocking(lambda: actorq.connect_blocking(front.url))
        with pytest.raises(actorq.QueueClosedError, match="broke the protocol"):
            await blocking(lambda: queue.enqueue("t"))
        assert queue.closed
        with pytest.raises(actorq.QueueClosedError):
            await blocking(queue.stats)
        assert front.connections == 1


async def test_a_program_that_enqueues_through_it_never_loads_trio() -> None:
    async with served() as (local, front):
        script = (
            "import sys, actorq\n"
            f"with actorq.connect_blocking({front.url!r}) as queue:\n"
            "    job_id = queue.enqueue('t', {'from': 'a script'})\n"
            "    assert queue.job_status(job_id).type == 't'\n"
            "print('trio' in sys.modules)\n"
        )
        with trio.fail_after(30):
            done = await trio.run_process([sys.executable, "-c", script], capture_stdout=True)
        assert done.stdout.decode().split() == ["False"]
        assert [job.type for job in await local.list_jobs()] == ["t"]


async def test_a_server_down_for_a_while_is_waited_for_and_one_gone_for_good_given_up_on() -> None:
    async def refuse(stream: trio.abc.Stream) -> None:
        await trio.aclose_forcefully(stream)  # during the handshake: as good as down

    async with served() as (local, front):
        with await blocking(
            lambda: actorq.connect_blocking(front.url, reconnect_timeout=10, connect_timeout=2)
        ) as queue:
            await front.close_all()
            refusals = 3

            async def down_then_up(stream: trio.abc.Stream) -> None:
                nonlocal refusals
                if refusals:
                    refusals -= 1
                    front.handler = down_then_up
                    await refuse(stream)
                else:
                    await front.server.handle_stream(stream)

            front.handler = down_then_up
            job_id = await blocking(lambda: queue.enqueue("t"))  # waits out the refusals
            assert (await local.job_status(job_id)).type == "t"
            assert front.connections == 5  # the first, three refused, the one that served

        with await blocking(
            lambda: actorq.connect_blocking(front.url, reconnect_timeout=0.3, connect_timeout=2)
        ) as queue:
            await front.close_all()

            async def always_down(stream: trio.abc.Stream) -> None:
                front.handler = always_down
                await refuse(stream)

            front.handler = always_down
            with pytest.raises(actorq.QueueClosedError, match="cannot connect"):
                await blocking(lambda: queue.enqueue("t"))
            front.handler = None


async def test_a_reconnect_the_server_refuses_closes_the_client() -> None:
    async with served() as (local, front):
        with await blocking(lambda: actorq.connect_blocking(front.url)) as queue:
            await front.close_all()
            front.server = QueueServer(local, auth="now-with-a-token")
            with pytest.raises(actorq.ProtocolError) as info:
                await blocking(lambda: queue.enqueue("t"))
            assert info.value.reason == "unauthorized"
            assert queue.closed
            assert (await local.stats()).jobs == 0


async def test_without_keepalive_a_call_waits_as_long_as_its_reply_takes() -> None:
    async with served() as (local, front):
        with await blocking(
            lambda: actorq.connect_blocking(front.url, keepalive_timeout=None)
        ) as queue:
            job_id = await local.enqueue("t")
            async with trio.open_nursery() as nursery:
                got: list[actorq.JobStatus] = []
                nursery.start_soon(blocking, lambda: got.append(queue.wait(job_id)))
                job = await local.dequeue(["t"], timeout=5)
                await trio.sleep(0.2)
                await local.finish_job(job.id, 1)
            assert got[0].result == 1


def link_pair(ours: socket.socket) -> tuple[Any, Any]:
    """The blocking client's link on ``ours`` (its session not greeted), and a
    wsproto server connection whose frames go to the other end of the pair."""
    from wsproto import ConnectionType
    from wsproto.connection import Connection

    from actorq._remote._blocking import _Link

    link = _Link(
        ours,
        Connection(ConnectionType.CLIENT),
        max_message_size=1 << 20,
        send_timeout=5.0,
        name="pair",
    )
    return link, Connection(ConnectionType.SERVER)


def test_pings_are_answered_fragments_joined_and_a_close_read_after_what_came_before() -> None:
    # the blocking link over a socket pair, with wsproto as the server: what
    # the frame hot path does not take (control frames, fragments) goes
    # through wsproto, in order
    from wsproto.events import CloseConnection, Ping, Pong, TextMessage

    from actorq._remote._blocking import _Gone

    ours, theirs = socket.socketpair()
    with ours, theirs:
        link, server = link_pair(ours)
        theirs.sendall(
            server.send(Ping(b"are you there"))
            + server.send(TextMessage("hel", message_finished=False))
            + server.send(TextMessage("lo"))
            + server.send(TextMessage("whole"))
        )
        got: list[str | bytes] = []
        while len(got) < 2:
            got += link.read(5.0)
        assert got == ["hello", "whole"]
        theirs.settimeout(5.0)
        server.receive_data(theirs.recv(65536))
        assert [type(e) for e in server.events()] == [Pong]

        theirs.sendall(server.send(TextMessage("last")) + server.send(CloseConnection(4001)))
        got = []
        while not got:
            got += link.read(5.0)
        assert got == ["last"]
        with pytest.raises(_Gone) as info:
            link.read(5.0)
        assert not info.value.retryable  # 4001: a refused token is never retried


def test_a_refusal_and_its_close_in_one_read_is_still_the_refusal() -> None:
    # The server answers a bad hello with an error, then closes (4001). When
    # both arrive in one read, the error is what the caller hears: the close
    # must not end the session before the error before it is read.
    from wsproto.events import CloseConnection, TextMessage

    from actorq._remote._blocking import BlockingQueue, _Refused

    ours, theirs = socket.socketpair()
    with ours, theirs:
        link, server = link_pair(ours)
        refusal = w.encode(w.error_reply(1, actorq.ProtocolError("invalid token", "unauthorized")))
        theirs.sendall(server.send(TextMessage(refusal)) + server.send(CloseConnection(4001)))
        queue = BlockingQueue(
            ["ws://127.0.0.1:1"],
            token="bad",
            ssl_context=None,
            connect_timeout=5.0,
            send_timeout=5.0,
            max_message_size=1 << 20,
            reconnect_timeout=None,
            keepalive_timeout=None,
        )
        with pytest.raises(_Refused) as info:
            queue._greet(link, time.monotonic() + 5.0)
        error = info.value.error
        assert isinstance(error, actorq.ProtocolError)
        assert error.reason == "unauthorized"


async def test_a_forked_process_opens_its_own_connection_and_leaves_the_parents() -> None:
    # a pre-forking web server: the app made its client, then the server forked
    async with served() as (local, front):
        with await blocking(lambda: actorq.connect_blocking(front.url)) as queue:
            await blocking(lambda: queue.enqueue("t", "parent, before"))

            def fork_and_enqueue() -> int:
                reading, writing = os.pipe()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
                    pid = os.fork()
                if pid == 0:  # the child: no trio here, only this thread
                    code = 1
                    try:
                        queue.enqueue("t", "child")
                        os.write(writing, b"ok")
                        code = 0
                    finally:
                        os._exit(code)
                os.close(writing)
                with os.fdopen(reading, "rb") as answer:
                    said = answer.read()
                _, status = os.waitpid(pid, 0)
                assert said == b"ok"
                return os.waitstatus_to_exitcode(status)

            assert await blocking(fork_and_enqueue) == 0
            # the parent's connection is whole and still its own
            await blocking(lambda: queue.enqueue("t", "parent, after"))
            assert front.connections == 2  # the parent's, the child's
        args = [(await local.job(job.id)).args for job in await local.list_jobs()]
        assert sorted(args) == ["child", "parent, after", "parent, before"]
