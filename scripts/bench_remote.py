#!/usr/bin/env python3
"""Remote benchmark: actorq deployed as users deploy it, beside a hand-written Redis queue.

    python scripts/bench.py --suite remote [--quick]
    python scripts/bench_remote.py [--quick]        # this suite alone
    python scripts/bench_remote.py --memory-only --against ../old   # before / after

Every part runs in its own process, as in production:

* the server: ``actorq --store STORE serve --port 0``, for the memory, SQLite
  and PostgreSQL stores (PostgreSQL in a throwaway cluster from
  ``tests/pgserver.py``, fsync on; skipped, with the reason in the JSON,
  without its binaries or psycopg);
* the worker: ``actorq --url URL worker bench_worker_app:worker``, one process,
  async no-op handlers, concurrency ``ACTORQ_BENCH_CONCURRENCY`` (default 100),
  recording each handler's start (``scripts/bench_worker_app.py``);
* the producer: a process of its own (this script, ``--producer URL``) that
  holds one ``actorq.connect`` connection and enqueues one job at a time
  (sequential ``await queue.enqueue(...)``), as this process tells it;
* the blocking producer: another process (``--blocking-producer URL``) doing
  the same through ``actorq.connect_blocking``, as a web application or a
  script that does not run trio enqueues: the figures ``..._blocking``.
  Left out for an ``--against`` checkout that has no blocking client.

The baseline, in the same run: ``redis-server`` on a free loopback port
(``--save '' --appendonly no``), a producer process doing ``LPUSH`` of JSON
jobs one at a time and a consumer process looping ``BRPOP`` (redis-py), which
records its handler starts the same way. Skipped, with the reason in the
JSON, when ``redis-server`` is not on PATH or redis-py is missing. The
baseline acknowledges nothing, stores no result and persists nothing: it is
the floor under any queue that goes through a server.

Each round measures every system in turn (interleaved, so drift on a noisy
machine hits all of them alike); figures are medians over the rounds, and
each ratio to Redis is the median of the per-round ratios. A round:

1. ``enqueue_jobs_per_s``: the producer enqueues the drain jobs sequentially,
   no worker running; ``enqueue_blocking_jobs_per_s``: the blocking producer
   enqueues as many jobs of a type no worker takes, deleted again untimed;
2. ``drain_jobs_per_s``: the worker starts and drains them; jobs per second
   from the first to the last handler start. ``server_cpu_ms_per_job`` and
   ``worker_cpu_ms_per_job`` are utime+stime deltas (``/proc/PID/stat``) of
   the server and worker processes over that window (for PostgreSQL also
   ``database_cpu_ms_per_job``: the cluster's processes);
3. ``end_to_end_jobs_per_s``: with the worker running, the producer enqueues
   more jobs; from the first enqueue to the last handler start
   (``enqueue_with_worker_jobs_per_s``: the producer's own rate meanwhile);
4. ``idle_latency_ms``: one job at a time, each 20 ms after the previous
   one's handler started; from the enqueue call to the handler's start,
   median and p90 (``idle_latency_blocking_ms``: the same from the blocking
   producer, after the producer's samples);
5. ``chain_jobs_per_s`` (actorq only): a chain of jobs, each depending on the
   previous, enqueued behind a gate job no worker takes; the producer then
   takes and finishes the gate, and the figure runs from the first to the
   last handler start of the chain.

Each round starts a fresh worker (or Redis consumer) process after step 1 and
stops it with SIGTERM at the end, when it writes its handler starts to a file
the figures come from. Phase sizes are set by time, not count, so that a run
takes minutes however fast a system is and no phase is too short to time: a
system's sequential enqueue rate is measured once (100 jobs of a type no
worker takes, then taken away), and its drain and end-to-end phases hold that
many seconds of enqueueing (``setup.plan``; each system's ``sizes``), the same
in every round. Only stdout carries the JSON; progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
JOB_TYPE = "bench"
GATE_TYPE = "bench.gate"
CALIBRATE_TYPE = "bench.calibrate"
REDIS_KEY = "bench"
CALIBRATE_KEY = "bench.calibrate"
CALIBRATE_JOBS = 100
IDLE_PAUSE = 0.02  # seconds before each idle-latency job
CONCURRENCY = int(os.environ.get("ACTORQ_BENCH_CONCURRENCY", "100"))


_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[remote {time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- producers
#
# A producer reads one JSON command per line on stdin and answers one JSON
# line on stdout; times are time.time(), comparable with the handler starts.


def _reply(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


async def _actorq_producer(url: str) -> None:
    import trio

    import actorq

    async with actorq.connect(url) as queue:
        _reply({"ready": True})
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            command = json.loads(line)
            op = command["op"]
            if op == "enqueue":
                phase, n = command["phase"], command["count"]
                args = {"phase": phase, "n": n}
                t0 = time.time()
                for _ in range(n):
                    await queue.enqueue(JOB_TYPE, args)
                _reply({"t0": t0, "t1": time.time()})
            elif op == "one":
                args = {"phase": command["phase"], "n": 1}
                t0 = time.time()
                await queue.enqueue(JOB_TYPE, args)
                _reply({"t0": t0, "t1": time.time()})
            elif op == "chain":
                phase, n = command["phase"], command["count"]
                args = {"phase": phase, "n": n}
                previous = await queue.enqueue(GATE_TYPE)
                t0 = time.time()
                for _ in range(n):
                    previous = await queue.enqueue(JOB_TYPE, args, [previous])
                _reply({"t0": t0, "t1": time.time()})
            elif op == "calibrate":
                # jobs of a type no worker takes, timed, then taken away again
                t0 = time.time()
                for _ in range(command["count"]):
                    await queue.enqueue(CALIBRATE_TYPE)
                t1 = time.time()
                for _ in range(command["count"]):
                    job = await queue.dequeue([CALIBRATE_TYPE], timeout=30)
                    await queue.finish_job(job.id)
                _reply({"t0": t0, "t1": t1})
            elif op == "release":
                gate = await queue.dequeue([GATE_TYPE], timeout=30)
                t0 = time.time()
                await queue.finish_job(gate.id)
                _reply({"t0": t0})
            else:
                raise ValueError(f"unknown command {op!r}")


def _blocking_producer(url: str) -> None:
    import actorq

    with actorq.connect_blocking(url) as queue:
        _reply({"ready": True})
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            if op in ("enqueue", "one"):
                n = command["count"] if op == "enqueue" else 1
                job_type = command.get("type", JOB_TYPE)
                args = {"phase": command["phase"], "n": n}
                t0 = time.time()
                ids = [queue.enqueue(job_type, args) for _ in range(n)]
                t1 = time.time()
                if job_type != JOB_TYPE:  # nobody takes these: taken away again, untimed
                    for job_id in ids:
                        queue.delete_job(job_id)
                _reply({"t0": t0, "t1": t1})
            else:
                raise ValueError(f"unknown command {op!r}")


def _redis_producer(port: int) -> None:
    import redis  # type: ignore[import-not-found, unused-ignore]  # the bench extra

    client = redis.Redis(host=HOST, port=port)
    client.ping()
    _reply({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op in ("enqueue", "one"):
            n = command["count"] if op == "enqueue" else 1
            args = {"phase": command["phase"], "n": n}
            t0 = time.time()
            for _ in range(n):
                # what a hand-written producer sends: an id, a type, the args
                job = {"id": str(uuid.uuid4()), "type": JOB_TYPE, "args": args}
                client.lpush(REDIS_KEY, json.dumps(job))
            _reply({"t0": t0, "t1": time.time()})
        elif op == "calibrate":
            t0 = time.time()
            for _ in range(command["count"]):
                client.lpush(CALIBRATE_KEY, json.dumps({"type": CALIBRATE_TYPE}))
            t1 = time.time()
            client.delete(CALIBRATE_KEY)
            _reply({"t0": t0, "t1": t1})
        else:
            raise ValueError(f"unknown command {op!r}")
    client.close()


# ----------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _env(root: Path = ROOT, **extra: str) -> dict[str, str]:
    # the processes import actorq (and the bench's own modules) from ``root``
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root / "scripts"), str(root), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.update(extra)
    return env


def _actorq_cli() -> list[str]:
    script = Path(sys.executable).with_name("actorq")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "actorq"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, in seconds (``/proc/PID/stat``)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # the command name (field 2) is in parentheses and may contain spaces
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (entry / "stat").read_text()
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its children (a PostgreSQL cluster: postmaster and backends)."""
    total = 0.0
    for one in (pid, *_children_of(pid)):
        with contextlib.suppress(OSError):
            total += cpu_seconds(one)
    return total


