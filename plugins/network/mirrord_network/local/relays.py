"""Local relays between a tracee's redirected socket and a connection made in the target.

A TCP relay is a listening socket on loopback that accepts exactly one connection (the
tracee's socket, connected there by the supervisor) and pipes bytes between it and a
``net.tcp_connect`` stream. A UDP relay is a loopback UDP socket that forwards every
datagram it receives to a :class:`RemoteDatagrams` socket in the target and sends the
replies back to whoever sent last. Everything here runs on the session's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from mirrord_core.protocol import Stream
from mirrord_network.local.remote_network import RemoteDatagrams
from mirrord_network.socket_pipe import run_both, socket_to_stream, stream_to_socket

log = logging.getLogger(__name__)

#: How long a relay waits for the tracee's socket to arrive.
ACCEPT_TIMEOUT = 10.0
#: A UDP relay that carried nothing for this long is closed once the tracee's socket is
#: gone (DNS clients use one socket per query).
UDP_IDLE_TIMEOUT = 20.0


def loopback_for(family: int) -> str:
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


class TcpRelay:
    """One redirected TCP connection: loopback listener → accepted socket ⇄ stream."""

    def __init__(self, stream: Stream, family: int = socket.AF_INET) -> None:
        self.stream = stream
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.bind((loopback_for(family), 0))
            self.listener.listen(1)
            self.listener.setblocking(False)
        except BaseException:
            self.listener.close()
            raise
        self.address: tuple[str, int] = self.listener.getsockname()[:2]

    async def run(self) -> None:
        """Accept the tracee's connection and pipe until both directions ended."""
        loop = asyncio.get_running_loop()
        try:
            try:
                connection, _ = await asyncio.wait_for(
                    loop.sock_accept(self.listener), ACCEPT_TIMEOUT
                )
            finally:
                self.listener.close()
        except (TimeoutError, OSError):
            await self._close_stream()
            return
        with connection:
            connection.setblocking(False)
            # The relay forwards each write as it arrives; Nagle would hold a response's
            # second write back until the tracee's delayed ACK (tens of milliseconds).
            if connection.family != socket.AF_UNIX:
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A failed direction ends the other one too: after a remote reset the tracee gets
            # its reset now, not once it happens to send or close.
            with contextlib.suppress(Exception):
                await run_both(self._upstream(connection), self._downstream(connection))
        await self._close_stream()

    async def _upstream(self, connection: socket.socket) -> None:
        try:
            await socket_to_stream(connection, self.stream)
        except OSError:
            # The tracee reset its socket: so does the remote side.
            self.stream.reset("local connection reset")

    async def _downstream(self, connection: socket.socket) -> None:
        try:
            await stream_to_socket(self.stream, connection)
        except Exception:
            # The remote side reset (or the session ended): the tracee sees a reset.
            with contextlib.suppress(OSError):
                connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            raise

    async def _close_stream(self) -> None:
        with contextlib.suppress(Exception):
            await self.stream.close()


class UdpRelay:
    """A loopback UDP socket standing for one remote destination of one tracee socket."""

    def __init__(
        self,
        remote: RemoteDatagrams,
        family: int = socket.AF_INET,
        in_use: Callable[[], bool] = lambda: False,
    ) -> None:
        self.remote = remote
        #: Whether the tracee's socket still exists (asked when the relay is idle).
        self.in_use = in_use
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.bind((loopback_for(family), 0))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.closed = False
        self._client: tuple[str, int] | None = None
        self._last_activity = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> asyncio.Task[None]:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.sock.fileno(), self._readable)
        return loop.create_task(self._run())

    def _readable(self) -> None:
        while True:
            try:
                datagram, client = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error from an earlier reply: go on
            self._client = client
            self._last_activity = time.monotonic()
            task = asyncio.get_running_loop().create_task(self._send(datagram))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, datagram: bytes) -> None:
        with contextlib.suppress(Exception):
            await self.remote.send(datagram)

    async def _run(self) -> None:
        receiving = asyncio.ensure_future(self._downstream())
        try:
            while not receiving.done():
                await asyncio.wait({receiving}, timeout=UDP_IDLE_TIMEOUT / 4)
                if time.monotonic() - self._last_activity > UDP_IDLE_TIMEOUT:
                    if not self.in_use():
                        break
                    self._last_activity = time.monotonic()
        finally:
            receiving.cancel()
            with contextlib.suppress(BaseException):
                await receiving
            await self.close()

    async def _downstream(self) -> None:
        with contextlib.suppress(EOFError, Exception):
            while True:
                datagram = await self.remote.receive()
                self._last_activity = time.monotonic()
                if self._client is not None:
                    with contextlib.suppress(OSError):
                        self.sock.sendto(datagram, self._client)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(Exception):
            await self.remote.close()
