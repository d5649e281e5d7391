#!/usr/bin/env python3
"""What one remote request costs: actorq beside a bare trio-websocket echo, in one run.

    python scripts/bench_rtt.py [--requests N] [--rounds R]
    python scripts/bench.py --suite rtt [--quick]

Starts ``actorq --store memory:// serve`` and a bare trio-websocket echo
server, each in its own process, and from a third process sends ``N``
sequential requests to each: ``enqueue`` to actorq, the same frame to the echo
server. Reports wall time per request and the CPU (utime+stime from
``/proc/PID/stat``) each side spends per request, as JSON: medians of ``R``
interleaved rounds, and actorq's ratio to the echo. The echo is the floor of
any protocol on this transport.
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


def _now(pid: int) -> tuple[float, float, float]:
    return time.perf_counter(), time.process_time(), _cpu_seconds(pid)


def _since(before: tuple[float, float, float], pid: int) -> tuple[float, float, float]:
    wall, client, server = _now(pid)
    return wall - before[0], client - before[1], server - before[2]


def _measure(kind: str, url: str, pid: int, requests: int) -> dict[str, float]:
    fn = _actorq_requests if kind == "actorq" else _echo_requests
    wall, client, server = trio.run(fn, url, requests, pid)
    return {
        "wall_ms": wall / requests * 1e3,
        "server_cpu_ms": server / requests * 1e3,
        "client_cpu_ms": client / requests * 1e3,
    }


def run(quick: bool = False, requests: int | None = None, rounds: int = 3) -> dict[str, Any]:
    """The suite's entry point for ``scripts/bench.py --suite rtt``."""
    requests = requests or (500 if quick else 3000)
    actorq_port, echo_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "actorq", "--store", "memory://", "serve", "-q"),
            "--port",
            str(actorq_port),
        ],
        stderr=subprocess.DEVNULL,
    )
    echo = subprocess.Popen([sys.executable, __file__, "--echo-server", str(echo_port)])
    try:
        _wait_for(actorq_port)
        _wait_for(echo_port)
        runs: dict[str, list[dict[str, float]]] = {"actorq": [], "echo": []}
        for _ in range(rounds):
            runs["actorq"].append(
                _measure("actorq", f"ws://127.0.0.1:{actorq_port}", server.pid, requests)
            )
            runs["echo"].append(_measure("echo", f"ws://127.0.0.1:{echo_port}", echo.pid, requests))
    finally:
        for proc in (server, echo):
            proc.terminate()
            proc.wait(10)
    out: dict[str, Any] = {"requests": requests, "rounds": rounds}
    for kind, samples in runs.items():
        out[kind] = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    out["actorq_over_echo"] = {key: out["actorq"][key] / out["echo"][key] for key in out["actorq"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        trio.run(_serve_echo, args.echo_server)
        return
    print(json.dumps(run(requests=args.requests, rounds=args.rounds), indent=2))


if __name__ == "__main__":
    main()