class Process:
    """A child process whose stderr goes to a log file, stopped (TERM, then KILL) on close."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        logdir: Path,
        *,
        env: dict[str, str] | None = None,
        pipe: bool = False,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.log = logdir / f"{name}-{uuid.uuid4().hex[:8]}.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
                # redis-server logs on stdout
                stdout=subprocess.PIPE if pipe else err,
                stderr=err,
                env=env or _env(),
                # python -m looks in the working directory first: the checkout's own actorq
                cwd=cwd,
                text=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> None:
        """Raise RuntimeError, with the end of its log, if the process has exited."""
        code = self.proc.poll()
        if code is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with status {code}:\n{tail}")

    def wait_log(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Wait until the log has a line matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log.read_text(errors="replace"))
            if found:
                return found
            self.alive()
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not log {pattern!r} within {timeout} s")

    def call(self, command: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        """Send one command line to a producer and read its one-line reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read_reply(timeout)

    def read_reply(self, timeout: float = 60.0) -> dict[str, Any]:
        """The producer's next reply line; RuntimeError if it exits or takes too long."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        # A producer writes exactly one line per command, so nothing waits in
        # the file object's buffer and select() on its descriptor tells the truth.
        while not select.select([self.proc.stdout], [], [], 0.5)[0]:
            self.alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            self.alive()
            raise RuntimeError(f"{self.name} closed its output")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait (then SIGKILL); the exit status."""
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Notifications:
    """The UDP socket the handlers tell phase starts and ends to."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.2)
        self.address = f"{HOST}:{self.sock.getsockname()[1]}"
        self.seen: dict[tuple[str, int], float] = {}

    def wait(self, phase: str, count: int, watched: list[Process], timeout: float = 600.0) -> float:
        """Wait for the datagram of ``phase`` reaching ``count`` starts; its start time."""
        deadline = time.monotonic() + timeout
        while (phase, count) not in self.seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"phase {phase} did not reach {count} starts in {timeout} s")
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                for proc in watched:
                    proc.alive()
                continue
            message = json.loads(data)
            self.seen[message["phase"], message["count"]] = message["t"]
        return self.seen[phase, count]

    def close(self) -> None:
        self.sock.close()


# ----------------------------------------------------------------- systems


class System:
    """One queue under test: a server, a producer, and a consumer started per round."""

    name = ""
    has_chain = False

    def __init__(self, workdir: Path, notify: Notifications) -> None:
        self.workdir = workdir
        self.notify = notify
        self.server: Process | None = None
        self.producer: Process | None = None
        self.blocking: Process | None = None  # a producer on actorq.connect_blocking
        self.sizes: dict[str, int] | None = None

    def size(self, plan: dict[str, Any]) -> dict[str, int]:
        """This system's phase sizes, the same in every round: see :func:`run`."""
        if self.sizes is None:
            assert self.producer is not None
            sent = self.producer.call({"op": "calibrate", "count": CALIBRATE_JOBS})
            rate = CALIBRATE_JOBS / (sent["t1"] - sent["t0"])
            low, high = plan["bounds"]
            self.sizes = {
                phase: min(high, max(low, round(rate * plan["seconds"][phase])))
                for phase in ("drain", "end_to_end")
            }
            self.sizes["latency"] = plan["latency"]
            if self.has_chain:
                self.sizes["chain"] = plan["chain"]
        return self.sizes

    def server_cpu(self) -> float:
        assert self.server is not None
        return cpu_seconds(self.server.pid)

    def extra_cpu(self) -> dict[str, float]:
        """CPU of processes beside the server worth reporting (a database cluster)."""
        return {}

    def start_consumer(self, env: dict[str, str]) -> Process:
        raise NotImplementedError

    def close(self) -> None:
        for proc in (self.blocking, self.producer, self.server):
            if proc is not None:
                proc.stop()


