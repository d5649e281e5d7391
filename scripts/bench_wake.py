#!/usr/bin/env python3
"""What waking a process from idle costs: a TCP echo after a pause, trio beside blocking sockets.

    python scripts/bench_wake.py [--requests N] [--rounds R]
    python scripts/bench.py --suite wake [--quick]

Starts two echo servers, each in its own process: one on trio
(``trio.serve_tcp``, ``receive_some`` then ``send_all``), one on blocking
stdlib sockets (``recv`` then ``sendall``, a thread per connection). From
this process, a blocking client sends 50 bytes and waits for the echo, ``N``
times per pause, sleeping the pause before each request: 20 ms (the remote
bench's idle-latency spacing, long enough for every process to fall asleep),
2 ms, and none (back to back). Prints JSON: the median round trip per server
and pause (medians of ``R`` interleaved rounds), and the idle penalty of each
server (20 ms pause less back to back) with trio's ratio to the blocking one.

Idle latency in ``bench_remote.py`` crosses three processes woken in turn; on
a trio process each wake-up costs this penalty before any of actorq's code
runs, which is the floor under that figure.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import trio

PAUSES = (0.02, 0.002, 0.0)
PAYLOAD = b"x" * 50


def _serve_blocking(listener: socket.socket) -> None:
    def echo(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


async def _serve_trio(listener: socket.socket) -> None:
    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(4096):
            await stream.send_all(data)

    sock = trio.socket.from_stdlib_socket(listener)
    await trio.serve_listeners(echo, [trio.SocketListener(sock)])


def _server_main(kind: str) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    print(listener.getsockname()[1], flush=True)
    if kind == "trio":
        trio.run(_serve_trio, listener)
    else:
        _serve_blocking(listener)


def _round_trips(port: int, pause: float, requests: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(requests):
            if pause:
                time.sleep(pause)
            start = time.perf_counter()
            conn.sendall(PAYLOAD)
            got = b""
            while len(got) < len(PAYLOAD):
                got += conn.recv(4096)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run(
    quick: bool = False, requests: int | None = None, rounds: int | None = None
) -> dict[str, Any]:
    """Both servers, every pause, interleaved; the figures as a dict."""
    if requests is None:
        requests = 50 if quick else 200
    if rounds is None:
        rounds = 1 if quick else 3
    servers = {
        kind: subprocess.Popen(
            [sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE, text=True
        )
        for kind in ("trio", "blocking")
    }
    try:
        ports = {kind: int(proc.stdout.readline()) for kind, proc in servers.items()}  # type: ignore[union-attr]
        samples: dict[str, dict[float, list[float]]] = {k: {p: [] for p in PAUSES} for k in servers}
        for _ in range(rounds):
            for pause in PAUSES:
                for kind, port in ports.items():
                    samples[kind][pause].append(_round_trips(port, pause, requests))
    finally:
        for proc in servers.values():
            proc.kill()
            proc.wait()
    out: dict[str, Any] = {
        "setup": {
            "requests_per_pause": requests,
            "rounds": rounds,
            "client": "blocking socket, this process",
        }
    }
    for kind in servers:
        medians = {f"pause_{p * 1000:g}ms": statistics.median(samples[kind][p]) for p in PAUSES}
        medians["idle_penalty_ms"] = medians["pause_20ms"] - medians["pause_0ms"]
        out[kind] = medians
    out["trio_over_blocking_idle_penalty"] = (
        out["trio"]["idle_penalty_ms"] / out["blocking"]["idle_penalty_ms"]
    )
    return out


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        _server_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(False, args.requests, args.rounds), indent=2))


if __name__ == "__main__":
    main()
