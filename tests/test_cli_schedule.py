"""``actorq schedule add|list|remove`` against a store."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import pytest
import trio
from click.testing import CliRunner, Result

import actorq
from actorq._cli._main import main

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def run(store: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--store", store, *args])


def test_add_list_remove(store: str) -> None:
    added = run(
        store,
        "schedule",
        "add",
        "nightly",
        "0 3 * * *",
        "report",
        "--args",
        '{"full": true}',
        "--channel",
        "team-a",
        "--timezone",
        "Europe/Berlin",
        "--catch-up",
        "all",
    )
    assert added.exit_code == 0, added.output
    # 03:00 in Berlin is 01:00 or 02:00 UTC
    assert added.output.startswith("scheduled nightly: next slot ")
    assert added.output.rstrip().endswith(("01:00:00 UTC", "02:00:00 UTC"))
    # the options may follow the subcommand's name, as for every command
    listed = CliRunner().invoke(main, ["schedule", "list", "--json", "--store", store])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)
    assert {k: row[k] for k in ("name", "cron", "timezone", "job_type", "args", "channel")} == {
        "name": "nightly",
        "cron": "0 3 * * *",
        "timezone": "Europe/Berlin",
        "job_type": "report",
        "args": {"full": True},
        "channel": "team-a",
    }
    assert (row["catch_up"], row["last_slot"]) == ("all", None)
    table = run(store, "schedule", "list")
    assert table.output.splitlines()[0].split() == [
        "NAME", "CRON", "TIMEZONE", "TYPE", "CHANNEL", "CATCH-UP", "LAST", "SLOT", "NEXT", "SLOT"
    ]  # fmt: skip
    assert table.output.splitlines()[1].startswith("nightly  0 3 * * *  Europe/Berlin  report")
    removed = run(store, "schedule", "remove", "nightly")
    assert (removed.exit_code, removed.output) == (0, "removed nightly\n")
    assert json.loads(run(store, "schedule", "list", "--json").output) == []


def test_the_schedule_is_kept_in_the_store(store: str) -> None:
    assert run(store, "schedule", "add", "s", "*/5 * * * *", "t").exit_code == 0

    async def read() -> list[actorq.ScheduleInfo]:
        async with actorq.open_queue(store, maintenance=None) as queue:
            return await queue.schedules()

    [info] = trio.run(read)
    assert (info.name, info.cron, info.job_type, info.args) == ("s", "*/5 * * * *", "t", None)
    assert info.next_slot.minute % 5 == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "s", "61 * * * *", "t"], "cron '61 * * * *' is not a valid cron expression"),
        (["add", "s", "* * * * *", "t", "--timezone", "Mars/X"], "not a known IANA time zone"),
        (["add", "s", "* * * * *", "t", "--args", "{"], "--args is not valid JSON"),
        (["remove", "nope"], "no schedule is named 'nope'"),
    ],
)
def test_errors_are_one_sentence(store: str, args: list[str], message: str) -> None:
    result = run(store, "schedule", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert json.loads(run(store, "schedule", "list", "--json").output) == []


async def test_a_tenant_manages_its_schedules_through_a_server(store: str, tmp_path: Path) -> None:
    from test_cli import start_serve, stop

    tenants = tmp_path / "tenants.json"
    tenants.write_text(json.dumps({"token-a": ["a"]}))
    proc, url, _ = await start_serve(store, "--auth-token", "admin", "--tenants", str(tenants))

    async def cli(token: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "actorq", "schedule", *args, "--url", url]
        return await trio.run_process(
            [*command, "--token", token], capture_stdout=True, capture_stderr=True, check=False
        )

    try:
        added = await cli("token-a", "add", "mine", "0 * * * *", "t", "--channel", "a")
        assert added.returncode == 0, added.stderr
        refused = await cli("token-a", "add", "theirs", "0 * * * *", "t", "--channel", "b")
        assert refused.returncode == 1
        assert b"not open to this token" in refused.stderr
        assert (await cli("admin", "add", "admins", "0 * * * *", "t")).returncode == 0
        listed = await cli("token-a", "list", "--json")
        assert [row["name"] for row in json.loads(listed.stdout)] == ["mine"]
        gone = await cli("token-a", "remove", "admins")
        assert (gone.returncode, gone.stderr) == (1, b"actorq: no schedule is named 'admins'\n")
        listed = await cli("admin", "list", "--json")
        assert [row["name"] for row in json.loads(listed.stdout)] == ["admins", "mine"]
    finally:
        await stop(proc)