class ActorqSystem(System):
    has_chain = True

    def __init__(
        self,
        workdir: Path,
        notify: Notifications,
        kind: str,
        store: str,
        *,
        root: Path = ROOT,
        name: str | None = None,
        twin: System | None = None,
    ) -> None:
        super().__init__(workdir, notify)
        self.name = name or f"actorq_{kind}"
        # run beside ``twin`` (the same store, another checkout): the same
        # phase sizes as it, so that the two meet the same backlogs
        self.twin = twin
        self.root = root  # the checkout whose actorq every process of this system runs
        cli = [sys.executable, "-m", "actorq"] if root != ROOT else _actorq_cli()
        self.cli = cli
        self.server = Process(
            f"{self.name}-server",
            [*cli, "--store", store, "serve", "--host", HOST, "--port", "0"],
            workdir,
            env=_env(root),
            cwd=root,
        )
        self.url = self.server.wait_log(r"on (ws://\S+)").group(1)
        self.producer = Process(
            f"{self.name}-producer",
            [sys.executable, str(root / "scripts" / "bench_remote.py"), "--producer", self.url],
            workdir,
            env=_env(root),
            pipe=True,
            cwd=root,
        )
        self.producer.read_reply()
        if (root / "actorq" / "_remote" / "_blocking.py").is_file():
            self.blocking = Process(
                f"{self.name}-blocking-producer",
                [
                    *(sys.executable, str(root / "scripts" / "bench_remote.py")),
                    *("--blocking-producer", self.url),
                ],
                workdir,
                env=_env(root),
                pipe=True,
                cwd=root,
            )
            self.blocking.read_reply()

    def size(self, plan: dict[str, Any]) -> dict[str, int]:
        if self.twin is not None and self.sizes is None:
            self.sizes = dict(self.twin.size(plan))
        return super().size(plan)

    def start_consumer(self, env: dict[str, str]) -> Process:
        env = {**env, "PYTHONPATH": _env(self.root)["PYTHONPATH"]}
        return Process(
            f"{self.name}-worker",
            [*self.cli, "--url", self.url, "worker", "bench_worker_app:worker"],
            self.workdir,
            env=env,
            cwd=self.root,
        )


