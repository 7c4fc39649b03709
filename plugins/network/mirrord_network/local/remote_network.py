"""The target's network through a session: resolving names and connecting out."""

from __future__ import annotations

import errno
import os
import socket
import struct

from mirrord_core.protocol import Stream
from mirrord_core.session import RemoteRequestError, Session
from mirrord_network.messages import (
    NAME_NOT_FOUND,
    TCP_CONNECT_STREAM,
    UDP_STREAM,
    UNIX_CONNECT_STREAM,
    Addresses,
    Resolve,
    TcpConnect,
    UdpConnect,
    UnixConnect,
)

_LENGTH = struct.Struct(">H")
#: Resolve failure codes → getaddrinfo errors (anything else: EAI_AGAIN, try again).
_GAI_ERRORS = {NAME_NOT_FOUND: socket.EAI_NONAME, "unsupported_family": socket.EAI_FAMILY}


async def resolve(session: Session, name: str, family: int = socket.AF_UNSPEC) -> list[str]:
    """Addresses of ``name`` as the target resolves it; raises :class:`socket.gaierror`."""
    if family not in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6):
        raise socket.gaierror(socket.EAI_FAMILY, f"address family {family} not supported")
    try:
        answer: Addresses = await session.request(Resolve(name=name, family=family))
    except RemoteRequestError as err:
        code = _GAI_ERRORS.get(err.code, socket.EAI_AGAIN)
        raise socket.gaierror(code, str(err)) from None
    return list(answer.addresses)


async def connect_tcp(session: Session, host: str, port: int) -> Stream:
    """A byte stream to ``host:port`` connected from the target (``OSError`` as connect's)."""
    return await session.open_stream(TCP_CONNECT_STREAM, TcpConnect(host=host, port=port))


async def connect_unix(session: Session, path: bytes, *, abstract: bool = False) -> Stream:
    """A byte stream to the unix stream socket ``path`` of the target (a file inside its
    root, or with ``abstract`` a name in its network namespace); ``OSError`` as connect's."""
    return await session.open_stream(UNIX_CONNECT_STREAM, UnixConnect(path=path, abstract=abstract))


class RemoteDatagrams:
    """A connected UDP socket in the target."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._buffer = b""

    @classmethod
    async def connect(cls, session: Session, host: str, port: int) -> RemoteDatagrams:
        return cls(await session.open_stream(UDP_STREAM, UdpConnect(host=host, port=port)))

    async def send(self, datagram: bytes) -> None:
        if len(datagram) > 0xFFFF:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        await self.stream.write(_LENGTH.pack(len(datagram)) + datagram)

    async def receive(self) -> bytes:
        while True:
            if len(self._buffer) >= 2:
                (size,) = _LENGTH.unpack_from(self._buffer)
                if len(self._buffer) >= 2 + size:
                    datagram = self._buffer[2 : 2 + size]
                    self._buffer = self._buffer[2 + size :]
                    return datagram
            chunk = await self.stream.read()
            if not chunk:
                raise EOFError("the remote UDP socket closed")
            self._buffer += chunk

    async def close(self) -> None:
        await self.stream.close()
