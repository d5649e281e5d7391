"""Every public constructor and option: a wrong type raises TypeError, a wrong value ValueError."""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

import actorq
from actorq._remote._client import connect_stream
from actorq.metrics import QueueMetrics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

Case = tuple[str, dict[str, Any], type[Exception]]


def cases(target: str, *rows: tuple[str, Any, type[Exception]]) -> list[Any]:
    return [
        pytest.param(target, {name: value}, exc, id=f"{target}-{name}={value!r}")
        for name, value, exc in rows
    ]


WORKER = cases(
    "Worker",
    ("queue", object(), TypeError),
    ("channels", "red", TypeError),
    ("channels", [1], TypeError),
    ("channels", ["a\x00"], ValueError),
    ("concurrency", "1", TypeError),
    ("concurrency", 0, ValueError),
    ("heartbeat_interval", "15", TypeError),
    ("heartbeat_interval", 0, ValueError),
    ("status_interval", None, TypeError),
    ("status_interval", -1, ValueError),
    ("grace", "30", TypeError),
    ("grace", -1.0, ValueError),
    ("max_retries", "2", TypeError),
    ("max_retries", 2.0, TypeError),
    ("max_retries", -1, ValueError),
    ("poll_timeout", "1", TypeError),
    ("poll_timeout", 0, ValueError),
    ("cleanup_timeout", True, TypeError),
    ("cleanup_timeout", math.nan, ValueError),
    ("name", 3, TypeError),
    ("name", "a\x00", ValueError),
    ("arch", b"x86_64", TypeError),
)

MAINTENANCE = cases(
    "Maintenance",
    ("watch_interval", "30", TypeError),
    ("watch_interval", 0, ValueError),
    ("job_timeout", None, TypeError),
    ("job_timeout", -1, ValueError),
    ("max_retries", "2", TypeError),
    ("max_retries", -1, ValueError),
    ("worker_timeout", "1", TypeError),
    ("worker_timeout", 0, ValueError),
    ("worker_watch_interval", [1], TypeError),
    ("worker_watch_interval", math.nan, ValueError),
    ("retention", "1", TypeError),
    ("retention", -5, ValueError),
    ("retention_interval", True, TypeError),
    ("retention_interval", 0.0, ValueError),
)

OPEN_QUEUE = cases(
    "open_queue",
    ("store", 3, TypeError),
    ("store", "ftp://example", ValueError),
    ("clock", 3, TypeError),
    ("clock", lambda: "now", TypeError),
    ("clock", datetime.now, ValueError),  # naive
    ("max_batch", "10", TypeError),
    ("max_batch", 0, ValueError),
    ("maintenance", {"job_timeout": 1}, TypeError),
    ("metrics", object(), TypeError),
)

QUEUE_SERVER = cases(
    "QueueServer",
    ("auth", 3, TypeError),
    ("auth", "", ValueError),
    ("tenants", [("t", ["c"])], TypeError),
    ("tenants", {3: ["c"]}, TypeError),
    ("tenants", {"": ["c"]}, ValueError),
    ("tenants", {"t": "c"}, TypeError),
    ("max_message_size", "1", TypeError),
    ("max_message_size", 10, ValueError),
    ("max_in_flight", 1.0, TypeError),
    ("max_in_flight", 0, ValueError),
    ("handshake_timeout", "1", TypeError),
    ("handshake_timeout", -1, ValueError),
    ("close_timeout", None, TypeError),
    ("close_timeout", -1, ValueError),
    ("send_timeout", "1", TypeError),
    ("send_timeout", math.nan, ValueError),
)

SERVE = cases(
    "serve",
    ("host", 3, TypeError),
    ("port", "8765", TypeError),
    ("port", -1, ValueError),
    ("port", 70000, ValueError),
    ("ssl_context", "tls", TypeError),
    ("auth", 3, TypeError),
    ("max_in_flight", 0, ValueError),
)

CONNECT = cases(
    "connect",
    ("url", 3, TypeError),
    ("url", [], ValueError),
    ("url", "http://localhost", ValueError),
    ("token", 3, TypeError),
    ("ssl_context", "tls", TypeError),
    ("heartbeat_interval", "30", TypeError),
    ("heartbeat_interval", 0, ValueError),
    ("connect_timeout", "10", TypeError),
    ("connect_timeout", -1, ValueError),
    ("send_timeout", None, TypeError),
    ("max_message_size", "1", TypeError),
    ("max_message_size", 1, ValueError),
)

CONNECT_STREAM = cases(
    "connect_stream",
    ("stream", "not a stream", TypeError),
    ("token", b"secret", TypeError),
    ("host", 3, TypeError),
    ("resource", None, TypeError),
    ("heartbeat_interval", -1, ValueError),
    ("send_timeout", "1", TypeError),
    ("handshake_timeout", -1, ValueError),
    ("max_message_size", 100, ValueError),
)

QUEUE_METRICS = cases("QueueMetrics", ("registry", "default", TypeError))