class PostgresSystem(ActorqSystem):
    def __init__(self, workdir: Path, notify: Notifications, cluster: Any) -> None:
        self.cluster = cluster
        super().__init__(workdir, notify, "postgres", cluster.create_database())

    def extra_cpu(self) -> dict[str, float]:
        pid = int((self.cluster.datadir / "postmaster.pid").read_text().split()[0])
        return {"database": tree_cpu_seconds(pid)}


class RedisSystem(System):
    name = "redis"

    def __init__(self, workdir: Path, notify: Notifications, binary: str) -> None:
        super().__init__(workdir, notify)
        for _ in range(3):  # the free port may be taken between probe and bind
            self.port = _free_port()
            self.server = Process(
                "redis-server",
                [
                    *(binary, "--port", str(self.port), "--bind", HOST),
                    *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                ],
                workdir,
            )
            try:
                self.server.wait_log(r"Ready to accept connections", timeout=20)
                break
            except RuntimeError:
                self.server.stop()
        else:
            raise RuntimeError("redis-server did not start")
        self.producer = Process(
            "redis-producer",
            [sys.executable, str(Path(__file__).resolve()), "--redis-producer", str(self.port)],
            workdir,
            pipe=True,
        )
        self.producer.read_reply()

    def start_consumer(self, env: dict[str, str]) -> Process:
        return Process(
            "redis-consumer",
            [sys.executable, str(SCRIPTS / "bench_worker_app.py"), "--redis-port", str(self.port)],
            self.workdir,
            env=env,
        )


