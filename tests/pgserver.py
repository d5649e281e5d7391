"""A throwaway PostgreSQL cluster for tests and benchmarks.

:class:`PgServer` runs ``initdb`` and ``pg_ctl`` in a fresh temporary
directory, listening on 127.0.0.1 at a free port and on a unix socket in that
directory, and removes everything on :meth:`PgServer.stop`. Run as root, it
runs the server binaries as the ``postgres`` user (they refuse root).

:func:`shared_server` is the one cluster of a test session: started on first
use, stopped at exit. :func:`require_server` is what tests call: it skips the
test with a clear reason when no PostgreSQL server binaries are installed,
except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

__all__ = ["PgServer", "find_bindir", "require_server", "shared_server"]

_BINARIES = ("initdb", "pg_ctl", "postgres")


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or ``None``.

    ``$PG_BINDIR`` wins, then Debian's versioned directories (newest first,
    they are not on PATH), then PATH.
    """
    candidates: list[str] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates.extend(reversed(versions))
    candidates.extend(glob.glob("/usr/pgsql-*/bin"))
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(str(Path(found).resolve().parent))
    for candidate in candidates:
        path = Path(candidate)
        if all((path / name).is_file() for name in _BINARIES):
            return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgServer:
    """One PostgreSQL cluster in a temporary directory, for as long as it is needed.

    ``fsync=False`` (the default, for tests) lets the server skip flushing
    to disk: a crash of *clients* loses nothing either way, only a crash of
    the machine would. Benchmarks pass ``fsync=True`` to measure real commits.
    """

    def __init__(self, *, fsync: bool = False, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.bindir = found
        self.fsync = fsync
        self.port = 0
        self.dir: Path | None = None
        self._user: str | None = "postgres" if os.geteuid() == 0 else None
        self._reaper: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    def url(self, dbname: str = "postgres") -> str:
        """A URL for ``dbname`` over TCP on 127.0.0.1, as the ``postgres`` superuser."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")

    def start(self) -> None:
        """initdb, then start the server; raise RuntimeError with its log on failure."""
        self.dir = Path(tempfile.mkdtemp(prefix="actorq-pg-"))
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.dir, 0o700)
        done = self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        if done.returncode != 0:
            self._remove()
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.dir}",
            "-c max_connections=200",
            f"-c fsync={'on' if self.fsync else 'off'}",
            "-c full_page_writes=off" if not self.fsync else "",
        ]
        for _ in range(3):  # the free port may be taken between probe and bind
            self.port = _free_port()
            done = self._run(
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-l",
                str(self.dir / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                " ".join([f"-p {self.port}", *options]),
                "start",
            )
            if done.returncode == 0:
                self._start_reaper()
                return
        log = (self.dir / "server.log").read_text(errors="replace")
        self._remove()
        raise RuntimeError(f"pg_ctl start failed:\n{done.stdout}\n{done.stderr}\n{log}")

    def _start_reaper(self) -> None:
        # pg_ctl daemonizes the server, so it outlives a test run that is
        # killed (a timeout, SIGKILL) before its teardown. A detached helper
        # waits for EOF on a pipe that only this process holds; the kernel
        # closes it when this process ends, however it ends, and the helper
        # then stops the server and removes its directory.
        assert self.dir is not None
        stop = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "stop"]
        if self._user is not None:
            stop = ["runuser", "-u", self._user, "--", *stop]
        code = (
            "import shutil, subprocess, sys\n"
            "sys.stdin.buffer.read()\n"
            f"subprocess.run({stop!r}, capture_output=True, cwd='/')\n"
            f"shutil.rmtree({str(self.dir)!r}, ignore_errors=True)\n"
        )
        self._reaper = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not killed along with the test run's process group
        )

    def restart(self) -> None:
        """Restart the server (fast shutdown: sessions are ended), on the same port."""
        assert self.dir is not None
        done = self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.dir / "server.log"),
            "-m", "fast", "-w", "-t", "60", "restart",
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed:\n{done.stdout}\n{done.stderr}")

    def stop(self) -> None:
        """Stop the server at once and delete its directory. Idempotent."""
        if self.dir is None:
            return
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        self._remove()
        if self._reaper is not None:
            assert self._reaper.stdin is not None
            self._reaper.stdin.close()  # nothing left to do for it
            self._reaper.wait()
            self._reaper = None

    def _remove(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def execute(self, statement: str, dbname: str = "postgres") -> None:
        """Run one statement as the superuser, outside any transaction."""
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            conn.execute(statement.encode())

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (from template0's copy, template1) and return its URL."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_shared: PgServer | None = None
_shared_error: str | None = None
_shared_lock = threading.Lock()


def shared_server() -> PgServer:
    """The session's cluster, started on first call (thread-safe) and stopped at exit.

    Raises FileNotFoundError without server binaries, RuntimeError if the
    cluster fails to start (and keeps failing fast after that).
    """
    global _shared, _shared_error
    with _shared_lock:
        if _shared_error is not None:
            raise RuntimeError(_shared_error)
        if _shared is None:
            server = PgServer()
            try:
                server.start()
            except RuntimeError as exc:
                _shared_error = str(exc)
                raise
            atexit.register(server.stop)
            _shared = server
        return _shared


def stop_shared_server() -> None:
    """Stop the session's cluster now (a session fixture's teardown)."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
            _shared = None


def missing_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or ``None`` if they can."""
    if find_bindir() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
            "/usr/lib/postgresql/*/bin, $PG_BINDIR or PATH; install postgresql "
            "(apt-get install postgresql-15)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no 'postgres' user to run the server as"
    return None


def require_server() -> PgServer:
    """The shared cluster for a test; skip the test when PostgreSQL is missing.

    Under ``CI=true`` a missing PostgreSQL fails the test instead: CI must
    install it (see .ci/run).
    """
    import pytest

    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    with contextlib.suppress(FileNotFoundError):
        return shared_server()
    pytest.skip("PostgreSQL server binaries disappeared")
    raise AssertionError("unreachable")
