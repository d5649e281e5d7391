"""The worker runtime, against the in-process queue, under trio's MockClock (autojump).

Every test runs twice: with the job stream the in-process queue offers, and
with dequeues, as the worker serves a queue that offers no stream.
"""

from __future__ import annotations

import signal
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import pytest
import trio
import trio.testing

import actorq
from actorq import Job, JobState, JobStatus, Worker

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator

    from trio.testing import MockClock


@runtime_checkable
class _NoStreams(Protocol):
    """A protocol no queue satisfies: the worker then takes jobs by dequeue."""

    def _offers_no_streams(self) -> None: ...


@pytest.fixture(autouse=True, params=["stream", "dequeue"])
def worker_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "dequeue":
        monkeypatch.setattr("actorq._worker._worker.StreamingQueue", _NoStreams)
    mode: str = request.param
    return mode


@attrs.frozen
class BuildArgs:
    name: str
    count: int = 1


@attrs.frozen
class BuildResult:
    artifact: str


@asynccontextmanager
async def queue_and_nursery() -> AsyncIterator[tuple[actorq.LocalQueue, trio.Nursery]]:
    async with actorq.open_queue() as q, trio.open_nursery() as nursery:
        yield q, nursery


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Run ``worker`` for the block, then shut it down (cancelling what still runs)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        yield worker
        worker.shutdown(grace=0)


async def wait_done(q: actorq.JobQueue, job_id: uuid.UUID) -> JobStatus:
    while True:
        status = await q.job_status(job_id)
        if status.state in (JobState.FINISHED, JobState.FAILED, JobState.CANCELED):
            return status
        await trio.sleep(0.5)


# ------------------------------------------------------------------ results


async def test_handler_result_finishes_the_job(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)
        seen: list[Job] = []

        @worker.handler("build")
        async def build(job: Job) -> dict[str, Any]:
            seen.append(job)
            return {"built": job.args["name"]}

        async with running(worker):
            job_id = await q.enqueue("build", {"name": "x"})
            status = await wait_done(q, job_id)
        assert status.state is JobState.FINISHED
        assert status.result == {"built": "x"}
        (job,) = seen
        assert (job.id, job.type, job.args, job.channel, job.dependencies) == (
            job_id,
            "build",
            {"name": "x"},
            "",
            [],
        )
        assert job.worker_id is not None


async def test_handler_error_becomes_a_structured_result_and_the_worker_goes_on(
    autojump_clock: MockClock,
) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)

        @worker.handler("t")
        async def handle(job: Job) -> str:
            if job.args == "bad":
                raise ValueError("boom")
            return "ok"

        async with running(worker):
            bad = await q.enqueue("t", "bad")
            good = await q.enqueue("t", "good")
            bad_status = await wait_done(q, bad)
            good_status = await wait_done(q, good)
        error = bad_status.result["error"]
        assert error["type"] == "ValueError"
        assert error["message"] == "boom"
        assert "raise ValueError" in error["traceback"]
        assert good_status.result == "ok"


async def test_error_type_names_the_module_of_non_builtin_exceptions(
    autojump_clock: MockClock,
) -> None:
    class BuildFailed(Exception):
        pass

    result = actorq.error_result(BuildFailed("no disk"))
    assert result["error"]["type"] == f"{__name__}.{BuildFailed.__qualname__}"
    assert result["error"]["message"] == "no disk"


async def test_result_that_is_not_json_finishes_with_an_error(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)

        @worker.handler("t")
        async def handle(job: Job) -> object:
            return object()

        async with running(worker):
            job_id = await q.enqueue("t")
            status = await wait_done(q, job_id)
        assert status.result["error"]["type"] == "TypeError"


# ------------------------------------------------------------------ handler kinds