# ----------------------------------------------------------------- one round


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure_round(system: System, tag: str, sizes: dict[str, int]) -> dict[str, Any]:
    """One round on ``system``: enqueue, drain, end to end, idle latency, chain."""
    assert system.producer is not None
    assert system.server is not None
    producer, notify = system.producer, system.notify
    drain, e2e, chain = f"{tag}-drain", f"{tag}-e2e", f"{tag}-chain"
    times_file = system.workdir / f"{system.name}-{tag}-times.json"
    n = sizes["drain"]

    sent = producer.call({"op": "enqueue", "phase": drain, "count": n})
    out: dict[str, Any] = {"enqueue_jobs_per_s": n / (sent["t1"] - sent["t0"])}
    blocking = system.blocking
    if blocking is not None:
        command = {"op": "enqueue", "phase": f"{tag}-blocking", "count": n, "type": CALIBRATE_TYPE}
        sent = blocking.call(command)
        out["enqueue_blocking_jobs_per_s"] = n / (sent["t1"] - sent["t0"])

    consumer = system.start_consumer(
        _env(
            ACTORQ_BENCH_NOTIFY=notify.address,
            ACTORQ_BENCH_TIMES=str(times_file),
            ACTORQ_BENCH_CONCURRENCY=str(CONCURRENCY),
        )
    )
    watched = [consumer, system.server, producer]
    try:
        notify.wait(drain, 1, watched)
        cpu0 = (system.server_cpu(), cpu_seconds(consumer.pid), system.extra_cpu())
        notify.wait(drain, n, watched)
        cpu1 = (system.server_cpu(), cpu_seconds(consumer.pid), system.extra_cpu())

        m = sizes["end_to_end"]
        sent_e2e = producer.call({"op": "enqueue", "phase": e2e, "count": m})
        notify.wait(e2e, m, watched)

        latency_sent = []
        for i in range(sizes["latency"]):
            # idle means idle: the previous job's finish has landed by now
            time.sleep(IDLE_PAUSE)
            latency_sent.append(producer.call({"op": "one", "phase": f"{tag}-lat{i}"}))
            notify.wait(f"{tag}-lat{i}", 1, watched)
        blocking_sent = []
        if blocking is not None:
            for i in range(sizes["latency"]):
                time.sleep(IDLE_PAUSE)
                blocking_sent.append(blocking.call({"op": "one", "phase": f"{tag}-blat{i}"}))
                notify.wait(f"{tag}-blat{i}", 1, watched)

        if system.has_chain:
            k = sizes["chain"]
            producer.call({"op": "chain", "phase": chain, "count": k})
            producer.call({"op": "release"})
            notify.wait(chain, k, watched)
    finally:
        status = consumer.stop()
    if status != 0:
        consumer.alive()
    starts: dict[str, list[float]] = json.loads(times_file.read_text())

    drained = starts[drain]
    if len(drained) != n:
        raise RuntimeError(f"{system.name}: {len(drained)} of {n} drain jobs ran")
    span = max(drained) - min(drained)
    out["drain_jobs_per_s"] = (n - 1) / span
    # the CPU window, like the rate, runs from the first start to the last
    out["server_cpu_ms_per_job"] = 1000 * (cpu1[0] - cpu0[0]) / (n - 1)
    out["worker_cpu_ms_per_job"] = 1000 * (cpu1[1] - cpu0[1]) / (n - 1)
    for key, before in cpu0[2].items():
        out[f"{key}_cpu_ms_per_job"] = 1000 * (cpu1[2][key] - before) / (n - 1)

    out["end_to_end_jobs_per_s"] = m / (max(starts[e2e]) - sent_e2e["t0"])
    out["enqueue_with_worker_jobs_per_s"] = m / (sent_e2e["t1"] - sent_e2e["t0"])

    latencies = [
        1000 * (starts[f"{tag}-lat{i}"][0] - sent["t0"]) for i, sent in enumerate(latency_sent)
    ]
    out["idle_latency_ms"] = {
        "median": statistics.median(latencies),
        "p90": _percentile(latencies, 0.9),
        "samples": len(latencies),
    }
    if blocking_sent:
        latencies = [
            1000 * (starts[f"{tag}-blat{i}"][0] - sent["t0"])
            for i, sent in enumerate(blocking_sent)
        ]
        out["idle_latency_blocking_ms"] = {
            "median": statistics.median(latencies),
            "p90": _percentile(latencies, 0.9),
            "samples": len(latencies),
        }
    if system.has_chain:
        chained = starts[chain]
        out["chain_jobs_per_s"] = (len(chained) - 1) / (max(chained) - min(chained))
    return out


