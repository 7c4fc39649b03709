"""``flush_connections``: abort the established TCP connections of a port so that their
clients reconnect, and the new connections go through the steal redirect.

Uses the kernel's socket-diagnostics netlink interface (``NETLINK_SOCK_DIAG``): a dump of
the namespace's established TCP sockets, then ``SOCK_DESTROY`` for each server-side socket
on the port. Destroying a socket sends a RST to its peer and makes the application's next
call on it fail with ``ECONNABORTED``. This is what ``ss -K`` does; it needs a kernel built
with ``CONFIG_INET_DIAG_DESTROY`` (and ``CAP_NET_ADMIN``), which is checked and reported.

Deleting the conntrack entries instead (what mirrord 3.32 did with the ``conntrack`` tool)
only disturbs the connection at the next packet the client sends; destroying the socket
ends it at once and needs no extra tool.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

import attrs

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_SOCK_DESTROY = 21
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_TCP_ESTABLISHED = 1
_TCP_CLOSE_WAIT = 8
_ALL_STATES = 0xFFFFFFFF

_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_ERROR = struct.Struct("=i")  # struct nlmsgerr's error field
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid
_REQUEST = struct.Struct("=BBBxI")
# struct inet_diag_sockid: ports and addresses in network order, interface, cookie
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=I8s")
# struct inet_diag_msg: family, state, timer, retrans, then the sockid
_MESSAGE = struct.Struct("=BBBB")


class FlushError(Exception):
    """Established connections could not be aborted; the message says why."""


@attrs.frozen
class _TcpSocket:
    family: int
    local: ipaddress.IPv4Address | ipaddress.IPv6Address
    local_port: int
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address
    peer_port: int
    sockid: bytes  # the raw inet_diag_sockid (with interface and cookie) to destroy it by


def _address(family: int, raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if family == socket.AF_INET:
        return ipaddress.IPv4Address(raw[:4])
    address = ipaddress.IPv6Address(raw)
    return address.ipv4_mapped or address


def _request(message_type: int, flags: int, payload: bytes, sequence: int) -> bytes:
    return _HEADER.pack(_HEADER.size + len(payload), message_type, flags, sequence, 0) + payload


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    messages = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, message_type, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        messages.append((message_type, data[offset + _HEADER.size : offset + length]))
        offset += (length + 3) & ~3
    return messages


def _check_error(payload: bytes, action: str) -> bool:
    """True for success, False when the socket is gone; raises for other errors."""
    (code,) = _ERROR.unpack_from(payload)
    if code == 0:
        return True
    number = -code
    if number == errno.EOPNOTSUPP:
        raise FlushError(
            f"cannot {action}: this kernel cannot destroy sockets "
            "(it needs CONFIG_INET_DIAG_DESTROY)"
        )
    if number == errno.ENOENT:
        return False  # the connection ended meanwhile
    raise FlushError(f"cannot {action}: {os.strerror(number)}")


def _established_tcp(diag: socket.socket, family: int) -> list[_TcpSocket]:
    states = (1 << _TCP_ESTABLISHED) | (1 << _TCP_CLOSE_WAIT)
    payload = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, states) + bytes(_SOCKID.size + 12)
    diag.send(_request(_SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, payload, 1))
    found = []
    while True:
        data = diag.recv(1 << 16)
        for message_type, body in _messages(data):
            if message_type == _NLMSG_DONE:
                return found
            if message_type == _NLMSG_ERROR:
                _check_error(body, "list TCP connections")
                return found
            if message_type != _SOCK_DIAG_BY_FAMILY:
                continue
            offset = _MESSAGE.size
            sockid = body[offset : offset + _SOCKID.size + _SOCKID_TAIL.size]
            local_port, peer_port, local, peer = _SOCKID.unpack_from(body, offset)
            found.append(
                _TcpSocket(
                    family=body[0],
                    local=_address(body[0], local),
                    local_port=local_port,
                    peer=_address(body[0], peer),
                    peer_port=peer_port,
                    sockid=sockid,
                )
            )


def _is_from_this_host(connection: _TcpSocket) -> bool:
    # Loopback clients, and clients using one of our own addresses (this namespace's
    # processes, the agent's own pass-through connections), never go through the redirect
    # (it applies to traffic arriving from outside), so aborting them would gain nothing.
    return connection.peer.is_loopback or connection.peer == connection.local


def flush_established_connections(port: int) -> int:
    """Abort the established connections to local TCP ``port`` that came from elsewhere.

    Runs in the current network namespace; returns how many connections were aborted.
    Raises :class:`FlushError` if the kernel cannot do it.
    """
    try:
        diag = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
    except OSError as error:
        raise FlushError(f"cannot open a sock_diag netlink socket: {error.strerror}") from None
    aborted = 0
    with diag:
        targets = [
            connection
            for family in (socket.AF_INET, socket.AF_INET6)
            for connection in _established_tcp(diag, family)
            if connection.local_port == port and not _is_from_this_host(connection)
        ]
        for sequence, connection in enumerate(targets, start=2):
            payload = (
                _REQUEST.pack(connection.family, socket.IPPROTO_TCP, 0, _ALL_STATES)
                + connection.sockid
            )
            diag.send(_request(_SOCK_DESTROY, _NLM_F_REQUEST | _NLM_F_ACK, payload, sequence))
            for message_type, body in _messages(diag.recv(1 << 16)):
                if message_type == _NLMSG_ERROR and _check_error(
                    body, f"abort the connection from {connection.peer}"
                ):
                    aborted += 1
    return aborted
