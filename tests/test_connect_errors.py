"""An exception raised inside ``async with actorq.connect(...)`` reaches the caller."""

from __future__ import annotations

import uuid

import pytest
import trio

import actorq


@pytest.mark.parametrize("make_error", [lambda: ValueError("x"), lambda: actorq.CanceledError()])
async def test_errors_in_the_body_propagate(make_error: object) -> None:
    async with actorq.open_queue() as queue, trio.open_nursery() as nursery:
        server = await nursery.start(actorq.serve, queue, "127.0.0.1", 0)
        error = make_error()  # type: ignore[operator]
        with pytest.raises(type(error)):
            async with actorq.connect(f"ws://127.0.0.1:{server.port}", heartbeat_interval=None):
                raise error
        with pytest.raises(actorq.NotExistError):
            async with actorq.connect(
                f"ws://127.0.0.1:{server.port}", heartbeat_interval=None
            ) as remote:
                await remote.job_status(uuid.uuid4())
        server.close()
