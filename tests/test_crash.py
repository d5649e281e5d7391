"""Kill -9 a process serving a queue on SQLite; every acknowledged operation survives.

A child process (``_crash_child.py``) enqueues, dequeues and finishes jobs as
fast as it can and prints each operation once the queue acknowledged it. The
parent kills it with SIGKILL after a random moment, reopens the file and
checks that everything printed is there, and that nothing is half applied.
The same file goes through several kill points, so recovery also runs on a
file that was itself recovered. The only test here that uses real time; it
asserts nothing about durations.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import pytest
from _crash_child import kill_and_check

if TYPE_CHECKING:
    from pathlib import Path

KILLS = 4

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def test_sigkill_loses_no_acknowledged_operation(tmp_path: Path) -> None:
    kill_and_check(f"sqlite:///{tmp_path / 'crash.db'}", KILLS)
