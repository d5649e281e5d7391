"""A TCP proxy on loopback that can pass, reset or blackhole its connections.

The fault injector of the PostgreSQL high-availability tests: put it between
a queue server and PostgreSQL (``FaultProxy(pg.port)``, then point the store
at ``proxy.port``) and change what the network does while the queue runs:

* :meth:`FaultProxy.passing`: bytes flow both ways (the start, and a heal:
  what was held during a blackhole flows on, as TCP would deliver it after a
  partition heals);
* :meth:`FaultProxy.reset`: every connection is reset (RST), and so is every
  new one until the next mode change;
* :meth:`FaultProxy.blackhole`: connections stay up and new ones are
  accepted, but nothing passes either way. The proxy's kernel acknowledges
  every segment, so neither side's TCP notices anything: keepalives and
  ``tcp_user_timeout`` stay content, exactly as behind some userspace proxies
  and network faults;
* :meth:`FaultProxy.cut_mid_commit`: the next large chunk towards the
  server (a commit's pipeline) is passed only in part, then everything is
  blackholed: the server holds a transaction waiting for the rest of a
  message, for which PostgreSQL has no timeout.

It runs in a thread of its own, with its own trio run, so that tests in a
plain thread, in a trio run, and server processes can all use it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Any

import trio

__all__ = ["FaultProxy"]

#: The size from which a chunk towards the server counts as a commit.
COMMIT_SIZE = 200


class FaultProxy:
    """Forward ``127.0.0.1:port`` (this proxy's, see :attr:`port`) to ``127.0.0.1:target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.mode = "pass"
        self.connections = 0  # accepted so far
        self.cuts = 0  # commits cut in the middle so far
        self._token: trio.lowlevel.TrioToken | None = None
        self._flowing: trio.Event | None = None
        self._cut_armed = False
        self._open: set[trio.SocketStream] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, daemon=True)
        self._stop: trio.CancelScope | None = None

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._shutdown)
        self._thread.join(10)

    # ------------------------------------------------------------ control

    def passing(self) -> None:
        """Let bytes flow both ways (again)."""
        self._call(self._set_mode, "pass")

    def blackhole(self) -> None:
        """Keep every connection up but pass nothing, until the next mode change."""
        self._call(self._set_mode, "blackhole")

    def reset(self) -> None:
        """Reset every connection, and every new one until the next mode change."""
        self._call(self._set_mode, "reset")

    def cut_mid_commit(self) -> None:
        """Pass half of the next commit-sized chunk towards the server, then blackhole."""
        self._call(self._arm_cut)

    def _call(self, fn: Any, *args: Any) -> None:
        token = self._token
        if token is None:
            return
        done = threading.Event()

        def run() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(run)
            done.wait(10)

    # ------------------------------------------------------------ trio side

    def _thread_main(self) -> None:
        trio.run(self._main)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._flowing = trio.Event()
        self._flowing.set()
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        with trio.CancelScope() as self._stop:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self._handle, listeners)
                self._ready.set()
                await trio.sleep_forever()

    def _shutdown(self) -> None:
        if self._stop is not None:
            self._stop.cancel()

    def _set_mode(self, mode: str) -> None:
        assert self._flowing is not None
        self.mode = mode
        self._cut_armed = False
        if mode == "pass":
            self._flowing.set()
        elif self._flowing.is_set():
            self._flowing = trio.Event()
        if mode == "reset":
            for stream in list(self._open):
                _reset(stream)
            self._open.clear()

    def _arm_cut(self) -> None:
        self._cut_armed = True

    def _enter_blackhole(self) -> None:
        if self._flowing is not None and self._flowing.is_set():
            self._flowing = trio.Event()
        self.mode = "blackhole"

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        if self.mode == "reset":
            _reset(client)
            return
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target)
        except OSError:
            _reset(client)
            return
        self._open.update((client, server))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, server, True, nursery.cancel_scope)
                nursery.start_soon(self._pump, server, client, False, nursery.cancel_scope)
        finally:
            self._open.discard(client)
            self._open.discard(server)
            # synchronously: an await here would be cancelled before the second one
            client.socket.close()
            server.socket.close()

    async def _held(self) -> None:
        """Wait while the network is blackholed."""
        while self._flowing is not None and not self._flowing.is_set():
            await self._flowing.wait()

    async def _pump(
        self,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        to_server: bool,
        scope: trio.CancelScope,
    ) -> None:
        try:
            while True:
                await self._held()
                data = await src.receive_some(65536)
                if not data:
                    break
                if to_server and self._cut_armed and len(data) >= COMMIT_SIZE:
                    self._cut_armed = False
                    self.cuts += 1
                    half = len(data) // 2
                    await dst.send_all(data[:half])
                    data = data[half:]
                    self._enter_blackhole()
                await self._held()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


def _reset(stream: trio.SocketStream) -> None:
    """Close ``stream`` with a TCP reset (SO_LINGER 0)."""
    sock = stream.socket
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