async def construct(target: str, options: dict[str, Any], queue: actorq.LocalQueue) -> None:
    """Build ``target`` with ``options`` on top of valid defaults."""
    builders: dict[str, Callable[[dict[str, Any]], Awaitable[object]]] = {
        "Worker": lambda o: _sync(lambda: actorq.Worker(**{"queue": queue, **o})),
        "Maintenance": lambda o: _sync(lambda: actorq.Maintenance(**o)),
        "open_queue": lambda o: _enter(actorq.open_queue(**o)),
        "QueueServer": lambda o: _sync(lambda: actorq.QueueServer(queue, **o)),
        "serve": lambda o: actorq.serve(queue, o.pop("host", "127.0.0.1"), o.pop("port", 0), **o),
        "connect": lambda o: _enter(actorq.connect(o.pop("url", "ws://127.0.0.1:1"), **o)),
        "connect_stream": lambda o: _enter(
            connect_stream(o.pop("stream", trio.testing.memory_stream_pair()[0]), **o)
        ),
        "QueueMetrics": lambda o: _sync(lambda: QueueMetrics(**o)),
    }
    await builders[target](dict(options))


async def _sync(make: Callable[[], object]) -> object:
    return make()


async def _enter(manager: Any) -> None:
    async with manager:
        raise AssertionError("the bad option was accepted")


@pytest.mark.parametrize(
    ("target", "options", "error"),
    WORKER
    + MAINTENANCE
    + OPEN_QUEUE
    + QUEUE_SERVER
    + SERVE
    + CONNECT
    + CONNECT_STREAM
    + QUEUE_METRICS,
)
async def test_bad_option_raises_the_right_class(
    target: str, options: dict[str, Any], error: type[Exception]
) -> None:
    async with actorq.open_queue() as queue:
        with pytest.raises(error) as info:
            await construct(target, options, queue)
    assert type(info.value) is error  # not a subclass standing in for it


@pytest.mark.parametrize(
    ("value", "error"), [(3, TypeError), ("", ValueError), ("a\x00", ValueError)]
)
async def test_add_handler_checks_the_job_type(value: Any, error: type[Exception]) -> None:
    async with actorq.open_queue() as queue:
        worker = actorq.Worker(queue)
        with pytest.raises(error):
            worker.add_handler(value, lambda job: None)
        assert worker.job_types == []


@pytest.mark.parametrize(("grace", "error"), [("1", TypeError), (-1, ValueError)])
async def test_shutdown_checks_the_grace_period(grace: Any, error: type[Exception]) -> None:
    async with actorq.open_queue() as queue:
        worker = actorq.Worker(queue)
        with pytest.raises(error):
            worker.shutdown(grace)


def test_command_handler_checks_the_command() -> None:
    from actorq._worker._command import command_handler

    with pytest.raises(TypeError):
        command_handler("echo hi")
    with pytest.raises(TypeError):
        command_handler(["echo", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="command must not be empty"):
        command_handler([])


# ---------------------------------------------------- values over the wire


async def _ask_server(queue: actorq.LocalQueue, frames: list[str]) -> list[dict[str, Any]]:
    """Send raw frames to a server over a memory stream; return its replies, in order."""
    import orjson
    from trio_websocket import wrap_client_stream

    from actorq._remote import _wire as w
    from actorq._remote._server import QueueServer

    server = QueueServer(queue)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    replies: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_stream)
        ws = await wrap_client_stream(nursery, client_stream, "localhost", "/")  # type: ignore[arg-type]
        await ws.send_message(w.encode(w.Hello(id=0, versions=[1])))
        assert orjson.loads(await ws.get_message())["kind"] == "welcome"
        for frame in frames:
            await ws.send_message(frame)
            replies.append(orjson.loads(await ws.get_message()))
        await ws.aclose()
        nursery.cancel_scope.cancel()
    return replies


@pytest.mark.parametrize("big", ["9007199254740992", "-9007199254740992", "123456789012345678901"])
async def test_the_server_refuses_an_inexact_integer_with_the_in_process_type_error(
    big: str,
) -> None:
    from actorq._remote import _wire as w

    async with actorq.open_queue() as queue:
        with pytest.raises(TypeError) as local:
            await queue.enqueue("t", {"n": int(big)})
        frame = f'{{"kind":"enqueue","id":7,"job_type":"t","args":{{"n":{big}}}}}'
        exact = '{"kind":"enqueue","id":8,"job_type":"t","args":{"n":9007199254740991}}'
        refused, accepted = await _ask_server(queue, [frame, exact])
        assert refused["id"] == 7
        assert refused["error"] == "type_error"
        # what a client raises for that reply: the same class, the same words
        remote = w.exception_from_reply(
            w.Error(**{k: v for k, v in refused.items() if k != "kind"})
        )
        assert type(remote) is TypeError
        assert str(remote) == str(local.value).replace("args", "the request", 1)
        assert accepted["kind"] == "ok"
        assert [(await queue.job(i)).args for i in await queue.all_root_job_ids()] == [
            {"n": 2**53 - 1}
        ]
