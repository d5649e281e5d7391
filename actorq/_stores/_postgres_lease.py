"""Client-side deadlines for the PostgreSQL store: the lease and the watchdog.

A psycopg call on a sync connection blocks its thread until the server
answers, and TCP need not ever tell it that the server is gone: a partition
that keeps the connection up and passes nothing (a userspace proxy, some
network faults) leaves it waiting forever, with the kernel's keepalives and
``tcp_user_timeout`` content, since every segment is acknowledged. So the
store puts its own deadline on every call that matters, in real time:

* :class:`Link` is one connection together with a duplicate of its socket.
  :meth:`Link.cut` shuts that socket down from any thread; the call blocked on
  it returns at once with a broken connection (``OperationalError``). The
  duplicate keeps the socket itself alive until :meth:`Link.close`, so a cut
  never hits a descriptor number that libpq closed and the kernel reused.
* :class:`Watchdog` is one thread that keeps the deadlines: the **lease**
  (the last time the leader confirmed its lock, plus ``lease_timeout``) and
  any number of per-call deadlines (:meth:`Watchdog.deadline`). When the
  lease runs out it calls its ``on_expired`` callback once (the store steps
  down there); when a call's deadline passes it cuts that call's link.

Real time, never trio's clock: tests drive trio's clock by hand, and a lease
is about what the database server sees.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import psycopg

__all__ = ["Link", "Watchdog"]

log = logging.getLogger("actorq.postgres")


class Link:
    """A psycopg connection and a duplicate of its socket, to cut it from another thread."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self._sock: socket.socket | None = socket.socket(fileno=os.dup(conn.fileno()))
        self.cut_reason: str | None = None

    def cut(self, reason: str) -> None:
        """Shut the connection's socket down: a call blocked on it fails at once. Idempotent."""
        with self._lock:
            if self.cut_reason is None:
                self.cut_reason = reason
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the connection, then the duplicate socket. Idempotent; never blocks."""
        self.conn.close()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class Watchdog:
    """One thread keeping a lease and per-call deadlines, in ``time.monotonic()`` seconds.

    The lease starts unset (:meth:`renew` sets it): nothing expires before.
    ``on_expired(reason)`` runs on the watchdog's thread, once, when the lease
    runs out; it must not block for long. Per-call deadlines cut their link
    when they pass, whatever the lease.
    """

    def __init__(self, name: str, lease_timeout: float, on_expired: Callable[[str], None]) -> None:
        self.lease_timeout = lease_timeout
        self._on_expired = on_expired
        self._changed = threading.Condition()
        self._confirmed: float | None = None  # when the last confirmation was asked for
        self._deadlines: dict[int, tuple[float, Link, str]] = {}
        self._ids = itertools.count()
        self._stopped = False
        self.expired = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def renew(self, asked_at: float) -> None:
        """The lock was confirmed by a probe sent at ``asked_at``: the lease runs from there."""
        with self._changed:
            if self._confirmed is None or asked_at > self._confirmed:
                self._confirmed = asked_at
            self._changed.notify_all()

    def remaining(self) -> float | None:
        """Seconds left on the lease (0 once expired), or ``None`` while it is unset."""
        with self._changed:
            if self.expired:
                return 0.0
            if self._confirmed is None:
                return None
            return max(0.0, self._confirmed + self.lease_timeout - time.monotonic())

    @contextlib.contextmanager
    def deadline(self, link: Link, seconds: float, reason: str) -> Iterator[None]:
        """Cut ``link`` if the block is still running after ``seconds``."""
        with self._changed:
            key = next(self._ids)
            self._deadlines[key] = (time.monotonic() + seconds, link, reason)
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._deadlines.pop(key, None)

    def stop(self) -> None:
        """End the thread (and wait for it). Idempotent."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            expire = False
            with self._changed:
                if self._stopped:
                    return
                now = time.monotonic()
                wake = now + 3600.0
                if self._confirmed is not None and not self.expired:
                    lease_end = self._confirmed + self.lease_timeout
                    if now >= lease_end:
                        self.expired = expire = True
                    wake = min(wake, lease_end)
                for key, (when, link, reason) in list(self._deadlines.items()):
                    if now >= when:
                        del self._deadlines[key]
                        log.error("%s", reason)
                        link.cut(reason)
                    else:
                        wake = min(wake, when)
                if not expire:
                    self._changed.wait(max(0.0, wake - now))
                    continue
            waited = now - (self._confirmed or now)
            self._on_expired(
                f"the leadership lock was not confirmed for {waited:.1f} s "
                f"(lease_timeout {self.lease_timeout:g} s)"
            )
