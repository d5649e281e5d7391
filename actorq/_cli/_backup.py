"""``actorq backup``: an online, consistent copy of a SQLite store.

A queue holds its SQLite file's exclusive lock while it runs, so no other
process can read the file: the copy is made by the process that has it open.
``actorq serve`` on a SQLite store listens on a Unix socket beside the file
(``<file>.backup.sock``, mode 0600, so only the server's user and root can
ask), and ``actorq backup SRC DEST`` asks the server there to copy the store
to ``DEST`` through :meth:`actorq.SqliteStore.backup` (SQLite's backup API on
the store's own connection, between two commits). When nothing serves
``SRC``, the command copies the file itself.

The socket speaks one JSON line each way: ``{"dest": PATH, "overwrite": BOOL}``,
answered by ``{"path", "jobs", "workers", "size"}`` or ``{"error": SENTENCE}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import trio

    from .._stores._sqlite import SqliteStore
    from .._stores._sqlite_backup import BackupResult

__all__ = ["backup_command", "control_path", "request_backup", "serve_backups", "sqlite_store"]

log = logging.getLogger("actorq.cli")

#: the largest request line the server reads
MAX_REQUEST = 64 * 1024
#: how long a client gets to send its request line
REQUEST_TIMEOUT = 10.0


class _BackupUsageError(Exception):
    """SRC names no SQLite store."""


def control_path(db_path: str) -> str:
    """Where the server of the SQLite file ``db_path`` takes backup requests."""
    return f"{db_path}.backup.sock"


def sqlite_store(store: str) -> SqliteStore | None:
    """The :class:`SqliteStore` for a ``sqlite:`` store URL; ``None`` for other kinds."""
    scheme, sep, _ = store.partition(":")
    if not sep or scheme.lower() != "sqlite":
        return None
    from .._stores._sqlite import store_from_url

    return store_from_url(store)


def _source_path(source: str) -> str:
    """The database file named by SRC: a ``sqlite:`` URL or a plain path."""
    scheme, sep, _ = source.partition(":")
    if sep and scheme.lower() == "sqlite":
        try:
            found = sqlite_store(source)
        except ValueError as exc:
            raise _BackupUsageError(str(exc)) from None
        assert found is not None
        return found.path
    if sep and len(scheme) > 1 and "/" not in scheme:
        raise _BackupUsageError(
            f"backup copies SQLite stores only, not {scheme}: stores"
            " (for PostgreSQL use pg_dump or a standby)"
        )
    return os.path.abspath(source)


# ---------------------------------------------------------------- the server side


async def serve_backups(store: SqliteStore, *, task_status: trio.TaskStatus[str | None]) -> None:
    """Take backup requests for ``store`` on its control socket until cancelled.

    Start it once the queue has opened the store (its lock is held then, so a
    socket file left by a crashed server can be replaced). Reports the socket's
    path as started, or ``None`` (and logs why) when it cannot listen there;
    the queue serves on either way.
    """
    import socket

    import trio

    path = control_path(store.path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # the store's lock is held: no other server of this file is listening
        _remove(path)
        await sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(8)
    except OSError as exc:
        sock.close()
        log.warning("no backups through %s: %s", path, exc.strerror or exc)
        task_status.started(None)
        return
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await _answer(store, stream)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; the copy, if made, stands
        finally:
            await trio.aclose_forcefully(stream)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, [listener])
            task_status.started(path)
    finally:
        _remove(path)


def _remove(path: str) -> None:
    # a socket file: removing it costs no I/O worth a thread
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _answer(store: SqliteStore, stream: trio.SocketStream) -> None:
    import trio

    from .._stores._sqlite_backup import BackupError

    request = b""
    with trio.move_on_after(REQUEST_TIMEOUT):
        while not request.endswith(b"\n") and len(request) <= MAX_REQUEST:
            chunk = await stream.receive_some(MAX_REQUEST)
            if not chunk:
                break
            request += chunk
    reply: dict[str, object]
    try:
        message = json.loads(request)
        dest, overwrite = message["dest"], message.get("overwrite", False)
        if not isinstance(dest, str) or not os.path.isabs(dest) or not isinstance(overwrite, bool):
            raise TypeError  # noqa: TRY301 (one reply for every malformed request)
    except (ValueError, KeyError, TypeError):
        reply = {"error": "a backup request is one JSON line with an absolute dest path"}
    else:
        try:
            done = await store.backup(dest, overwrite=overwrite)
        except BackupError as exc:
            reply = {"error": str(exc)}
        else:
            log.info("backed up %s to %s (%d jobs)", store.path, done.path, done.jobs)
            reply = {"path": done.path, "jobs": done.jobs, "workers": done.workers}
            reply["size"] = done.size
    await stream.send_all(json.dumps(reply).encode() + b"\n")


# ---------------------------------------------------------------- the client side


def request_backup(db_path: str, dest: str, *, overwrite: bool) -> BackupResult | None:
    """Ask the server of ``db_path`` for a copy at ``dest``; ``None`` if none listens.

    Blocking; waits as long as the copy takes. Raises ``BackupError`` with the
    server's sentence when it could not make the copy.
    """
    import socket

    from .._stores._sqlite_backup import BackupError, BackupResult

    path = control_path(db_path)
    if not os.path.exists(path):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return None  # left by a server that is gone
        request = {"dest": os.path.abspath(dest), "overwrite": overwrite}
        sock.sendall(json.dumps(request).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise BackupError(f"the server of {db_path} closed the backup request")
            answer += chunk
    reply = json.loads(answer)
    if "error" in reply:
        raise BackupError(str(reply["error"]))
    return BackupResult(
        path=reply["path"], jobs=reply["jobs"], workers=reply["workers"], size=reply["size"]
    )


@click.command("backup")
@click.argument("source", metavar="SRC")
@click.argument("dest", metavar="DEST")
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
def backup_command(source: str, dest: str, force: bool) -> None:
    """Copy the SQLite store SRC (a path or sqlite:/// URL) to the file DEST.

    Safe while `actorq serve` runs on SRC: the server makes the copy, one
    consistent snapshot through SQLite's backup API holding every job
    acknowledged before it began. Otherwise the file is copied directly.
    The copy is checked, then renamed into place.
    """
    from .._stores._sqlite_backup import BackupError, backup_file
    from ._main import _fail

    try:
        db_path = _source_path(source)
        done = request_backup(db_path, dest, overwrite=force)
        via = "the server"
        if done is None:
            done = backup_file(db_path, dest, overwrite=force)
            via = "the file"
    except (_BackupUsageError, BackupError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot back up {source}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        # a copy the server goes on making still lands, whole, at DEST
        _fail("interrupted")
    click.echo(
        f"backed up {done.jobs} jobs and {done.workers} workers to {done.path}"
        f" ({done.size} bytes, through {via})"
    )
