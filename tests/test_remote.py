"""The websocket server and the remote client, beyond the conformance suite.

Most tests run the real server and client over in-memory byte streams
(deterministic, MockClock-friendly); a few use real loopback sockets, TLS, or
a server in a child process, with real time and no autojump (trio-websocket
issue 94). Raw-protocol tests speak JSON frames to the server directly.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import uuid
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import trio
import trio.testing
from _kinds_remote import remote_pair
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

import actorq
from actorq._core import _ops as ops
from actorq._remote import _wire as w
from actorq._remote._client import connect_stream
from actorq._remote._frames import decode
from actorq._remote._server import QueueServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

# ------------------------------------------------------------------ helpers


async def settle() -> None:
    """Let every task run until nothing moves (in-memory streams only)."""
    for _ in range(3):
        await trio.testing.wait_all_tasks_blocked()


@asynccontextmanager
async def raw(
    server: QueueServer, *, hello: bool = True, token: str | None = None, lockstep: bool = False
) -> AsyncIterator[WebSocketConnection]:
    """A bare websocket to ``server`` over memory streams, greeted unless told not to.

    ``lockstep`` streams buffer nothing: a peer that stops reading blocks the sender.
    """
    pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    client_stream, server_stream = pair()
    served_out = trio.Event()

    async def serve_it() -> None:
        await server.handle_stream(server_stream)
        served_out.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_it)
        ws = await wrap_client_stream(nursery, client_stream, "localhost", "/")  # type: ignore[arg-type]
        if hello:
            await ws.send_message(w.encode(w.Hello(id=0, versions=[1], token=token)))
            welcome = orjson.loads(await ws.get_message())
            assert welcome["kind"] == "welcome", welcome
        try:
            yield ws
        finally:
            # let the server finish its side of the close before we vanish
            with trio.move_on_after(3):
                await ws.aclose()
                await served_out.wait()
            nursery.cancel_scope.cancel()


async def ask(ws: WebSocketConnection, frame: str | dict[str, Any]) -> dict[str, Any]:
    await ws.send_message(frame if isinstance(frame, str) else orjson.dumps(frame).decode())
    reply: dict[str, Any] = orjson.loads(await ws.get_message())
    return reply


async def close_code(ws: WebSocketConnection) -> int:
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(10):
            await ws.get_message()
    assert info.value.reason is not None
    return info.value.reason.code


@asynccontextmanager
async def served(**options: Any) -> AsyncIterator[tuple[actorq.LocalQueue, QueueServer]]:
    async with actorq.open_queue() as local:
        yield local, QueueServer(local, **options)


async def assert_pending(local: actorq.LocalQueue, job_id: uuid.UUID) -> None:
    status = await local.job_status(job_id)
    assert status.state is actorq.JobState.PENDING
    assert await local.heartbeats(0) == []


# ------------------------------------------------------------- basics


async def test_exports() -> None:
    assert actorq.serve is not None
    assert actorq.connect is not None
    assert issubclass(actorq.ProtocolError, actorq.JobQueueError)
    assert issubclass(actorq.RemoteQueue, actorq.JobQueue)


async def test_welcome_tells_limits() -> None:
    async with remote_pair(max_in_flight=7, max_message_size=50_000) as (remote, _, _):
        assert remote.version == w.PROTOCOL_VERSION == 3
        assert remote.max_in_flight == 7
        assert remote.server_max_message_size == 50_000


async def test_enqueue_many_is_all_or_nothing() -> None:
    async with remote_pair() as (remote, local, _):
        ids = await remote.enqueue_many([("a", {"n": 1}), ("b", None)], channel="c")
        assert [(await local.job(i)).type for i in ids] == ["a", "b"]
        assert (await local.job(ids[0])).args == {"n": 1}
        with pytest.raises(TypeError):
            await remote.enqueue_many([("a", object())])
        # a batch with an unknown dependency adds nothing (over the raw protocol)
        server = QueueServer(local)
        async with raw(server) as ws:
            reply = await ask(
                ws,
                {
                    "kind": "enqueue_many",
                    "id": 1,
                    "jobs": [
                        {"job_type": "x"},
                        {"job_type": "y", "dependencies": [str(uuid.uuid4())]},
                    ],
                },
            )
        assert reply["error"] == "not_exist"
        assert len(await local.all_root_job_ids()) == 2


async def test_finish_and_dequeue() -> None:
    async with remote_pair() as (remote, local, _):
        first = await remote.enqueue("t", 1)
        second = await remote.enqueue("t", 2)
        job = await remote.dequeue(["t"], timeout=0)
        assert job.id == first
        nxt = await remote.finish_and_dequeue(job.id, {"done": 1}, ["t"], timeout=0)
        assert (nxt.id, nxt.args) == (second, 2)
        assert (await local.job_status(first)).result == {"done": 1}
        assert remote.held_jobs == {second: nxt.token}
        # finished, then nothing to dequeue: the finish still took effect
        with pytest.raises(actorq.DequeueTimeoutError):
            await remote.finish_and_dequeue(second, None, ["t"], timeout=0)
        assert (await local.job_status(second)).state is actorq.JobState.FINISHED
        assert remote.held_jobs == {}
        # a finish that fails dequeues nothing
        third = await remote.enqueue("t", 3)
        with pytest.raises(actorq.NotRunningError):
            await remote.finish_and_dequeue(second, None, ["t"], timeout=0)
        await assert_pending(local, third)
        assert (await remote.dequeue(["t"], timeout=0)).id == third
        elsewhere = await remote.enqueue("t", 4, (), "elsewhere")
        got = await remote.finish_and_dequeue(third, None, ["t"], any_channel=True, timeout=0)
        assert (got.id, got.channel) == (elsewhere, "elsewhere")


async def test_token_operations_touch_only_the_job_their_token_names() -> None:
    async with remote_pair() as (stale, local, server):
        job_id = await stale.enqueue("t")
        first = await stale.dequeue(["t"], timeout=0)
        # the job goes back (say its heartbeat expired) and another worker runs it
        local.release(first)
        async with raw(server) as ws:
            reply = await ask(ws, {"kind": "dequeue", "id": 1, "job_types": ["t"], "timeout": 0})
        second_token = uuid.UUID(reply["job"]["token"])
        # the stale worker's finish carries its old token: refused
        with pytest.raises(actorq.NotExistError):
            await stale.finish_job(job_id, {"stale": True})
        with pytest.raises(actorq.NotExistError):
            await stale.update_job_result(job_id, {"stale": True})
        status = await local.job_status(job_id)
        assert status.state is actorq.JobState.RUNNING
        assert status.result is None
        assert await local.id_from_token(second_token) == job_id
        assert stale.held_jobs == {}


async def test_oversize_requests_and_replies() -> None:
    async with remote_pair(max_message_size=2048, client_max_message_size=2048) as (
        remote,
        local,
        _,
    ):
        with pytest.raises(actorq.ProtocolError) as info:
            await remote.enqueue("t", "x" * 5000)  # refused before it is sent
        assert info.value.reason == "oversize"
        assert await local.all_root_job_ids() == []
        # a job too large for the client it would go to is not lost
        job_id = await local.enqueue("big", "y" * 3000)
        with pytest.raises(actorq.ProtocolError) as info:
            await remote.dequeue(["big"], timeout=0)
        assert info.value.reason == "oversize"
        await assert_pending(local, job_id)
        assert await remote.stats()  # the connection is fine


async def test_internal_errors_reach_the_client_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: Any, state: Any, scope: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ops.GetStats, "apply", broken)
    async with remote_pair() as (remote, _, _):
        with pytest.raises(actorq.JobQueueError) as info:
            await remote.stats()
        assert "internal" in str(info.value)
        assert await remote.all_root_job_ids() == []


# --------------------------------------------- cancellation: no job lost


async def test_cancel_after_assign_over_the_wire() -> None:
    # Cancel a parked remote dequeue and make a job ready in the same tick:
    # the server may or may not have assigned and even sent the job by the
    # time the cancel arrives. In every interleaving the job ends up pending
    # with a void token.
    for _ in range(20):
        async with remote_pair() as (remote, local, _):
            scope = trio.CancelScope()
            outcome: list[object] = []

            async def dequeuer(
                scope: trio.CancelScope = scope,
                remote: actorq.RemoteQueue = remote,
                outcome: list[object] = outcome,
            ) -> None:
                with scope:
                    outcome.append(await remote.dequeue(["t"]))
                outcome.append("cancelled" if scope.cancelled_caught else "returned")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(dequeuer)
                await settle()
                scope.cancel()
                job_id = await local.enqueue("t", {"n": 1})
            await settle()
            assert outcome == ["cancelled"]
            await assert_pending(local, job_id)
            assert (await local.stats()).waiting_dequeuers == 0
            assert remote.held_jobs == {}
            job = await remote.dequeue(["t"], timeout=0)
            assert (job.id, job.args) == (job_id, {"n": 1})


async def test_server_releases_a_job_whose_request_was_cancelled() -> None:
    # The cancel and the job race inside the server: the dequeue's task may
    # hold the job when it learns of the cancel (it gives it back, sends
    # nothing), or may have sent it already (the frames crossed; the client
    # gives it back). Every run ends with the job pending and its token void.
    outcomes = set()
    for _ in range(20):
        async with served() as (local, server), raw(server) as ws:
            await ws.send_message(w.encode(w.Request(id=1, op=ops.Dequeue(job_types=("t",)))))
            await settle()
            assert (await local.stats()).waiting_dequeuers == 1
            await ws.send_message(w.encode(w.Cancel(id=1)))
            job_id = await local.enqueue("t")
            await settle()
            with trio.move_on_after(0.05):
                reply = orjson.loads(await ws.get_message())
                assert reply["kind"] == "dequeued"
                token = uuid.UUID(reply["job"]["token"])
                await ws.send_message(w.encode(w.Release(id=2, job_id=job_id, token=token)))
                await settle()
                outcomes.add("crossed")
            outcomes.add("any")
            await assert_pending(local, job_id)
            assert (await local.stats()).waiting_dequeuers == 0
    assert "any" in outcomes


async def test_client_releases_a_job_that_crosses_its_cancel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A fake server: on a dequeue it waits for the cancel, then sends the job
    # anyway, as if the two frames crossed on the wire. The client must give
    # the job back with a release naming it.
    job = actorq.DequeuedJob(
        id=uuid.uuid4(), token=uuid.uuid4(), dependencies=[], type="t", args=None, channel=""
    )
    seen: list[w.Message] = []
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def fake_server() -> None:
        from trio_websocket import wrap_server_stream

        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, server_stream)
            ws = await request.accept()
            hello = w.decode(await ws.get_message())
            await ws.send_message(w.encode(w.Welcome(id=hello.id, version=1, max_in_flight=4)))
            dequeue = w.decode(await ws.get_message())
            seen.append(dequeue)
            seen.append(w.decode(await ws.get_message()))  # the cancel
            await ws.send_message(w.encode(w.Dequeued(id=dequeue.id, job=job)))
            seen.append(w.decode(await ws.get_message()))  # the release
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_server)
        async with connect_stream(client_stream, heartbeat_interval=None) as remote:
            with trio.move_on_after(5) as scope:
                await remote.dequeue(["t"])
            assert scope.cancelled_caught
            await settle()
            assert remote.held_jobs == {}
    dequeue, cancel, release = seen
    assert isinstance(cancel, w.Cancel)
    assert cancel.id == dequeue.id
    assert isinstance(release, w.Release)
    assert (release.job_id, release.token) == (job.id, job.token)


async def test_a_server_that_breaks_the_protocol_ends_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A fake server answers a request the client never sent: every call
    # waiting on the connection fails with one error, and so do later calls.
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def fake_server() -> None:
        from trio_websocket import wrap_server_stream

        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, server_stream)
            ws = await request.accept()
            hello = w.decode(await ws.get_message())
            await ws.send_message(w.encode(w.Welcome(id=hello.id, version=1, max_in_flight=4)))
            await ws.get_message()  # the dequeue, never answered
            await ws.send_message(w.encode(w.Ok(id=999)))
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_server)
        async with connect_stream(client_stream, heartbeat_interval=None) as remote:
            with trio.fail_after(5), pytest.raises(actorq.QueueClosedError) as info:
                await remote.dequeue(["t"])
            assert "broke the protocol" in str(info.value)
            assert remote.closed
            with pytest.raises(actorq.QueueClosedError):
                await remote.stats()
        nursery.cancel_scope.cancel()


async def test_client_release_path_is_sound_against_the_real_server() -> None:
    # the same crossing, against the real server: the job comes back
    async with served() as (local, server), raw(server) as ws:
        await ws.send_message(w.encode(w.Request(id=1, op=ops.Dequeue(job_types=("t",)))))
        await settle()
        job_id = await local.enqueue("t")
        reply = orjson.loads(await ws.get_message())
        assert reply["kind"] == "dequeued"
        await ws.send_message(w.encode(w.Cancel(id=1)))  # too late: ignored
        token = uuid.UUID(reply["job"]["token"])
        await ws.send_message(w.encode(w.Release(id=2, job_id=job_id, token=token)))
        await settle()
        await assert_pending(local, job_id)
        with pytest.raises(actorq.NotExistError):
            await local.id_from_token(token)


async def test_reply_that_cannot_be_sent_gives_the_job_back() -> None:
    released: list[actorq.DequeuedJob] = []

    class Queue:
        def release(self, job: actorq.DequeuedJob, *, scope: Any = None) -> None:
            released.append(job)

    class DeadSocket:
        async def send_message(self, text: str) -> None:
            raise ConnectionClosed(None)

    from actorq._remote._server import _Connection

    async with served() as (_, server):
        conn = _Connection(server, DeadSocket(), trio.testing.memory_stream_pair()[0])  # type: ignore[arg-type]
        conn.queue = Queue()  # type: ignore[assignment]
        jobs = [
            actorq.DequeuedJob(
                id=uuid.uuid4(), token=uuid.uuid4(), dependencies=[], type="t", args=n, channel=""
            )
            for n in range(3)
        ]
        # two messages queued together, the send fails: both jobs go back
        assert conn._post("{}", [jobs[0]])
        assert conn._post("{}", [jobs[1]])
        await conn._writer()
        assert released == jobs[:2]
        # the writer is gone: a post is refused, and its job stays the caller's
        assert not conn._post("{}", [jobs[2]])
        assert released == jobs[:2]


async def test_disconnect_mid_dequeue_withdraws_the_wait() -> None:
    async with served() as (local, server):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_stream)
            async with connect_stream(client_stream, heartbeat_interval=None) as remote:
                running_id = await remote.enqueue("run")
                running = await remote.dequeue(["run"], timeout=0)
                lost: list[BaseException] = []

                async def blocked(remote: actorq.RemoteQueue = remote) -> None:
                    try:
                        await remote.dequeue(["t"])
                    except actorq.QueueClosedError as exc:
                        lost.append(exc)

                nursery.start_soon(blocked)
                await settle()
                assert (await local.stats()).waiting_dequeuers == 1
                # the worker vanishes: no close handshake, just a dead stream
                await trio.aclose_forcefully(client_stream)
                await settle()
                assert remote.closed
                assert len(lost) == 1
            nursery.cancel_scope.cancel()
        assert (await local.stats()).waiting_dequeuers == 0
        assert server.connections == 0
        job_id = await local.enqueue("t")
        await assert_pending_and_take(local, job_id)
        # the running job stays running: its worker may come back and finish it
        assert await local.id_from_token(running.token) == running_id
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_stream)
            async with connect_stream(client_stream, heartbeat_interval=None) as again:
                assert await again.id_from_token(running.token) == running_id
                await again.finish_job(running_id, {"after": "reconnect"})
            nursery.cancel_scope.cancel()
        assert (await local.job_status(running_id)).result == {"after": "reconnect"}


async def assert_pending_and_take(local: actorq.LocalQueue, job_id: uuid.UUID) -> None:
    assert (await local.job_status(job_id)).state is actorq.JobState.PENDING
    assert (await local.dequeue(["t"], timeout=0)).id == job_id


async def test_calls_after_the_connection_is_lost_raise_closed() -> None:
    async with served() as (_, server):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_stream)
            async with connect_stream(client_stream, heartbeat_interval=None) as remote:
                waiting: list[BaseException] = []

                async def blocked() -> None:
                    try:
                        await remote.dequeue(["t"])
                    except actorq.QueueClosedError as exc:
                        waiting.append(exc)

                nursery.start_soon(blocked)
                await settle()
                server.close()  # the server goes away under the client
                await trio.aclose_forcefully(server_stream)
                await settle()
                assert len(waiting) == 1
                with pytest.raises(actorq.QueueClosedError):
                    await remote.stats()
            nursery.cancel_scope.cancel()


# -------------------------------------------------------------- heartbeats


async def test_client_refreshes_heartbeats_of_jobs_it_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with remote_pair(heartbeat_interval=10) as (remote, local, _):
        await remote.enqueue("t")
        await remote.enqueue("t")
        kept = await remote.dequeue(["t"], timeout=0)
        other = await local.dequeue(["t"], timeout=0)  # someone else's: not refreshed
        await trio.sleep(100)
        assert await local.heartbeats(50) == [other.token]
        assert remote.held_jobs == {kept.id: kept.token}
        # a job canceled elsewhere is dropped at the next refresh
        await local.cancel_job(kept.id)
        await trio.sleep(11)
        assert remote.held_jobs == {}


async def test_held_jobs_follow_finish_and_requeue() -> None:
    async with remote_pair() as (remote, _, _):
        a = await remote.enqueue("t")
        b = await remote.enqueue("t")
        ja = await remote.dequeue(["t"], timeout=0)
        jb = await remote.dequeue(["t"], timeout=0)
        assert remote.held_jobs == {a: ja.token, b: jb.token}
        await remote.finish_job(a)
        assert await remote.requeue_or_finish_job(b, 1) is True
        assert remote.held_jobs == {}
        jb = await remote.dequeue_by_id(b)
        remote.release(jb)
        assert remote.held_jobs == {}
        await settle()
        assert (await remote.job_status(b)).state is actorq.JobState.PENDING


# ---------------------------------------------------------------- bad input


async def test_malformed_frames_get_error_replies_and_the_connection_goes_on() -> None:
    async with served() as (local, server), raw(server) as ws:
        cases = [
            ("{not json", "bad_json", None),
            ('"text"', "not_object", None),
            ('{"kind": "explode", "id": 4}', "unknown_kind", 4),
            ('{"kind": "enqueue", "id": 5}', "bad_field", 5),
            ('{"kind": "enqueue", "id": 6, "job_type": 3}', "bad_field", 6),
            ('{"kind": "stats", "id": 7, "surplus": true}', "bad_field", 7),
            ('{"kind": "job_status", "id": 8, "job_id": "not-a-uuid"}', "bad_uuid", 8),
            ('{"kind": "ok", "id": 9}', "unexpected_kind", 9),
            ('{"kind": "hello", "id": 10, "versions": [1]}', "unexpected_kind", 10),
        ]
        for frame, reason, request_id in cases:
            reply = await ask(ws, frame)
            assert reply["kind"] == "error"
            assert reply["error"] == "protocol_error"
            assert (reply["reason"], reply["id"]) == (reason, request_id), frame
        # bad argument values are TypeError/ValueError on the client side
        reply = await ask(ws, {"kind": "enqueue", "id": 11, "job_type": ""})
        assert reply["error"] == "value_error"
        reply = await ask(ws, {"kind": "dequeue", "id": 12, "job_types": ["t"], "timeout": -1})
        assert reply["error"] == "value_error"
        reply = await ask(ws, {"kind": "job_status", "id": 13, "job_id": str(uuid.uuid4())})
        assert reply["error"] == "not_exist"
        reply = await ask(ws, {"kind": "enqueue", "id": 14, "job_type": "t", "args": [1]})
        assert reply["kind"] == "ok"
        assert (await local.job(uuid.UUID(reply["value"]))).args == [1]


async def test_binary_and_oversize_frames_close_only_their_connection() -> None:
    async with served(max_message_size=4096) as (local, server):
        async with raw(server) as good:
            async with raw(server) as ws:
                await ws.send_message(b"\x00\x01")
                assert await close_code(ws) == 1003
            async with raw(server) as ws:
                await ws.send_message('{"kind":"enqueue","id":1,"job_type":"' + "x" * 5000 + '"}')
                assert await close_code(ws) == 1009
            reply = await ask(good, {"kind": "enqueue", "id": 1, "job_type": "t"})
            assert reply["kind"] == "ok"
        assert len(await local.all_root_job_ids()) == 1


async def test_flood_beyond_max_in_flight() -> None:
    async with served(max_in_flight=3) as (local, server), raw(server) as ws:
        for n in range(3):
            await ws.send_message(w.encode(w.Request(id=n, op=ops.Dequeue(job_types=("t",)))))
        await settle()
        for n in range(3, 6):
            reply = await ask(ws, w.encode(w.Request(id=n, op=ops.GetStats())))
            assert (reply["id"], reply["reason"]) == (n, "too_many_requests")
        # duplicate ids are refused too
        reply = await ask(ws, w.encode(w.Request(id=1, op=ops.Dequeue(job_types=("t",)))))
        assert reply["reason"] in ("duplicate_id", "too_many_requests")
        # cancels free slots at once
        await ws.send_message(w.encode(w.Cancel(id=0)))
        reply = await ask(ws, w.encode(w.Request(id=9, op=ops.GetStats())))
        assert reply["kind"] == "ok"
        assert reply["value"]["waiting_dequeuers"] == 2
        job_id = await local.enqueue("t")
        reply = orjson.loads(await ws.get_message())
        assert reply["kind"] == "dequeued"
        assert reply["job"]["id"] == str(job_id)


async def test_a_client_that_floods_without_reading_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with served(max_in_flight=1) as (local, server), raw(server, lockstep=True) as ws:
        # Every refused request queues an error reply. A client that sends
        # and never reads them is cut off, rather than growing server memory.
        await ws.send_message(w.encode(w.Request(id=0, op=ops.Dequeue(job_types=("t",)))))
        with trio.move_on_after(30), contextlib.suppress(ConnectionClosed):
            for n in range(1, 2000):
                await ws.send_message(w.encode(w.Request(id=n, op=ops.GetStats())))
        await settle()
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.get_message()
        assert (await local.stats()).waiting_dequeuers == 0
        assert server.connections == 0


async def test_hello_rules(autojump_clock: trio.testing.MockClock) -> None:
    async with served(handshake_timeout=5) as (_, server):
        async with raw(server, hello=False) as ws:
            reply = await ask(ws, w.encode(w.Request(id=1, op=ops.GetStats())))
            assert reply["reason"] == "hello_expected"
            assert await close_code(ws) == 4000
        async with raw(server, hello=False) as ws:
            reply = await ask(ws, w.encode(w.Hello(id=0, versions=[99])))
            assert reply["reason"] == "unsupported_version"
            assert await close_code(ws) == 4002
        async with raw(server, hello=False) as ws:
            assert await close_code(ws) == 4008  # said nothing for 5 s


# --------------------------------------------------------- auth and tenancy


async def test_auth_token() -> None:
    async with served(auth="s3cret") as (local, server):
        for token in (None, "wrong", "s3cre", "s3cret-and-more"):
            client_stream, server_stream = trio.testing.memory_stream_pair()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.handle_stream, server_stream)
                with pytest.raises(actorq.ProtocolError) as info:
                    async with connect_stream(client_stream, token=token):
                        pass
                assert info.value.reason == "unauthorized"
        async with raw(server, hello=False) as ws:
            reply = await ask(ws, w.encode(w.Hello(id=0, versions=[1], token="nope")))
            assert reply["reason"] == "unauthorized"
            assert await close_code(ws) == 4001
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_stream)
            async with connect_stream(client_stream, token="s3cret") as remote:
                await remote.enqueue("t")
            nursery.cancel_scope.cancel()
        assert len(await local.all_root_job_ids()) == 1


async def test_tenancy() -> None:
    tenants = {"token-a": ["a", ""], "token-b": ["b"]}
    async with remote_pair(auth="admin", tenants=tenants, token="token-a") as (
        tenant,
        local,
        server,
    ):
        mine = await tenant.enqueue("t", None, (), "a")
        theirs = await local.enqueue("t", None, (), "b")
        for call in (
            tenant.enqueue("t", None, (), "b"),
            tenant.dequeue(["t"], ["a", "b"], timeout=0),
            tenant.insert_worker("b", "x86_64"),
            tenant.list_jobs(channel="b"),
            tenant.stats(),
        ):
            with pytest.raises(actorq.ProtocolError) as info:
                await call
            assert info.value.reason == "forbidden"
        # jobs of other channels do not exist for this token
        for job_call in (
            tenant.job_status,
            tenant.job,
            tenant.cancel_job,
            tenant.delete_job,
            tenant.dequeue_by_id,
            tenant.finish_job,
        ):
            with pytest.raises(actorq.NotExistError):
                await job_call(theirs)
        assert await tenant.all_root_job_ids() == [mine]
        assert [j.id for j in await tenant.list_jobs()] == [mine]
        # "any channel" means any of its own channels
        job = await tenant.dequeue_any_channel(["t"], timeout=0)
        assert job.id == mine
        with pytest.raises(actorq.DequeueTimeoutError):
            await tenant.dequeue_any_channel(["t"], timeout=0)
        assert await tenant.heartbeats(0) == [job.token]
        await tenant.finish_job(mine)
        other_worker = await local.insert_worker("b", "x86_64")
        with pytest.raises(actorq.WorkerNotExistError):
            await tenant.delete_worker(other_worker)
        assert await tenant.workers() == []
        assert (await local.job_status(theirs)).state is actorq.JobState.PENDING
        # the admin token sees everything
        async with raw(server, token="admin") as ws:
            reply = await ask(ws, w.encode(w.Request(id=1, op=ops.GetStats())))
            assert reply["value"]["jobs"] == 2


async def test_tenancy_covers_dependencies_tokens_workers_and_deletes() -> None:
    tenants = {"token-a": ["a"], "token-b": ["b"]}
    async with remote_pair(auth="admin", tenants=tenants, token="token-a") as (
        tenant,
        local,
        server,
    ):
        theirs = await local.enqueue("t", None, (), "b")
        # another tenant's job cannot be named as a dependency, so it gains no dependent
        with pytest.raises(actorq.NotExistError):
            await tenant.enqueue("t", None, [theirs], "a")
        assert (await local.job_status(theirs)).dependents == []
        # deleting its own job leaves another tenant's dependency where it is
        leaf = await local.enqueue("t", None, [theirs], "a")
        await tenant.delete_job(leaf)
        assert (await local.job_status(theirs)).state is actorq.JobState.PENDING
        assert theirs in await local.all_root_job_ids()
        # a token of another tenant's job names nothing for this one
        running = await local.dequeue(["t"], ["b"], timeout=0)
        assert running.id == theirs
        with pytest.raises(actorq.NotExistError):
            await tenant.id_from_token(running.token)
        with pytest.raises(actorq.NotExistError):
            await tenant.refresh_heartbeat(running.token)
        assert await tenant.refresh_heartbeats([running.token]) == [running.token]
        async with raw(server, token="token-a") as ws:
            frame = w.encode(w.Release(id=5, job_id=running.id, token=running.token))
            await ws.send_message(frame)
            # a request after it on the same connection: the release was handled first
            await ask(ws, w.encode(w.Request(id=6, op=ops.AllRootJobIds())))
            spec = {"job_type": "t", "dependencies": [str(theirs)], "channel": "a"}
            reply = await ask(ws, {"kind": "enqueue_many", "id": 7, "jobs": [spec]})
            assert reply["error"] == "not_exist"
        assert (await local.job_status(theirs)).state is actorq.JobState.RUNNING
        assert await local.id_from_token(running.token) == theirs
        # nor can it dequeue under another tenant's worker
        other_worker = await local.insert_worker("b", "x86_64")
        with pytest.raises(actorq.WorkerNotExistError):
            await tenant.dequeue(["t"], ["a"], timeout=0, worker_id=other_worker)
        with pytest.raises(actorq.WorkerNotExistError):
            await tenant.dequeue(["t"], ["a"], timeout=5, worker_id=other_worker)


# ------------------------------------------------- real sockets, real time


@asynccontextmanager
async def serving(
    **options: Any,
) -> AsyncIterator[tuple[actorq.LocalQueue, QueueServer]]:
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        server: QueueServer = await nursery.start(
            lambda task_status: actorq.serve(
                local, "127.0.0.1", 0, task_status=task_status, **options
            )
        )
        try:
            yield local, server
        finally:
            server.close()


async def test_serve_on_loopback_and_close() -> None:
    async with serving() as (local, server):
        assert server.port > 0
        url = f"ws://127.0.0.1:{server.port}"
        async with actorq.connect(url, reconnect=False) as remote:
            job_id = await remote.enqueue("t", {"x": 1})
            job = await remote.dequeue(["t"], timeout=1)
            assert job.id == job_id
            await remote.finish_job(job.id, "ok")
            server.close()
            with trio.fail_after(5), pytest.raises(actorq.QueueClosedError):
                await remote.dequeue(["never"])  # fails as soon as the server is gone
            assert remote.closed
        assert (await local.job_status(job_id)).result == "ok"


async def test_connect_tries_each_url() -> None:
    async with serving() as (_, server):
        # a port nothing listens on: bind one and close it
        with trio.socket.socket() as sock:
            await sock.bind(("127.0.0.1", 0))
            dead = sock.getsockname()[1]
        urls = [f"ws://127.0.0.1:{dead}", f"ws://127.0.0.1:{server.port}/"]
        async with actorq.connect(urls) as remote:
            assert await remote.all_root_job_ids() == []
        with pytest.raises(actorq.QueueClosedError):
            async with actorq.connect(f"ws://127.0.0.1:{dead}", connect_timeout=2):
                pass
        with pytest.raises(ValueError, match="is not a ws:// or wss:// URL"):
            async with actorq.connect("http://127.0.0.1:1"):
                pass


async def test_tls() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with serving(ssl_context=server_context, auth="tls-token") as (local, server):
        url = f"wss://127.0.0.1:{server.port}"
        async with actorq.connect(url, ssl_context=client_context, token="tls-token") as remote:
            job_id = await remote.enqueue("t")
            assert (await remote.dequeue(["t"], timeout=1)).id == job_id
        # a client that does not trust the certificate does not get in
        with pytest.raises(actorq.QueueClosedError):
            async with actorq.connect(url, ssl_context=ssl.create_default_context()):
                pass
        # nor does a plain-text client
        with pytest.raises(actorq.QueueClosedError):
            async with actorq.connect(f"ws://127.0.0.1:{server.port}", connect_timeout=0.5):
                pass
        assert len(await local.all_root_job_ids()) == 1


async def test_200_worker_connections() -> None:
    async with serving() as (local, server):
        url = f"ws://127.0.0.1:{server.port}"
        done: list[uuid.UUID] = []
        connected = trio.Event()
        ready = [0]

        async def worker() -> None:
            async with actorq.connect(url, heartbeat_interval=None) as remote:
                ready[0] += 1
                if ready[0] == 200:
                    connected.set()
                job = await remote.dequeue(["t"], timeout=30)
                await remote.finish_job(job.id, {"by": "worker"})
                done.append(job.id)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(worker)
                await connected.wait()
                assert server.connections == 200
                pushed = await local.enqueue_many([("t", n) for n in range(200)])
        assert sorted(done) == sorted(pushed)
        stats = await local.stats()
        assert (stats.finished, stats.running, stats.waiting_dequeuers) == (200, 0, 0)


SERVER_SCRIPT = textwrap.dedent(
    """
    import sys, trio, actorq

    async def main():
        async with actorq.open_queue() as queue, trio.open_nursery() as nursery:
            server = await nursery.start(actorq.serve, queue, "127.0.0.1", 0)
            print(server.port, flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)  # until the parent says stop
            nursery.cancel_scope.cancel()

    trio.run(main)
    """
)


async def test_server_in_a_child_process() -> None:
    child = subprocess.Popen(  # noqa: ASYNC220 (starting it does not block)
        [sys.executable, "-c", SERVER_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(await trio.to_thread.run_sync(child.stdout.readline))
        async with actorq.connect(f"ws://127.0.0.1:{port}", reconnect_timeout=1) as remote:
            job_id = await remote.enqueue("t", {"in": "child"})
            with trio.move_on_after(0.2):
                await remote.dequeue(["other"])  # cancelled mid-wait, over a real socket
            job = await remote.dequeue(["t"], timeout=2)
            assert (job.id, job.args) == (job_id, {"in": "child"})
            assert await remote.requeue_or_finish_job(job.id, 0, {"ok": 1}) is False
            assert (await remote.job_status(job_id)).result == {"ok": 1}
            assert (await remote.stats()).waiting_dequeuers == 0
            child.kill()  # the server dies under the client
            with pytest.raises(actorq.QueueClosedError):
                with trio.fail_after(10):
                    await remote.dequeue(["t"])
    finally:
        child.kill()
        await trio.to_thread.run_sync(child.wait)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


async def test_writes_straight_to_the_socket_keep_order_and_lose_nothing() -> None:
    # Over TCP the server's actor and a lone request's task write to the
    # socket themselves, and the writer tasks send only what a full socket
    # did not take. Jobs too large for the socket buffer, concurrent and
    # sequential requests, and a stream pushing to a worker on the same
    # client: every reply reaches its request, every job runs once.
    big = "x" * 600_000  # several of these fill any loopback socket buffer
    async with serving() as (local, server):
        url = f"ws://127.0.0.1:{server.port}"
        async with actorq.connect(url, reconnect=False) as producer:
            ids: list[uuid.UUID] = []

            async def enqueue(n: int) -> None:
                ids.append(await producer.enqueue("t", {"n": n, "pad": big if n % 10 == 0 else ""}))

            async with trio.open_nursery() as nursery:
                for n in range(100):
                    nursery.start_soon(enqueue, n)
            for n in range(100, 150):
                await enqueue(n)
            assert len(set(ids)) == 150
            seen: list[int] = []
            async with (
                actorq.connect(url, reconnect=False) as consumer,
                consumer.open_stream(["t"], credit=20) as stream,
            ):
                while len(seen) < 150:
                    job = await stream.receive()
                    assert job.args["pad"] == (big if job.args["n"] % 10 == 0 else "")
                    seen.append(job.args["n"])
                    stream.finish(job, job.args["n"])
                await stream.wait_settled()
            assert sorted(seen) == list(range(150))
            for job_id in ids:
                status = await producer.job_status(job_id)
                assert status.state is actorq.JobState.FINISHED
        assert (await local.stats()).finished == 150


async def test_the_last_runs_finish_goes_out_at_once_and_carries_the_others() -> None:
    # While another run is still going, a finish waits a scheduler pass, so
    # that runs finishing together share a settle. The finish of the last run
    # going, made while no settle is on its way, is on the wire when finish()
    # returns, written from the finishing task, with the finishes waiting.
    accepted: list[trio.SocketStream] = []
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        server = QueueServer(local)

        async def handle(stream: trio.SocketStream) -> None:
            accepted.append(stream)
            await server.handle_stream(stream)

        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]

        def waiting() -> bytes:
            # what the client sent that the server has not read yet
            fd = accepted[0].socket.fileno()
            with socket.socket(fileno=os.dup(fd)) as peek:
                try:
                    return peek.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return b""

        first = await local.enqueue("t", {"n": 1})
        second = await local.enqueue("t", {"n": 2})
        async with (
            actorq.connect(f"ws://127.0.0.1:{port}", reconnect=False) as remote,
            remote.open_stream(["t"], credit=2) as stream,
        ):
            jobs = [await stream.receive(), await stream.receive()]
            await trio.testing.wait_all_tasks_blocked()
            assert waiting() == b""
            stream.finish(jobs[0], "one")
            assert waiting() == b""  # the other run is still going
            stream.finish(jobs[1], "two")
            (frame,), _, _ = decode(waiting(), masked=True, max_size=1 << 20)
            settle = orjson.loads(frame)
            assert settle["kind"] == "settle"
            assert [f["result"] for f in settle["finishes"]] == ["one", "two"]
            await stream.wait_settled()
        assert [(await local.job_status(i)).result for i in (first, second)] == ["one", "two"]
        nursery.cancel_scope.cancel()
