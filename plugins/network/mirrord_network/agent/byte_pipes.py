"""Bidirectional byte pipes: the interface stolen traffic flows through, TCP sockets
adapted to it, and splicing two pipes together.

A :class:`Pipe` is what a protocol stream (``mirrord_core.protocol.Stream``) offers:
``read`` returns ``b""`` once the peer ended its direction, ``end`` half-closes ours,
``close`` closes gracefully and ``reset`` aborts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from typing import Protocol

#: The most bytes read at once (and the asyncio stream buffer size).
CHUNK = 256 * 1024
CONNECT_TIMEOUT = 30.0
_LINGER_RESET = struct.pack("ii", 1, 0)


class Pipe(Protocol):
    """A bidirectional byte stream with half-close (a ``mirrord_core.protocol.Stream``)."""

    async def write(self, data: bytes) -> None:
        """Send ``data`` (waits for the peer to take it, i.e. backpressure)."""

    async def read(self, max_bytes: int = -1) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` once the peer ended its direction."""

    async def end(self) -> None:
        """Half-close: nothing more is sent in this direction."""

    async def close(self) -> None:
        """Close gracefully."""

    def reset(self, reason: str = "reset") -> None:
        """Abort both directions now."""


class SocketPipe:
    """A connected TCP socket as a :class:`Pipe`; ``reset`` sends a TCP RST."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        # Asyncio's default 64 KiB high-water mark would make every large write wait.
        writer.transport.set_write_buffer_limits(high=CHUNK)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Writes arrive already framed by whoever produced them: no Nagle delays.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @classmethod
    async def connect(cls, host: str, port: int) -> SocketPipe:
        """Connect to ``host:port`` (``OSError`` on failure, ``ETIMEDOUT`` after 30 s)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=CHUNK), CONNECT_TIMEOUT
            )
        except TimeoutError:
            raise TimeoutError(f"connecting to {host}:{port} timed out") from None
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, max_bytes: int = -1) -> bytes:
        # StreamReader.read(-1) would wait for the end of the stream.
        return await self.reader.read(max_bytes if max_bytes > 0 else CHUNK)

    def peer_closed(self) -> bool:
        """True when the peer has closed its side: already seen, or waiting in the kernel
        (checked with a non-blocking peek, so it does not depend on the event loop having
        read it yet)."""
        if self.reader.at_eof() or self.writer.is_closing():
            return True
        transport_socket = self.writer.get_extra_info("socket")
        if transport_socket is None:
            return False
        # asyncio's socket wrapper has no recv(); a duplicate descriptor is the same socket.
        with socket.socket(fileno=os.dup(transport_socket.fileno())) as duplicate:
            try:
                return duplicate.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True  # reset

    async def end(self) -> None:
        if not self.writer.is_closing() and self.writer.can_write_eof():
            self.writer.write_eof()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    def reset(self, reason: str = "reset") -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            reset_on_close(sock)
        self.writer.transport.abort()


def reset_on_close(sock: socket.socket) -> None:
    """Make closing ``sock`` send a TCP RST (an abort) rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


async def copy_until_end(source: Pipe, destination: Pipe) -> None:
    """Copy ``source`` into ``destination`` until ``source`` ends, then end ``destination``."""
    while data := await source.read(CHUNK):
        await destination.write(data)
    await destination.end()


async def splice(first: Pipe, second: Pipe) -> None:
    """Copy both ways until both directions ended, then close both.

    If either side fails (reset, connection lost), the other is reset too, so an aborted
    connection is seen as aborted on both ends rather than as a clean end of data.
    """
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(copy_until_end(first, second))
            group.create_task(copy_until_end(second, first))
    except BaseException as error:
        reason = f"the other side failed: {error!r}"[:200]
        first.reset(reason)
        second.reset(reason)
        if not isinstance(error, Exception):
            raise
    finally:
        await close_quietly(first)
        await close_quietly(second)


async def close_quietly(pipe: Pipe) -> None:
    """Close ``pipe``, ignoring the errors of one that is already broken."""
    with contextlib.suppress(Exception):
        await pipe.close()
