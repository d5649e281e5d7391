#!/usr/bin/env python3
"""Time to failover of two ``actorq serve`` processes on PostgreSQL, per kind of fault.

    python scripts/bench_pg_faults.py [--repeats 3] [--lease-timeout 10] [--faults kill,pause,...]

Starts its own throwaway cluster (``tests/pgserver.py``). For each repeat of
each fault: a leader that reaches PostgreSQL through a loopback fault proxy
(``tests/faultproxy.py``), a standby connected directly, both ``actorq serve``
processes with the store's default polls (``standby_poll`` 0.5 s,
``leader_poll`` 1 s) and ``--lease-timeout``; a client process loop (in this
process) that enqueues and dequeues through ``connect([leader, standby])``.
Then the fault, mid-load:

* ``kill``: SIGKILL of the leader;
* ``pause``: SIGSTOP of the leader (SIGCONT once the standby serves);
* ``reset``: the proxy resets the leader's database connections;
* ``blackhole``: the proxy keeps them up and passes nothing (healed once the
  standby serves).

Measured from the fault: ``serving`` (the standby prints ``actorq serving``)
and ``first_job`` (the client gets a job from the standby). Same-run
baseline: ``cold_start``, the time from starting a server process on the
same database to ``actorq serving`` with no other process holding the lock.
Prints one JSON object, medians and every sample.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pgserver  # noqa: E402
import trio  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from test_postgres_crash import ServerProcess  # noqa: E402

import actorq  # noqa: E402


def one_failover(server: pgserver.PgServer, fault: str, lease: float) -> dict[str, float]:
    dbname = f"f_{fault}_{time.monotonic_ns()}"
    url = server.create_database(dbname)
    timings = f"actorq_lease_timeout={lease}"
    ports = [pgserver._free_port(), pgserver._free_port()]
    urls = [f"ws://127.0.0.1:{port}" for port in ports]
    with FaultProxy(server.port) as proxy:
        via_proxy = f"postgresql://postgres@127.0.0.1:{proxy.port}/{dbname}?{timings}"
        first = ServerProcess(via_proxy, ports[0])
        second: ServerProcess | None = None
        try:
            first.wait_serving(60)
            second = ServerProcess(f"{url}?{timings}", ports[1])
            time.sleep(2.0)  # the standby connects and polls
            standby = second
            out: dict[str, float] = {}

            async def main() -> None:
                faulted = trio.Event()
                got_job = trio.Event()
                fault_at = 0.0

                async def client() -> None:
                    while True:
                        try:
                            async with actorq.connect(urls, connect_timeout=2.0) as queue:
                                while True:
                                    await queue.enqueue("f", None)
                                    job = await queue.dequeue(["f"], timeout=1)
                                    await queue.finish_job(job.id, None)
                                    # after "serving", only the new leader can commit
                                    if faulted.is_set() and standby.serving():
                                        out["first_job"] = time.perf_counter() - fault_at
                                        got_job.set()
                                        return
                        except (actorq.QueueClosedError, actorq.DequeueTimeoutError):
                            await trio.sleep(0.05)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client)
                    await trio.sleep(1.0)
                    fault_at = time.perf_counter()
                    if fault == "kill":
                        first.kill()
                    elif fault == "pause":
                        first.proc.send_signal(signal.SIGSTOP)
                    elif fault == "reset":
                        proxy.reset()
                    else:
                        proxy.blackhole()
                    faulted.set()
                    await trio.to_thread.run_sync(standby.wait_serving, 120)
                    out["serving"] = time.perf_counter() - fault_at
                    if fault == "pause":
                        first.proc.send_signal(signal.SIGCONT)
                    else:
                        proxy.passing()
                    with trio.fail_after(120):
                        await got_job.wait()
                    nursery.cancel_scope.cancel()

            trio.run(main)
            return out
        finally:
            first.kill()
            if second is not None:
                second.kill()


def cold_start(server: pgserver.PgServer) -> float:
    url = server.create_database(f"cold_{time.monotonic_ns()}")
    start = time.perf_counter()
    proc = ServerProcess(url, pgserver._free_port())
    try:
        proc.wait_serving(60)
        return time.perf_counter() - start
    finally:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lease-timeout", type=float, default=10.0)
    parser.add_argument("--faults", default="kill,pause,reset,blackhole")
    args = parser.parse_args()
    out: dict[str, Any] = {"lease_timeout": args.lease_timeout, "repeats": args.repeats}
    with pgserver.PgServer() as server:
        colds = [cold_start(server) for _ in range(args.repeats)]
        out["cold_start_seconds"] = statistics.median(colds)
        for fault in args.faults.split(","):
            samples = [one_failover(server, fault, args.lease_timeout) for _ in range(args.repeats)]
            out[fault] = {
                "serving_seconds": statistics.median(s["serving"] for s in samples),
                "first_job_seconds": statistics.median(s["first_job"] for s in samples),
                "samples": samples,
            }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