async def test_typed_args_are_structured_and_results_unstructured(
    autojump_clock: MockClock,
) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)
        got: list[BuildArgs] = []

        @worker.handler("build")
        async def build(job: Job, args: BuildArgs) -> BuildResult:
            got.append(args)
            return BuildResult(artifact=f"{args.name}-{args.count}")

        async with running(worker):
            ok = await q.enqueue("build", BuildArgs("img", 3))
            bad = await q.enqueue("build", {"count": "many"})
            ok_status = await wait_done(q, ok)
            bad_status = await wait_done(q, bad)
        assert got == [BuildArgs("img", 3)]
        assert ok_status.result == {"artifact": "img-3"}
        error = bad_status.result["error"]
        assert error["type"] == "cattrs.errors.ClassValidationError"
        assert "name" in error["message"]
        assert "count" in error["message"]


async def test_untyped_args_parameter_gets_json(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)

        @worker.handler("t")
        async def handle(job, args):  # type: ignore[no-untyped-def]
            return args

        async with running(worker):
            job_id = await q.enqueue("t", {"a": [1, 2]})
            assert (await wait_done(q, job_id)).result == {"a": [1, 2]}


async def test_sync_handler_runs_in_a_thread(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)
        main = threading.get_ident()

        @worker.handler("t")
        def handle(job: Job, args: BuildArgs) -> dict[str, Any]:
            return {"other_thread": threading.get_ident() != main, "name": args.name}

        async with running(worker):
            job_id = await q.enqueue("t", {"name": "n"})
            status = await wait_done(q, job_id)
        assert status.result == {"other_thread": True, "name": "n"}


async def test_dependency_results_reach_the_dependent(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)

        @worker.handler("leaf")
        async def leaf(job: Job) -> int:
            return int(job.args)

        @worker.handler("sum")
        async def total(job: Job) -> Any:
            return sum(await job.dependency_results())

        async with running(worker):
            a = await q.enqueue("leaf", 2)
            b = await q.enqueue("leaf", 5)
            root = await q.enqueue("sum", None, [a, b])
            status = await wait_done(q, root)
        assert status.result == 7


async def test_bad_registrations_raise(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)
        with pytest.raises(TypeError):
            worker.add_handler("t", lambda: None)
        with pytest.raises(TypeError):
            worker.add_handler("t", lambda job, args, extra: None)
        with pytest.raises(ValueError, match="job_type must not be empty"):
            worker.add_handler("", lambda job: None)
        worker.add_handler("t", lambda job: None)
        with pytest.raises(ValueError, match="already registered"):
            worker.add_handler("t", lambda job: None)
        with pytest.raises(ValueError, match="concurrency must be >= 1"):
            Worker(q, concurrency=0)
        with pytest.raises(TypeError):
            Worker(q, channels="c")
        with pytest.raises(RuntimeError):
            await Worker(q).run()  # no handlers


# ------------------------------------------------------------------ concurrency


async def test_concurrency_limit_is_respected(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q, concurrency=3)
        now = 0
        most = 0

        @worker.handler("t")
        async def handle(job: Job) -> None:
            nonlocal now, most
            now += 1
            most = max(most, now)
            await trio.sleep(10)
            now -= 1

        async with running(worker):
            ids = [await q.enqueue("t", i) for i in range(10)]
            await trio.sleep(1)
            stats = await q.stats()
            assert stats.running == 3
            assert worker.running_jobs
            assert len(worker.running_jobs) == 3
            for job_id in ids:
                await wait_done(q, job_id)
        assert most == 3


async def test_channels_are_respected(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q, channels=["a", "b"])
        ran: list[str] = []

        @worker.handler("t")
        async def handle(job: Job) -> None:
            ran.append(job.channel)

        async with running(worker):
            other = await q.enqueue("t", None, (), "c")
            ids = [await q.enqueue("t", None, (), ch) for ch in ("a", "b")]
            for job_id in ids:
                await wait_done(q, job_id)
            await trio.sleep(10)
            assert (await q.job_status(other)).state is JobState.PENDING
        assert sorted(ran) == ["a", "b"]


