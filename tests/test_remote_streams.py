"""Job streams on the wire (protocol 2), from a bare websocket: the server's side.

Bad stream requests get typed errors and the connection goes on; batch frames
are read message by message; pushes respect the client's frame limit; a stream
the client cancels stops being fed, and what it was pushed late goes back.
"""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson
import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream

import actorq
from actorq._remote import _wire as w
from actorq._remote._server import QueueServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@asynccontextmanager
async def connected(
    versions: list[int], *, max_message_size: int = w.DEFAULT_MAX_MESSAGE_SIZE
) -> AsyncIterator[tuple[WebSocketConnection, actorq.LocalQueue]]:
    async with actorq.open_queue() as local, trio.open_nursery() as nursery:
        server = QueueServer(local)
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(server.handle_stream, server_stream)
        ws = await wrap_client_stream(nursery, client_stream, "localhost", "/")  # type: ignore[arg-type]
        hello = w.Hello(id=0, versions=versions, max_message_size=max_message_size)
        await ws.send_message(w.encode(hello))
        welcome = orjson.loads(await ws.get_message())
        assert welcome["version"] == max(versions)
        try:
            yield ws, local
        finally:
            nursery.cancel_scope.cancel()


async def send(ws: WebSocketConnection, *messages: dict[str, Any]) -> None:
    body = messages[0] if len(messages) == 1 else list(messages)
    await ws.send_message(orjson.dumps(body).decode())


async def receive(ws: WebSocketConnection) -> list[dict[str, Any]]:
    """The messages of the next frame, a batch or not."""
    got = orjson.loads(await ws.get_message())
    return got if isinstance(got, list) else [got]


async def receive_until(ws: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with trio.fail_after(5):
        while len(out) < count:
            out.extend(await receive(ws))
    return out


def subscribe(request_id: int, credit: Any = 1, **fields: Any) -> dict[str, Any]:
    return {"kind": "subscribe", "id": request_id, "job_types": ["t"], "credit": credit, **fields}


async def test_bad_stream_requests_get_typed_errors_and_the_connection_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected([1, 2]) as (ws, _):
        cases: list[tuple[dict[str, Any], str]] = [
            (subscribe(1, credit=0), "value_error"),
            (subscribe(2, credit=10_001), "value_error"),
            (subscribe(3, credit="2"), "protocol_error"),
            (subscribe(4, job_types="t"), "protocol_error"),
            (subscribe(5, worker_id=str(uuid.uuid4())), "worker_not_exist"),
            ({"kind": "settle", "id": 6, "stream": 99, "credit": 1}, "value_error"),
            ({"kind": "settle", "id": 7, "stream": 1, "credit": -1}, "value_error"),
        ]
        for message, error in cases:
            await send(ws, message)
            (reply,) = await receive_until(ws, 1)
            assert (reply["kind"], reply["id"], reply["error"]) == ("error", message["id"], error)
        await send(ws, {"kind": "stats", "id": 8})
        (reply,) = await receive_until(ws, 1)
        assert (reply["kind"], reply["id"]) == ("ok", 8)


async def test_streams_need_protocol_2(autojump_clock: trio.testing.MockClock) -> None:
    async with connected([1]) as (ws, local):
        await local.enqueue("t")
        await send(ws, subscribe(1))
        (reply,) = await receive_until(ws, 1)
        assert (reply["kind"], reply["error"], reply["reason"]) == (
            "error",
            "protocol_error",
            "unexpected_kind",
        )
        assert (await local.stats()).running == 0


async def test_a_batch_frame_is_read_message_by_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected([1, 2]) as (ws, local):
        await send(
            ws,
            {"kind": "enqueue", "id": 1, "job_type": "a"},
            {"kind": "explode", "id": 2},
            {"kind": "enqueue", "id": 3, "job_type": 5},
            {"kind": "enqueue", "id": 4, "job_type": "b"},
        )
        replies = {r["id"]: r for r in await receive_until(ws, 4)}
        assert (replies[1]["kind"], replies[4]["kind"]) == ("ok", "ok")
        assert (replies[2]["reason"], replies[3]["reason"]) == ("unknown_kind", "bad_field")
        assert [j.type for j in await local.list_jobs()] == ["a", "b"]


async def test_stream_pushes_settles_and_revocations_on_the_wire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected([2]) as (ws, local):
        first = await local.enqueue("t", {"n": 1})
        second = await local.enqueue("t", {"n": 2}, dependencies=[first])
        await send(ws, subscribe(1, credit=2))
        (push,) = await receive_until(ws, 1)
        assert push["kind"] == "jobs"
        assert push["id"] == 1
        (job,) = push["jobs"]
        assert (job["id"], job["args"]) == (str(first), {"n": 1})
        finish = {"job_id": job["id"], "token": job["token"], "result": [1]}
        await send(ws, {"kind": "settle", "id": 2, "stream": 1, "finishes": [finish], "credit": 1})
        # the reply to the settle and the job it made ready, in one frame
        frame = await receive(ws)
        assert [(m["kind"], m["id"]) for m in frame] == [("ok", 2), ("jobs", 1)]
        assert frame[0]["value"] == []
        (next_job,) = frame[1]["jobs"]
        assert next_job["id"] == str(second)
        await local.cancel_job(second)
        (revoked,) = await receive_until(ws, 1)
        assert revoked == {
            "kind": "revoked",
            "id": 1,
            "runs": [{"job_id": str(second), "token": next_job["token"], "canceled": True}],
        }
        late = {"job_id": next_job["id"], "token": next_job["token"], "result": None}
        await send(ws, {"kind": "settle", "id": 3, "stream": 1, "finishes": [late], "credit": 1})
        (reply,) = await receive_until(ws, 1)
        assert reply["value"] == [
            {"index": 0, "error": "canceled", "message": reply["value"][0]["message"]}
        ]
        assert (await local.job_status(first)).result == [1]


async def test_a_push_larger_than_the_client_takes_is_split(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected([2], max_message_size=1024) as (ws, local):
        ids = [await local.enqueue("t", "x" * 500) for _ in range(2)]
        await send(ws, subscribe(1, credit=2))
        frames = [await receive(ws), await receive(ws)]
        assert [len(f) for f in frames] == [1, 1]
        assert [f[0]["jobs"][0]["id"] for f in frames] == [str(i) for i in ids]


async def test_a_cancelled_stream_stops_and_the_client_gives_late_jobs_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected([2]) as (ws, local):
        await send(ws, subscribe(1, credit=3))
        await trio.testing.wait_all_tasks_blocked()
        assert (await local.stats()).waiting_dequeuers == 3
        await send(ws, {"kind": "cancel", "id": 1})
        await trio.testing.wait_all_tasks_blocked()
        assert (await local.stats()).waiting_dequeuers == 0
        await local.enqueue("t")
        await trio.sleep(1)
        assert (await local.stats()).running == 0  # nothing fed to a cancelled stream


async def test_a_job_larger_than_the_client_takes_ends_the_stream_and_goes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected([2], max_message_size=1024) as (ws, local):
        small = await local.enqueue("t", "x")
        big = await local.enqueue("t", "y" * 2000)
        await send(ws, subscribe(1, credit=2))
        messages = await receive_until(ws, 2)
        assert [m["kind"] for m in messages] == ["jobs", "error"]
        assert messages[0]["jobs"][0]["id"] == str(small)
        assert (messages[1]["id"], messages[1]["reason"]) == (1, "oversize")
        await trio.testing.wait_all_tasks_blocked()
        assert (await local.job_status(big)).state == actorq.JobState.PENDING
        assert (await local.stats()).waiting_dequeuers == 0