# ----------------------------------------------------------------- the suite


FIGURES = (
    "drain_jobs_per_s",
    "end_to_end_jobs_per_s",
    "enqueue_jobs_per_s",
    "enqueue_blocking_jobs_per_s",
    "enqueue_with_worker_jobs_per_s",
    "server_cpu_ms_per_job",
    "worker_cpu_ms_per_job",
    "database_cpu_ms_per_job",
    "chain_jobs_per_s",
)
#: figure in the JSON -> name of its ratio to Redis (actorq / redis)
RATIOS = {
    "drain_jobs_per_s": "drain",
    "end_to_end_jobs_per_s": "end_to_end",
    "enqueue_jobs_per_s": "enqueue",
    "server_cpu_ms_per_job": "server_cpu_per_job",
    "worker_cpu_ms_per_job": "worker_cpu_per_job",
}


def _get(run: dict[str, Any], figure: str) -> float | None:
    for latency in ("idle_latency", "idle_latency_blocking"):
        for which in ("median", "p90"):
            if figure == f"{latency}_{which}_ms":
                found = run.get(f"{latency}_ms")
                return None if found is None else float(found[which])
    value = run.get(figure)
    return None if value is None else float(value)


def summarize(
    runs: list[dict[str, Any]], baseline: list[dict[str, Any]] | None, *, is_baseline: bool
) -> dict[str, Any]:
    """Medians over rounds, every round's figures, and median per-round ratios to Redis.

    Without a baseline (Redis skipped or failed), ``vs_redis`` is ``None``.
    """
    out: dict[str, Any] = {}
    for figure in FIGURES:
        values = [v for r in runs if (v := _get(r, figure)) is not None]
        if values:
            out[figure] = {"median": statistics.median(values), "runs": values}
    for latency in ("idle_latency_ms", "idle_latency_blocking_ms"):
        if latency not in runs[0]:
            continue
        medians = [r[latency]["median"] for r in runs]
        p90s = [r[latency]["p90"] for r in runs]
        out[latency] = {
            "median": statistics.median(medians),
            "p90": statistics.median(p90s),
            "runs_median": medians,
            "runs_p90": p90s,
            "samples_per_round": runs[0][latency]["samples"],
        }
    if baseline is not None:
        out["vs_redis"] = ratios_to(runs, baseline, cross=CROSS_RATIOS)
    elif not is_baseline:
        out["vs_redis"] = None
    return out


#: ratios of a figure of ours to another figure of the baseline's: Redis's
#: producer blocks, so the blocking producer's figures meet its only ones
CROSS_RATIOS = {
    ("enqueue_blocking_jobs_per_s", "enqueue_jobs_per_s"): "enqueue_blocking",
    ("idle_latency_blocking_median_ms", "idle_latency_median_ms"): "latency_blocking_median",
    ("idle_latency_blocking_p90_ms", "idle_latency_p90_ms"): "latency_blocking_p90",
}


def ratios_to(
    runs: list[dict[str, Any]],
    baseline: list[dict[str, Any]],
    figures: dict[str, str] = RATIOS,
    cross: dict[tuple[str, str], str] | None = None,
) -> dict[str, float]:
    """The median over rounds of each figure's ratio ``runs`` / ``baseline``, round by round.

    ``cross``: pairs of figures (ours, the baseline's) compared as well.
    """
    pairs: dict[tuple[str, str], str] = {
        **{(figure, figure): name for figure, name in figures.items()},
        ("idle_latency_median_ms", "idle_latency_median_ms"): "latency_median",
        ("idle_latency_p90_ms", "idle_latency_p90_ms"): "latency_p90",
        **(cross or {}),
    }
    ratios: dict[str, float] = {}
    for (figure, other), name in pairs.items():
        per_round = []
        for ours, theirs in zip(runs, baseline, strict=True):
            a, b = _get(ours, figure), _get(theirs, other)
            if a is not None and b:
                per_round.append(a / b)
        if per_round:
            ratios[name] = statistics.median(per_round)
    return ratios


