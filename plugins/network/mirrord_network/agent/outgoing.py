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
from mirrord_network.socket_pipe import run_both, socket_to_stream, stream_to_socket

CONNECT_TIMEOUT = 30.0
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
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in request.host else socket.AF_INET
    # A plain non-blocking socket rather than asyncio's streams: see mirrord_network.socket_pipe.
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # Data arrives already framed by the client's writes: forward it without Nagle delays.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.wait_for(
                loop.sock_connect(sock, (request.host, request.port)), CONNECT_TIMEOUT
            )
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)) from None
        host, port = sock.getsockname()[:2]
        await stream.accept(Connected(local_host=host, local_port=port))
        await run_both(stream_to_socket(stream, sock), socket_to_stream(sock, stream))
    finally:
        sock.close()


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