async def test_any_channel(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q, channels=None)

        @worker.handler("t")
        async def handle(job: Job) -> str:
            return job.channel

        async with running(worker):
            job_id = await q.enqueue("t", None, (), "anywhere")
            assert (await wait_done(q, job_id)).result == "anywhere"


# ------------------------------------------------------------------ heartbeats, cancel


async def test_heartbeats_keep_a_long_job_alive_under_the_reaper(autojump_clock: MockClock) -> None:
    async with actorq.open_queue(maintenance=actorq.Maintenance()) as q:
        worker = Worker(q)

        @worker.handler("t")
        async def handle(job: Job) -> str:
            await trio.sleep(3600)  # much longer than the 120 s job timeout
            return "done"

        async with running(worker):
            job_id = await q.enqueue("t")
            await trio.sleep(3601)
            status = await q.job_status(job_id)
        assert (status.result, status.retries) == ("done", 0)


async def test_cancellation_reaches_the_handler(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q, heartbeat_interval=5)
        events: list[tuple[str, float]] = []

        @worker.handler("t")
        async def handle(job: Job) -> str:
            if job.args == "quick":
                return "quick"
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                events.append(("cancelled", trio.current_time()))
                raise
            return "unreachable"

        async with running(worker):
            job_id = await q.enqueue("t", "slow")
            await trio.sleep(12)
            canceled_at = trio.current_time()
            await q.cancel_job(job_id)
            await trio.sleep(6)
            assert [e for e, _ in events] == ["cancelled"]
            assert events[0][1] - canceled_at <= 5  # learnt at the next heartbeat
            assert worker.running_jobs == []
            # the worker goes on with other jobs
            quick = await q.enqueue("t", "quick")
            assert (await wait_done(q, quick)).result == "quick"
        assert (await q.job_status(job_id)).state is JobState.CANCELED


# ------------------------------------------------------------------ lifecycle


async def test_registers_reports_status_and_deregisters(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q, channels=["c1"], status_interval=10, arch="riscv64")
        worker.add_handler("t", lambda job: None)
        async with running(worker):
            (info,) = await q.workers()
            assert (info.id, info.channel, info.arch) == (worker.id, "c1", "riscv64")
            await trio.sleep(100)
            assert await q.workers(older_than=11) == []  # kept fresh
        assert await q.workers() == []
        assert worker.id is None


async def test_worker_removed_from_the_queue_registers_again(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)

        @worker.handler("t")
        async def handle(job: Job) -> str:
            return "ok"

        async with running(worker):
            first = worker.id
            assert first is not None
            await q.delete_worker(first)
            job_id = await q.enqueue("t")
            assert (await wait_done(q, job_id)).result == "ok"
            assert worker.id not in (None, first)
            assert [w.id for w in await q.workers()] == [worker.id]


async def test_graceful_shutdown_requeues_unfinished_jobs_after_grace(
    autojump_clock: MockClock,
) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q, concurrency=2)
        cancelled: list[Any] = []

        @worker.handler("t")
        async def handle(job: Job) -> str:
            try:
                await trio.sleep(job.args)
            except trio.Cancelled:
                cancelled.append(job.args)
                raise
            return f"slept {job.args}"

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            quick = await q.enqueue("t", 5)
            slow = await q.enqueue("t", 1000)
            waiting = await q.enqueue("t", 1)  # no free slot: never dequeued
            await trio.sleep(1)
            start = trio.current_time()
            worker.shutdown(grace=30)
            # run() returns on its own, once the grace period is over
        assert trio.current_time() - start == pytest.approx(30)

        assert (await q.job_status(quick)).result == "slept 5"
        slow_status = await q.job_status(slow)
        assert (slow_status.state, slow_status.retries) == (JobState.PENDING, 1)
        assert cancelled == [1000]
        assert (await q.job_status(waiting)).state is JobState.PENDING
        assert await q.workers() == []  # deregistered
        # the requeued job is ready for the next worker
        assert (await q.dequeue(["t"], timeout=0)).id in (slow, waiting)


