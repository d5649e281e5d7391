#!/usr/bin/env python3
"""How long a new PostgreSQL leader takes to load a large queue and serve it.

    python scripts/bench_pg_load.py [--jobs 1500000] [--repeats 3] [--lease-timeout 10]

Starts its own throwaway cluster (``tests/pgserver.py``), fills one queue's
schema with ``--jobs`` pending jobs (one in ten depends on the job before it)
straight in SQL (``INSERT ... SELECT`` over ``generate_series``, seconds for
millions of rows), then times ``actorq serve`` in a process of its own from
its start to the ``actorq serving`` line, on a cluster whose
``idle_session_timeout`` and ``idle_in_transaction_session_timeout`` are
shorter than the load (so a load that let any of its sessions fall idle
would lose them). Same run baseline: ``COPY (SELECT ... ORDER BY seq) TO
STDOUT`` of the same columns, the cost of merely reading the rows out of the
database, beside ``python -c 'import actorq._cli._main'`` (process start).

Prints one JSON object: ``serve_seconds`` (median, and every repeat),
``copy_seconds``, ``startup_seconds``, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pgserver  # noqa: E402
import psycopg  # noqa: E402
import trio  # noqa: E402

from actorq._stores._postgres import PostgresStore  # noqa: E402

FILL_JOBS = """
    INSERT INTO {s}.jobs (id, seq, type, channel, args, queued, canceled, retries)
    SELECT gen_random_uuid(), g, 'fill', 'c' || (g %% 8), json_build_object('i', g),
           statement_timestamp(), false, 0
    FROM generate_series(1, %s) g
"""
FILL_DEPENDENCIES = """
    INSERT INTO {s}.job_dependencies (job_id, job_seq, position, dependency_id, dependency_seq)
    SELECT j.id, j.seq, 0, d.id, d.seq
    FROM {s}.jobs j JOIN {s}.jobs d ON d.seq = j.seq - 1
    WHERE j.seq % 10 = 0
"""
COPY_OUT = """
    COPY (SELECT id, seq, type, channel, args, queued, started, finished, canceled,
                 result, retries, token, worker_id
          FROM {s}.jobs ORDER BY seq) TO STDOUT (FORMAT binary)
"""


def fill(url: str, schema: str, jobs: int) -> float:
    async def create() -> None:
        store = PostgresStore(url, schema=schema)
        await store.load()  # creates the schema
        await store.close()

    trio.run(create)
    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FILL_JOBS.replace("{s}", schema).encode(), (jobs,))
        conn.execute(FILL_DEPENDENCIES.replace("{s}", schema).encode())
        conn.execute(f"VACUUM ANALYZE {schema}.jobs".encode())
        conn.execute(f"VACUUM ANALYZE {schema}.job_dependencies".encode())
    return time.perf_counter() - start


def copy_out(url: str, schema: str) -> float:
    start = time.perf_counter()
    size = 0
    with (
        psycopg.connect(url) as conn,
        conn.cursor() as cur,
        cur.copy(COPY_OUT.replace("{s}", schema).encode()) as copy,
    ):
        for block in copy:
            size += len(block)
    return time.perf_counter() - start


def serve_until_serving(url: str, schema: str, lease: float, timeout: float) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    store = f"{url}?actorq_schema={schema}&actorq_lease_timeout={lease}"
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "actorq", "--store", store, "serve", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    served = threading.Event()
    lines: list[str] = []
    took: list[float] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip())
            if line.startswith("actorq serving") and not served.is_set():
                took.append(time.perf_counter() - start)
                served.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not served.wait(0.2) and reader.is_alive() and time.monotonic() < deadline:
            pass  # the reader ends early if the server exits
        if not served.is_set():
            raise SystemExit("the server never served:\n" + "\n".join(lines[-20:]))
        # still serving a moment later: the lease survived the load
        time.sleep(2 * lease)
        if proc.poll() is not None:
            raise SystemExit("the server stopped after serving:\n" + "\n".join(lines[-20:]))
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(5)
    return took[0]


def startup() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import actorq._cli._main"], check=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_500_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lease-timeout", type=float, default=10.0)
    args = parser.parse_args()
    idle = max(1, int(args.lease_timeout / 2))
    out: dict[str, Any] = {"jobs": args.jobs, "lease_timeout": args.lease_timeout}
    with pgserver.PgServer() as server:
        # a cluster that ends idle sessions quickly: the load must not be idle
        for setting in ("idle_session_timeout", "idle_in_transaction_session_timeout"):
            server.execute(f"ALTER SYSTEM SET {setting} = '{idle}s'")
        server.execute("SELECT pg_reload_conf()")
        out["cluster_idle_timeouts_seconds"] = idle
        url = server.url()
        schema = "load"
        out["fill_seconds"] = fill(url, schema, args.jobs)
        copies, serves, starts = [], [], []
        for _ in range(args.repeats):
            starts.append(startup())
            copies.append(copy_out(url, schema))
            serves.append(serve_until_serving(url, schema, args.lease_timeout, 600))
    out["startup_seconds"] = statistics.median(starts)
    out["copy_seconds"] = statistics.median(copies)
    out["serve_seconds"] = statistics.median(serves)
    out["serve_seconds_all"] = serves
    out["serve_over_copy"] = out["serve_seconds"] / out["copy_seconds"]
    out["jobs_per_second"] = args.jobs / out["serve_seconds"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
