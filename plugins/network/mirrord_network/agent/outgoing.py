"""Outgoing connections made from the target's network namespace, piped over streams."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import struct

from mirrord_core.protocol import Stream
from mirrord_network.messages import Connected, TcpConnect, UdpConnect

CONNECT_TIMEOUT = 30.0
PIPE_CHUNK = 1024 * 1024
_LENGTH = struct.Struct(">H")


def _check_destination(host: str, port: int) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise OSError(errno.EINVAL, f"not an IP address: {host[:100]!r}") from None
    if not 0 < port < 65536:
        raise OSError(errno.EINVAL, f"invalid port {port}")


async def tcp_connect(stream: Stream, request: TcpConnect) -> None:
    """Connect to ``host:port`` from the target and pipe bytes both ways until both end."""
    _check_destination(request.host, request.port)
    try:
        reader, writer = await asyncio.wait_for(
            # The reader's limit (64 KiB by default) would stop the socket after 128 KiB.
            asyncio.open_connection(request.host, request.port, limit=PIPE_CHUNK),
            CONNECT_TIMEOUT,
        )
    except TimeoutError:
        raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)) from None
    # Buffer a chunk's worth before writes wait for a drain (asyncio's default is 64 KiB).
    writer.transport.set_write_buffer_limits(high=PIPE_CHUNK)
    # Data arrives already framed by the client's writes: forward it without Nagle delays.
    with contextlib.suppress(OSError):
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        host, port = writer.get_extra_info("sockname")[:2]
        await stream.accept(Connected(local_host=host, local_port=port))

        async def upstream() -> None:
            async for chunk in stream:
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        async def downstream() -> None:
            while data := await reader.read(PIPE_CHUNK):
                await stream.write(data)
            await stream.end()

        await asyncio.gather(upstream(), downstream())
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class _DatagramRelay(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1024)

    def datagram_received(self, data: bytes, addr: object) -> None:
        # A UDP receiver that falls behind drops datagrams, as the kernel would.
        with contextlib.suppress(asyncio.QueueFull):
            self.received.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors on a connected UDP socket: the next send reports them

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.received.put_nowait(None)


async def udp_connect(stream: Stream, request: UdpConnect) -> None:
    """A connected UDP socket in the target; datagrams framed with a 2-byte length."""
    _check_destination(request.host, request.port)
    family = socket.AF_INET6 if ":" in request.host else socket.AF_INET
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect((request.host, request.port))
        transport, relay = await loop.create_datagram_endpoint(_DatagramRelay, sock=sock)
    except BaseException:
        sock.close()
        raise

    def send(datagram: bytes) -> None:
        if datagram:
            transport.sendto(datagram)
            return
        # asyncio (before 3.13) silently drops empty datagrams; UDP allows them.
        with contextlib.suppress(OSError):
            sock.send(b"")

    try:
        host, port = transport.get_extra_info("sockname")[:2]
        await stream.accept(Connected(local_host=host, local_port=port))

        async def upstream() -> None:
            buffer = b""
            async for chunk in stream:
                buffer += chunk
                while len(buffer) >= 2:
                    (size,) = _LENGTH.unpack_from(buffer)
                    if len(buffer) < 2 + size:
                        break
                    send(buffer[2 : 2 + size])
                    buffer = buffer[2 + size :]
            transport.close()

        async def downstream() -> None:
            while (datagram := await relay.received.get()) is not None:
                await stream.write(_LENGTH.pack(len(datagram)) + datagram)
            await stream.end()

        await asyncio.gather(upstream(), downstream())
    finally:
        transport.close()