async def test_shutdown_returns_as_soon_as_handlers_finish(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)

        @worker.handler("t")
        async def handle(job: Job) -> None:
            await trio.sleep(3)

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            job_id = await q.enqueue("t")
            await trio.sleep(1)
            start = trio.current_time()
            worker.shutdown(grace=60)
        assert trio.current_time() - start == pytest.approx(2)
        assert (await q.job_status(job_id)).state is JobState.FINISHED


async def test_shutdown_past_max_retries_finishes_with_an_error(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q, max_retries=0)

        @worker.handler("t")
        async def handle(job: Job) -> None:
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            job_id = await q.enqueue("t")
            await trio.sleep(1)
            worker.shutdown(grace=0)
        status = await q.job_status(job_id)
        assert status.state is JobState.FAILED  # out of retries: a failure
        assert status.result["error"]["type"] == "WorkerShutdown"


async def test_sigterm_shuts_down_gracefully(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q, grace=10)

        @worker.handler("t")
        async def handle(job: Job) -> str:
            await trio.sleep(job.args)
            return "done"

        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: worker.run(handle_signals=True, task_status=task_status)
            )
            short = await q.enqueue("t", 5)
            long = await q.enqueue("t", 500)
            await trio.sleep(1)
            signal.raise_signal(signal.SIGTERM)
        assert (await q.job_status(short)).result == "done"
        assert (await q.job_status(long)).state is JobState.PENDING
        assert await q.workers() == []


async def test_second_signal_cancels_at_once(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q, grace=1000)

        @worker.handler("t")
        async def handle(job: Job) -> None:
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: worker.run(handle_signals=True, task_status=task_status)
            )
            job_id = await q.enqueue("t")
            await trio.sleep(1)
            start = trio.current_time()
            signal.raise_signal(signal.SIGINT)
            await trio.sleep(1)
            signal.raise_signal(signal.SIGINT)
        assert trio.current_time() - start < 5
        assert (await q.job_status(job_id)).state is JobState.PENDING


async def test_cancelling_run_requeues_jobs_and_deregisters(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)

        @worker.handler("t")
        async def handle(job: Job) -> None:
            await trio.sleep_forever()

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                job_id = await q.enqueue("t")
                await trio.sleep(1)
                scope.cancel()
        status = await q.job_status(job_id)
        assert (status.state, status.retries) == (JobState.PENDING, 1)
        assert await q.workers() == []