@contextlib.contextmanager
def _systems(
    workdir: Path,
    notify: Notifications,
    skipped: dict[str, str],
    errors: dict[str, str],
    *,
    against: Path | None = None,
    memory_only: bool = False,
) -> Iterator[list[System]]:
    """Start every system that can run here; record why the others cannot.

    ``skipped``: what is not installed here; ``errors``: what failed to start.
    ``against``: another checkout of actorq, run beside this one on the
    memory store (``actorq_memory_against``) and, unless ``memory_only``, on
    SQLite (``actorq_sqlite_against``); ``memory_only``: no SQLite, no
    PostgreSQL.
    """
    systems: list[System] = []
    cluster: Any = None

    def named(name: str) -> System | None:
        return next((system for system in systems if system.name == name), None)

    def attempt(name: str, start: Callable[[], System]) -> None:
        progress(f"starting {name}")
        try:
            systems.append(start())
        except Exception as exc:  # one broken system must not hide the others' figures
            errors[name] = f"did not start: {exc!r}"

    def attempt_actorq(kind: str, store: Callable[[str], str]) -> None:
        # this checkout on ``kind``, then the other one (if any) beside it
        name = f"actorq_{kind}"
        attempt(name, lambda: ActorqSystem(workdir, notify, kind, store("q")))
        if against is not None:
            attempt(
                name + AGAINST,
                lambda: ActorqSystem(
                    *(workdir, notify, kind, store("q-against")),
                    root=against,
                    name=name + AGAINST,
                    twin=named(name),
                ),
            )

    try:
        attempt_actorq("memory", lambda _: "memory://")
        if not memory_only:
            attempt_actorq("sqlite", lambda file: f"sqlite:///{workdir / file}.db")
        sys.path.insert(0, str(ROOT / "tests"))
        import pgserver

        reason = pgserver.missing_reason()
        if reason is None and importlib.util.find_spec("psycopg") is None:
            reason = "psycopg is not installed (pip install -e '.[postgres]')"
        if memory_only:
            pass
        elif reason is not None:
            skipped["actorq_postgres"] = f"skipped: {reason}"
        else:
            # fsync on: every commit reaches the disk, as in production
            cluster = pgserver.PgServer(fsync=True)
            try:
                cluster.start()
            except (RuntimeError, OSError) as exc:
                errors["actorq_postgres"] = f"did not start: {exc}"
                cluster = None
            else:
                attempt("actorq_postgres", lambda: PostgresSystem(workdir, notify, cluster))
        binary = shutil.which("redis-server")
        if binary is None:
            skipped["redis"] = (
                "skipped: redis-server is not on PATH (Debian: apt-get install redis-server)"
            )
        elif importlib.util.find_spec("redis") is None:
            skipped["redis"] = "skipped: redis-py is not installed (pip install -e '.[bench]')"
        else:
            attempt("redis", lambda: RedisSystem(workdir, notify, binary))
        yield systems
    finally:
        for system in systems:
            system.close()
        if cluster is not None:
            cluster.stop()


MEMORY, SQLITE, AGAINST = "actorq_memory", "actorq_sqlite", "_against"


