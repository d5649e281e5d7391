"""The handler side of the remote benchmark (``scripts/bench_remote.py``).

Two consumers that record their handlers' starts the same way:

* ``worker``, an :class:`actorq.Worker` defined at module level, run as a
  deployment runs it: ``actorq --url ws://... worker bench_worker_app:worker``
  (with ``scripts/`` on ``PYTHONPATH``). Its one handler, ``bench``, is an async
  no-op; ``ACTORQ_BENCH_CONCURRENCY`` (default 100) is its concurrency.
* the Redis baseline: ``python scripts/bench_worker_app.py --redis-port PORT``,
  a hand-written consumer looping ``BRPOP`` on the list ``bench`` (redis-py),
  running the same no-op for every JSON job it pops.

A job's args name its ``phase`` and how many jobs the phase has (``n``). A
handler's start is ``time.time()`` (comparable across processes on one
machine), appended to its phase's list in memory: no I/O per job. Two UDP
datagrams per phase go to ``ACTORQ_BENCH_NOTIFY`` (``host:port``), when its
first and its ``n``-th job start, so the bench knows when a phase begins and
ends while it runs; at exit (SIGTERM) every list is written as JSON to
``ACTORQ_BENCH_TIMES``, where the bench takes its figures from.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import actorq

__all__ = ["Recorder", "recorder", "worker"]

QUEUE_KEY = "bench"


class Recorder:
    """Handler starts by phase, in memory; phase boundaries sent over UDP; a dump at exit."""

    def __init__(self, notify: str | None, path: str | None) -> None:
        self.starts: dict[str, list[float]] = {}
        self.path = Path(path) if path else None
        self._sock: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        if notify:
            host, _, port = notify.rpartition(":")
            self._address = (host, int(port))
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def start(self, args: Any) -> None:
        """Record that a handler for a job with ``args`` (``{"phase", "n"}``) starts now."""
        now = time.time()
        phase: str = args["phase"]
        starts = self.starts.get(phase)
        if starts is None:
            starts = self.starts[phase] = []
        starts.append(now)
        count = len(starts)
        if (count == 1 or count == args["n"]) and self._sock is not None:
            assert self._address is not None
            message = json.dumps({"phase": phase, "count": count, "t": now})
            self._sock.sendto(message.encode(), self._address)

    def dump(self) -> None:
        """Write every phase's starts to the file (through a rename: never half a file)."""
        if self.path is None:
            return
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.starts))
        partial.replace(self.path)


recorder = Recorder(os.environ.get("ACTORQ_BENCH_NOTIFY"), os.environ.get("ACTORQ_BENCH_TIMES"))
atexit.register(recorder.dump)

worker = actorq.Worker(concurrency=int(os.environ.get("ACTORQ_BENCH_CONCURRENCY", "100")))


@worker.handler("bench")
async def bench(job: actorq.Job) -> None:
    """The no-op job: its start is all the bench measures."""
    recorder.start(job.args)


# ----------------------------------------------------------------- Redis baseline


def consume_redis(port: int) -> None:
    """Pop and run jobs from Redis until SIGTERM or SIGINT; the recorder dumps at exit."""
    import redis  # type: ignore[import-not-found, unused-ignore]  # the bench extra

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    client = redis.Redis(host="127.0.0.1", port=port)
    client.ping()
    print("ready", file=sys.stderr, flush=True)
    while not stopping:
        # A short block, so a stop request is seen within it when idle; a
        # waiting BRPOP returns the moment a job is pushed, whatever its timeout.
        popped: Any = client.brpop([QUEUE_KEY], timeout=0.1)
        if popped is None:
            continue
        job = json.loads(popped[1])
        recorder.start(job["args"])
    client.close()


if __name__ == "__main__":
    if sys.argv[1:2] != ["--redis-port"] or len(sys.argv) != 3:
        sys.exit("usage: bench_worker_app.py --redis-port PORT")
    consume_redis(int(sys.argv[2]))
