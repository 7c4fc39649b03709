"""Reading and writing ``struct sockaddr`` as a tracee passes them to socket syscalls."""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from mirrord_core.interception import Notification

_FAMILY = struct.Struct("=H")
#: sizeof(struct sockaddr_in6), the largest inet address; sockaddr_un is 110 bytes.
MAX_INET_SOCKADDR = 28
MAX_SOCKADDR = 128


@attrs.frozen
class InetAddress:
    """An IPv4 or IPv6 destination (IPv4-mapped IPv6 addresses are kept as IPv4)."""

    host: str
    port: int
    #: The family of the sockaddr it came from (an AF_INET6 socket may use mapped IPv4).
    family: int = socket.AF_INET

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.host)

    @property
    def is_loopback(self) -> bool:
        return self.ip.is_loopback

    @property
    def is_unspecified(self) -> bool:
        return self.ip.is_unspecified

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def family_of(data: bytes) -> int:
    """The ``sa_family`` of a sockaddr (0 if too short)."""
    return _FAMILY.unpack_from(data)[0] if len(data) >= 2 else 0


def parse_inet(data: bytes) -> InetAddress | None:
    """An :class:`InetAddress` from a sockaddr_in / sockaddr_in6, or ``None``."""
    family = family_of(data)
    if family == socket.AF_INET and len(data) >= 8:
        return InetAddress(socket.inet_ntoa(data[4:8]), int.from_bytes(data[2:4], "big"))
    if family == socket.AF_INET6 and len(data) >= 24:
        port = int.from_bytes(data[2:4], "big")
        raw = data[8:24]
        if raw[:12] == b"\0" * 10 + b"\xff\xff":
            return InetAddress(socket.inet_ntoa(raw[12:]), port, socket.AF_INET6)
        return InetAddress(socket.inet_ntop(socket.AF_INET6, raw), port, socket.AF_INET6)
    return None


def parse_unix_path(data: bytes) -> bytes | None:
    """The path of a sockaddr_un (abstract names start with NUL), or ``None``."""
    if family_of(data) != socket.AF_UNIX:
        return None
    path = data[2:]
    if path[:1] == b"\0":
        return path
    return path.split(b"\0", 1)[0]


def encode_unix(path: bytes) -> bytes:
    """A sockaddr_un for ``path`` as ``getpeername`` reports it: a pathname with its
    terminating NUL, an abstract name (leading NUL) exactly as long as it is."""
    terminator = b"" if path[:1] == b"\0" else b"\0"
    return _FAMILY.pack(socket.AF_UNIX) + path + terminator


def encode_inet(address: InetAddress, family: int) -> bytes:
    """``address`` as a sockaddr of ``family`` (IPv4 in an AF_INET6 socket is mapped)."""
    port = address.port.to_bytes(2, "big")
    if family == socket.AF_INET:
        return _FAMILY.pack(socket.AF_INET) + port + socket.inet_aton(address.host) + bytes(8)
    ip = address.ip
    raw = (
        ipaddress.IPv6Address(f"::ffff:{ip}").packed
        if isinstance(ip, ipaddress.IPv4Address)
        else ip.packed
    )
    return _FAMILY.pack(socket.AF_INET6) + port + bytes(4) + raw + bytes(4)


def python_address(address: InetAddress, family: int) -> tuple[str, int]:
    """``address`` as Python's ``socket.connect`` takes it for a socket of ``family``."""
    if family == socket.AF_INET6 and "." in address.host:
        return (f"::ffff:{address.host}", address.port)
    return (address.host, address.port)


def read_u32(data: bytes) -> int:
    return int.from_bytes(data[:4], sys.byteorder)


def pack_u32(value: int) -> bytes:
    return value.to_bytes(4, sys.byteorder)


def write_address(
    notification: Notification, encoded: bytes, pointer: int, length_pointer: int
) -> None:
    """Answer a tracee's ``struct sockaddr *addr, socklen_t *addrlen`` pair as the kernel
    does: copy at most ``*addrlen`` bytes, then store the full length."""
    if length_pointer == 0:
        return
    room = read_u32(notification.read_memory(length_pointer, 4))
    if pointer and room:
        notification.write_memory(pointer, encoded[:room])
    notification.write_memory(length_pointer, pack_u32(len(encoded)))