def run(quick: bool, *, against: Path | None = None, memory_only: bool = False) -> dict[str, Any]:
    """Start everything, run the rounds, stop everything. Returns the figures.

    ``against`` and ``memory_only`` as for :func:`_systems`: with ``against``,
    the figures hold the other checkout's systems too (``..._against``), and
    each of this checkout's gets ``vs_against``, its ratio to the other's
    figures on the same store, round by round.
    """
    # The drain and end-to-end phases are sized by time, not by count, so
    # that the run takes minutes however fast a system is and no phase is too
    # short to time: each system's sequential enqueue rate is measured once
    # (100 jobs) and its phases hold that many seconds of enqueueing, within
    # the bounds; its sizes then stay the same for every round.
    plan: dict[str, Any] = (
        {
            "seconds": {"drain": 0.5, "end_to_end": 0.3},
            "bounds": (100, 20000),
            "latency": 20,
            "chain": 100,
        }
        if quick
        else {
            "seconds": {"drain": 2.0, "end_to_end": 1.5},
            "bounds": (300, 50000),
            "latency": 100,
            "chain": 1000,
        }
    )
    rounds = 1 if quick else 3
    skipped: dict[str, str] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    notify = Notifications()
    with (
        tempfile.TemporaryDirectory(prefix="actorq-bench-") as tmp,
        _systems(
            Path(tmp), notify, skipped, errors, against=against, memory_only=memory_only
        ) as systems,
    ):
        for r in range(rounds):
            for system in systems:
                if system.name in errors:
                    continue
                progress(f"round {r + 1}/{rounds}: {system.name}")
                try:
                    runs.setdefault(system.name, []).append(
                        measure_round(system, f"{system.name}-r{r}", system.size(plan))
                    )
                except Exception as exc:  # as above: report it, measure the rest
                    errors[system.name] = repr(exc)
        sizes = {system.name: system.sizes for system in systems}
    notify.close()
    baseline = runs.get("redis") if "redis" not in errors else None
    results: dict[str, Any] = {
        "setup": {
            "rounds": rounds,
            "plan": plan,
            "worker_concurrency": CONCURRENCY,
            "server": "actorq --store STORE serve (its own process)",
            "worker": "actorq --url URL worker bench_worker_app:worker (one process)",
            "producer": "one process, sequential await queue.enqueue(...)",
            "blocking_producer": "one process, sequential queue.enqueue(...) on "
            "actorq.connect_blocking (the figures ..._blocking)",
            "redis": "redis-server --save '' --appendonly no; LPUSH producer, BRPOP consumer",
        }
    }
    names = ["redis", MEMORY, MEMORY + AGAINST, SQLITE, SQLITE + AGAINST, "actorq_postgres"]
    for name in names:
        if name.endswith(AGAINST) and against is None:
            continue
        if name in errors:
            results[name] = {"error": errors[name]}
        elif name in runs:
            is_baseline = name == "redis"
            results[name] = summarize(
                runs[name], None if is_baseline else baseline, is_baseline=is_baseline
            )
            results[name]["sizes"] = sizes[name]
        elif name in skipped:
            results[name] = {"skipped": skipped[name]}
    if against is not None:
        results["setup"]["against"] = str(against)
        for name in (MEMORY, SQLITE):
            if name in runs and name + AGAINST in runs and name not in errors:
                # this checkout over the other, round by round (CPU: below 1 is less)
                results[name]["vs_against"] = ratios_to(
                    runs[name], runs[name + AGAINST], {**RATIOS, "chain_jobs_per_s": "chain"}
                )
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--producer"]:
        import trio

        trio.run(_actorq_producer, sys.argv[2])
    elif sys.argv[1:2] == ["--blocking-producer"]:
        _blocking_producer(sys.argv[2])
    elif sys.argv[1:2] == ["--redis-producer"]:
        _redis_producer(int(sys.argv[2]))
    else:
        import argparse

        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--quick", action="store_true", help="one short round")
        parser.add_argument(
            "--against",
            type=Path,
            metavar="CHECKOUT",
            help="another checkout of actorq (a git worktree, say), run beside this one "
            "on the memory and SQLite stores, round by round; vs_against is this one "
            "over it",
        )
        parser.add_argument(
            "--memory-only", action="store_true", help="no SQLite and no PostgreSQL"
        )
        args = parser.parse_args()
        against = args.against.resolve() if args.against else None
        if against is not None and not (against / "actorq" / "__init__.py").is_file():
            parser.error(f"{against} is not a checkout of actorq")
        result = run(args.quick, against=against, memory_only=args.memory_only)
        print(json.dumps(result, indent=2))
