"""The README's demo runs, end to end, and every job in it finishes."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from typing import TYPE_CHECKING

import demo

if TYPE_CHECKING:
    import pytest
    import trio.testing


async def test_demo_finishes_every_job(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    await demo.main("memory://")
    out = capsys.readouterr().out
    assert "enqueued 8 jobs" in out
    assert out.count("finished publish") == 2
    assert "queue: 8 jobs, 8 finished, 0 pending" in out
