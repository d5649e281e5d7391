#!/usr/bin/env python3
"""What one remote request costs: actorq beside bare websocket echoes, in one run.

    python scripts/bench_rtt.py [--requests N] [--rounds R]
    python scripts/bench.py --suite rtt [--quick]

Starts ``actorq --store memory:// serve`` and two bare echo servers, each in
its own process: one on trio-websocket (``echo``), one on actorq's own
transport, wsproto driven from the connection's task
(``actorq/_remote/_transport.py``, ``lean_echo``). From a third process it
sends ``N`` sequential requests to each: ``enqueue`` to actorq, the same frame
to the echo servers (each echo client on the same library as its server).
Reports wall time per request and the CPU (utime+stime from
``/proc/PID/stat``) each side spends per request, as JSON: medians of ``R``
interleaved rounds, and actorq's ratio to each echo. The lean echo is the
floor of any protocol on actorq's transport.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketRequest, open_websocket_url, serve_websocket

FRAME = '{"kind":"enqueue","id":%d,"job_type":"x","args":1}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _echo_handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    while True:
        try:
            message = await ws.get_message()
        except Exception:
            return
        await ws.send_message(message)


async def _serve_echo(port: int) -> None:
    await serve_websocket(_echo_handler, "127.0.0.1", port, ssl_context=None)


async def _lean_echo_handler(stream: trio.SocketStream) -> None:
    from actorq._remote._transport import ConnectionClosed, accept_websocket

    ws = await accept_websocket(stream, max_message_size=1 << 22)
    if ws is None:
        return
    try:
        while True:
            await ws.send(await ws.receive())
    except ConnectionClosed:
        pass
    finally:
        await ws.aclose()


async def _serve_lean_echo(port: int) -> None:
    await trio.serve_tcp(_lean_echo_handler, port, host="127.0.0.1")


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise RuntimeError(f"nothing listens on port {port}")


async def _actorq_requests(url: str, requests: int, pid: int) -> tuple[float, float, float]:
    import actorq

    async with actorq.connect(url) as queue:
        for _ in range(100):
            await queue.enqueue("x", 1)
        before = _now(pid)
        for _ in range(requests):
            await queue.enqueue("x", 1)
        return _since(before, pid)


async def _echo_requests(url: str, requests: int, pid: int) -> tuple[float, float, float]:
    async with open_websocket_url(url) as ws:
        for n in range(100):
            await ws.send_message(FRAME % n)
            await ws.get_message()
        before = _now(pid)
        for n in range(requests):
            await ws.send_message(FRAME % n)
            await ws.get_message()
        return _since(before, pid)


async def _lean_echo_requests(url: str, requests: int, pid: int) -> tuple[float, float, float]:
    from actorq._remote._transport import open_websocket

    port = int(url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = await open_websocket(stream, f"127.0.0.1:{port}", "/", max_message_size=1 << 22)
    try:
        for n in range(100):
            await ws.send(FRAME % n)
            await ws.receive()
        before = _now(pid)
        for n in range(requests):
            await ws.send(FRAME % n)
            await ws.receive()
        return _since(before, pid)
    finally:
        await ws.aclose()


def _now(pid: int) -> tuple[float, float, float]:
    return time.perf_counter(), time.process_time(), _cpu_seconds(pid)


def _since(before: tuple[float, float, float], pid: int) -> tuple[float, float, float]:
    wall, client, server = _now(pid)
    return wall - before[0], client - before[1], server - before[2]


def _measure(kind: str, url: str, pid: int, requests: int) -> dict[str, float]:
    fn = {"actorq": _actorq_requests, "echo": _echo_requests, "lean_echo": _lean_echo_requests}[
        kind
    ]
    wall, client, server = trio.run(fn, url, requests, pid)
    return {
        "wall_ms": wall / requests * 1e3,
        "server_cpu_ms": server / requests * 1e3,
        "client_cpu_ms": client / requests * 1e3,
    }


def run(quick: bool = False, requests: int | None = None, rounds: int = 3) -> dict[str, Any]:
    """The suite's entry point for ``scripts/bench.py --suite rtt``."""
    requests = requests or (500 if quick else 3000)
    actorq_port, echo_port, lean_port = _free_port(), _free_port(), _free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "actorq", "--store", "memory://", "serve", "-q"),
            "--port",
            str(actorq_port),
        ],
        stderr=subprocess.DEVNULL,
    )
    echo = subprocess.Popen([sys.executable, __file__, "--echo-server", str(echo_port)])
    lean = subprocess.Popen([sys.executable, __file__, "--lean-echo-server", str(lean_port)])
    try:
        _wait_for(actorq_port)
        _wait_for(echo_port)
        _wait_for(lean_port)
        runs: dict[str, list[dict[str, float]]] = {"actorq": [], "echo": [], "lean_echo": []}
        for _ in range(rounds):
            runs["actorq"].append(
                _measure("actorq", f"ws://127.0.0.1:{actorq_port}", server.pid, requests)
            )
            runs["echo"].append(_measure("echo", f"ws://127.0.0.1:{echo_port}", echo.pid, requests))
            runs["lean_echo"].append(
                _measure("lean_echo", f"ws://127.0.0.1:{lean_port}", lean.pid, requests)
            )
    finally:
        for proc in (server, echo, lean):
            proc.terminate()
            proc.wait(10)
    out: dict[str, Any] = {"requests": requests, "rounds": rounds}
    for kind, samples in runs.items():
        out[kind] = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    for echo_kind in ("echo", "lean_echo"):
        out[f"actorq_over_{echo_kind}"] = {
            key: out["actorq"][key] / out[echo_kind][key] for key in out["actorq"]
        }
    out["lean_echo_over_echo"] = {
        key: out["lean_echo"][key] / out["echo"][key] for key in out["echo"]
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lean-echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        trio.run(_serve_echo, args.echo_server)
        return
    if args.lean_echo_server:
        trio.run(_serve_lean_echo, args.lean_echo_server)
        return
    print(json.dumps(run(requests=args.requests, rounds=args.rounds), indent=2))


if __name__ == "__main__":
    main()