async def test_closed_queue_stops_the_worker_with_queue_closed_error(
    autojump_clock: MockClock,
) -> None:
    errors: list[BaseException] = []

    async def run(worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            await worker.run(task_status=task_status)
        except BaseException as exc:  # the very error, not wrapped in a group
            errors.append(exc)

    async with trio.open_nursery() as nursery, actorq.open_queue() as q:
        worker = Worker(q)
        worker.add_handler("t", lambda job: None)
        await nursery.start(run, worker)
    assert [type(e) for e in errors] == [actorq.QueueClosedError]
    assert worker.id is None


async def test_a_worker_runs_once(autojump_clock: MockClock) -> None:
    async with actorq.open_queue() as q:
        worker = Worker(q)
        worker.add_handler("t", lambda job: None)
        worker.shutdown()
        await worker.run()  # shut down before it started: returns at once
        with pytest.raises(RuntimeError):
            await worker.run()
        with pytest.raises(RuntimeError):
            worker.add_handler("u", lambda job: None)


# ------------------------------------------------------------------ remote


async def test_the_same_worker_runs_against_a_remote_queue(autojump_clock: MockClock) -> None:
    from _kinds_remote import remote_pair

    async with remote_pair() as (remote, local, _):
        worker = Worker(remote, heartbeat_interval=5)

        @worker.handler("build")
        async def build(job: Job, args: BuildArgs) -> BuildResult:
            if args.count < 0:
                raise ValueError("negative count")
            await trio.sleep(args.count)
            return BuildResult(artifact=args.name)

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            ok = await remote.enqueue("build", BuildArgs("img", 3))
            bad = await remote.enqueue("build", BuildArgs("img", -1))
            canceled = await remote.enqueue("build", BuildArgs("img", 10_000))
            interrupted = await remote.enqueue("build", BuildArgs("img", 10_000))
            assert (await wait_done(remote, ok)).result == {"artifact": "img"}
            assert (await wait_done(remote, bad)).result["error"]["type"] == "ValueError"
            await remote.cancel_job(canceled)
            await trio.sleep(6)
            assert len(worker.running_jobs) == 1  # the canceled handler stopped
            worker.shutdown(grace=1)
        status = await local.job_status(interrupted)
        assert (status.state, status.retries) == (JobState.PENDING, 1)
        assert await local.workers() == []


async def test_a_job_pushed_after_shutdown_is_not_started(autojump_clock: MockClock) -> None:
    # The handler asks the worker to stop, then enqueues a job in the same
    # breath: the push may land before the worker's stream has closed, and
    # the job must not start; it is pending again once the worker is gone.
    async with actorq.open_queue() as q:
        worker = Worker(q, concurrency=4)
        started: list[str] = []
        later: list[uuid.UUID] = []

        @worker.handler("t")
        async def handle(job: Job) -> None:
            started.append(job.args)
            if job.args == "first":
                worker.shutdown(grace=60)
                later.append(await q.enqueue("t", "second"))

        first = await q.enqueue("t", "first")
        with trio.fail_after(100):
            await worker.run()
        assert started == ["first"]
        assert (await q.job_status(first)).state is JobState.FINISHED
        assert (await q.job_status(later[0])).state is JobState.PENDING


class _ProtocolOnlyStream:
    """A :class:`JobStream` with the protocol's members only, as another
    ``StreamingQueue`` implementation's streams would be (no ``consume()``)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def receive(self) -> actorq.DequeuedJob:
        job: actorq.DequeuedJob = await self._inner.receive()
        return job

    def receive_nowait(self) -> actorq.DequeuedJob:
        job: actorq.DequeuedJob = self._inner.receive_nowait()
        return job

    def finish(self, job: actorq.DequeuedJob, result: Any = None, *, failed: bool = False) -> None:
        self._inner.finish(job, result, failed=failed)

    def give_credit(self, slots: int = 1) -> None:
        self._inner.give_credit(slots)

    async def wait_settled(self) -> None:
        await self._inner.wait_settled()

    @property
    def credit(self) -> int:
        credit: int = self._inner.credit
        return credit


class _OtherStreamingQueue:
    """A queue whose streams offer only the ``JobStream`` protocol."""

    def __init__(self, inner: actorq.LocalQueue) -> None:
        self._inner = inner
        self.streams_opened = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @asynccontextmanager
    async def open_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[_ProtocolOnlyStream]:
        self.streams_opened += 1
        async with self._inner.open_stream(*args, **kwargs) as stream:
            yield _ProtocolOnlyStream(stream)


async def test_a_stream_without_consume_is_received_from(
    autojump_clock: MockClock, worker_mode: str
) -> None:
    # Any StreamingQueue will do: the worker receives from a stream that does
    # not offer consume(), a job at a time.
    async with actorq.open_queue() as q:
        other = _OtherStreamingQueue(q)
        worker = Worker(other, concurrency=2)
        done: list[int] = []

        @worker.handler("t")
        async def handle(job: Job) -> int:
            done.append(job.args)
            if len(done) == 5:
                worker.shutdown()
            return int(job.args) * 2

        ids = [await q.enqueue("t", n) for n in range(5)]
        with trio.fail_after(100):
            await worker.run()
        assert sorted(done) == list(range(5))
        assert [(await q.job_status(i)).result for i in ids] == [0, 2, 4, 6, 8]
        assert other.streams_opened == (1 if worker_mode == "stream" else 0)
