"""Capturing TCP segments from one network interface: an ``AF_PACKET`` socket with a classic
BPF filter, and parsing of the frames it receives.

The socket lives in the network namespace of the thread that opens it (the agent enters
the target's before serving). It sees both directions of the interface's traffic:
incoming frames as ``PACKET_HOST`` and the namespace's own transmissions as
``PACKET_OUTGOING`` (on loopback every packet is seen once each way). A BPF program in the
kernel passes only TCP segments from or to the subscribed ports, so Python never sees the
rest of the traffic.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import NamedTuple

from mirrord_core.user_errors import UserError

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_TCP = 6

PACKET_HOST = 0
PACKET_OUTGOING = 4

_SOL_PACKET = 263
_PACKET_STATISTICS = 6
_SO_ATTACH_FILTER = 26
_SO_RCVBUFFORCE = 33
_MSG_TRUNC = 0x20

_RTF_UP = 0x0001
_RTF_UP_REJECT = 0x0201

_ARPHRD_ETHER = 1
_ARPHRD_LOOPBACK = 772
_ARPHRD_RAWIP = 519
_ARPHRD_NONE = 0xFFFE

RECEIVE_BUFFER = 64 * 1024 * 1024
"""Kernel queue of the capture socket: bursts of connections must not overflow it."""
FRAME_BUFFER = 256 * 1024
"""Largest frame read whole: GRO/GSO packets on veth and loopback exceed the MTU (up to
64 KiB, more with BIG TCP)."""
MAX_FILTERED_PORTS = 100
"""More subscribed ports than this and the kernel filter passes all TCP (its jumps reach
at most 255 instructions); the ports are then checked in Python."""

_IPV6_SKIPPED_HEADERS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_TCP = struct.Struct("!HHIIBB")
_IPV4 = struct.Struct("!BxHxxHxBxx4s4s")
_IPV6 = struct.Struct("!BxxxHBx16s16s")
_FRAME_TYPE = struct.Struct("!H")
_STATISTICS = struct.Struct("II")


class CaptureError(UserError):
    """Traffic cannot be captured in the target's network namespace."""


class CaptureInterfaceError(CaptureError):
    """The interface to capture on does not exist or cannot be used."""


class TcpSegment(NamedTuple):
    """One captured TCP segment. ``payload`` is a view of the capture's frame buffer, valid
    until the next frame is read: copy what must be kept."""

    src: bytes
    sport: int
    dst: bytes
    dport: int
    seq: int
    ack: int
    flags: int
    payload: memoryview


def default_interface() -> str:
    """The interface of the default route in the calling thread's network namespace (IPv4
    first, then IPv6), else ``eth0``."""
    tables = []
    for name in ("route", "ipv6_route"):
        try:
            tables.append(Path(f"/proc/thread-self/net/{name}").read_text())
        except OSError:
            tables.append("")
    return default_route_interface(*tables) or "eth0"


def default_route_interface(route: str, ipv6_route: str) -> str | None:
    """The interface of the usable default route with the lowest metric in the kernel's
    route tables (``/proc/net/route``, then ``/proc/net/ipv6_route``), if any."""
    best: tuple[int, str] | None = None
    for line in route.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        name, destination, flags, metric, mask = (fields[i] for i in (0, 1, 3, 6, 7))
        usable = int(flags, 16) & _RTF_UP_REJECT == _RTF_UP
        if destination == mask == "00000000" and usable and name != "lo":
            best = min(best or (int(metric), name), (int(metric), name))
    if best is None:
        for line in ipv6_route.splitlines():
            fields = line.split()
            if len(fields) < 10 or fields[0] != "0" * 32 or fields[1] != "00":
                continue
            usable = int(fields[8], 16) & _RTF_UP_REJECT == _RTF_UP
            if usable and fields[9] != "lo":
                candidate = (int(fields[5], 16), fields[9])
                best = min(best or candidate, candidate)
    return best[1] if best is not None else None


def parse_frame(frame: memoryview, length: int, link_header: int) -> TcpSegment | None:
    """The TCP segment in a captured frame, or ``None`` if it holds none (another protocol, a
    non-first IP fragment, a malformed or truncated header). ``link_header`` is 14 for
    Ethernet (802.1Q/802.1ad tags are skipped), 0 for interfaces that carry bare IP."""
    offset = link_header
    if link_header:
        if length < 14:
            return None
        (ethertype,) = _FRAME_TYPE.unpack_from(frame, 12)
        while ethertype in (ETH_P_8021Q, ETH_P_8021AD) and length >= offset + 4:
            (ethertype,) = _FRAME_TYPE.unpack_from(frame, offset + 2)
            offset += 4
    elif length:
        ethertype = ETH_P_IP if frame[0] >> 4 == 4 else ETH_P_IPV6
    else:
        return None
    if ethertype == ETH_P_IP:
        if length < offset + 20:
            return None
        version_ihl, total, fragment, protocol, src, dst = _IPV4.unpack_from(frame, offset)
        header = (version_ihl & 0x0F) * 4
        if version_ihl >> 4 != 4 or header < 20 or protocol != IPPROTO_TCP or fragment & 0x1FFF:
            return None
        # Ethernet pads short frames: the IP length says where the packet ends. A GRO packet
        # beyond 64 KiB (BIG TCP) carries 0 there and ends with the frame.
        end = min(offset + total, length) if total else length
        offset += header
    elif ethertype == ETH_P_IPV6:
        if length < offset + 40:
            return None
        version, payload_length, next_header, src, dst = _IPV6.unpack_from(frame, offset)
        if version >> 4 != 6:
            return None
        end = min(offset + 40 + payload_length, length) if payload_length else length
        offset += 40
        while next_header in _IPV6_SKIPPED_HEADERS and offset + 8 <= end:
            next_header = frame[offset]
            offset += (frame[offset + 1] + 1) * 8
        if next_header != IPPROTO_TCP:
            return None
    else:
        return None
    if end < offset + 20:
        return None
    sport, dport, seq, ack, data_offset, flags = _TCP.unpack_from(frame, offset)
    data_start = offset + (data_offset >> 4) * 4
    if data_start > end or data_offset >> 4 < 5:
        return None
    return TcpSegment(src, sport, dst, dport, seq, ack, flags, frame[data_start:end])


class _Program:
    """A classic BPF program with labels, assembled to ``struct sock_filter`` records."""

    def __init__(self) -> None:
        self._code: list[tuple[int, str | int, str | int, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self._labels[name] = len(self._code)

    def op(self, code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self._code.append((code, jt, jf, k))

    def jump(self, target: str) -> None:
        """An unconditional jump, which (unlike conditional ones) reaches any distance."""
        self._code.append((_BPF_JA, target, 0, 0))

    def assemble(self) -> bytes:
        records = []
        for pc, (code, jt, jf, k) in enumerate(self._code):
            if code == _BPF_JA:
                k, jt = self._labels[str(jt)] - pc - 1, 0
            jt, jf = (self._offset(pc, target) for target in (jt, jf))
            records.append(struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF))
        return b"".join(records)

    def _offset(self, pc: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        distance = self._labels[target] - pc - 1
        if not 0 <= distance <= 255:
            raise OverflowError(f"BPF jump of {distance} instructions")
        return distance


_BPF_LDH_ABS = 0x28
_BPF_LDB_ABS = 0x30
_BPF_LDH_IND = 0x48
_BPF_LDX_MSH = 0xB1
_BPF_LDX_IMM = 0x01
_BPF_AND_K = 0x54
_BPF_JEQ_K = 0x15
_BPF_JSET_K = 0x45
_BPF_JA = 0x05
_BPF_RET_K = 0x06
_ACCEPT = 0xFFFFFFFF  # the whole frame


def tcp_filter(ports: Collection[int] | None, link_header: int) -> bytes:
    """A BPF program passing TCP segments (over IPv4 or IPv6, 802.1Q-tagged or not) whose
    source or destination port is in ``ports`` (``None``: every TCP segment). IPv6 packets
    with extension headers pass to be parsed in Python."""
    if ports is not None and len(ports) > MAX_FILTERED_PORTS:
        ports = None
    program = _Program()
    if link_header:
        program.op(_BPF_LDH_ABS, 12)
        program.op(_BPF_JEQ_K, ETH_P_8021Q, 0, 1)
        program.jump("tagged")
        _ethertype_branch(program, 14)
        program.label("tagged")
        program.op(_BPF_LDH_ABS, 16)
        _ethertype_branch(program, 18)
        offsets = (14, 18)
    else:
        program.op(_BPF_LDB_ABS, 0)
        program.op(_BPF_AND_K, 0xF0)
        program.op(_BPF_JEQ_K, 0x40, 0, 1)
        program.jump("ipv4-0")
        program.op(_BPF_JEQ_K, 0x60, 0, 1)
        program.jump("ipv6-0")
        program.op(_BPF_RET_K, 0)
        offsets = (0,)
    for base in offsets:
        program.label(f"ipv4-{base}")
        program.op(_BPF_LDB_ABS, base + 9)
        program.op(_BPF_JEQ_K, IPPROTO_TCP, f"tcp4-{base}", 0)
        program.op(_BPF_RET_K, 0)
        program.label(f"tcp4-{base}")
        program.op(_BPF_LDH_ABS, base + 6)
        program.op(_BPF_JSET_K, 0x1FFF, 0, f"first-fragment-{base}")
        program.op(_BPF_RET_K, 0)  # a non-first fragment has no TCP header
        program.label(f"first-fragment-{base}")
        program.op(_BPF_LDX_MSH, base)
        _port_check(program, ports, base, f"v4-{base}")
        program.label(f"ipv6-{base}")
        program.op(_BPF_LDB_ABS, base + 6)
        program.op(_BPF_JEQ_K, IPPROTO_TCP, f"tcp6-{base}", 0)
        for header in sorted(_IPV6_SKIPPED_HEADERS):
            program.op(_BPF_JEQ_K, header, f"ipv6-extended-{base}", 0)
        program.op(_BPF_RET_K, 0)
        program.label(f"ipv6-extended-{base}")
        program.op(_BPF_RET_K, _ACCEPT)
        program.label(f"tcp6-{base}")
        program.op(_BPF_LDX_IMM, 40)
        _port_check(program, ports, base, f"v6-{base}")
    return program.assemble()


def _ethertype_branch(program: _Program, base: int) -> None:
    program.op(_BPF_JEQ_K, ETH_P_IP, 0, 1)
    program.jump(f"ipv4-{base}")
    program.op(_BPF_JEQ_K, ETH_P_IPV6, 0, 1)
    program.jump(f"ipv6-{base}")
    program.op(_BPF_RET_K, 0)


def _port_check(program: _Program, ports: Collection[int] | None, base: int, name: str) -> None:
    """With X = the IP header's length: accept if either TCP port is in ``ports``."""
    if ports is None:
        program.op(_BPF_RET_K, _ACCEPT)
        return
    accept = f"accept-{name}"
    for field in (0, 2):  # source port, destination port
        program.op(_BPF_LDH_IND, base + field)
        for port in sorted(ports):
            program.op(_BPF_JEQ_K, port, accept, 0)
    program.op(_BPF_RET_K, 0)
    program.label(accept)
    program.op(_BPF_RET_K, _ACCEPT)


_DROP_ALL = struct.pack("HBBI", _BPF_RET_K, 0, 0, 0)


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    code = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HP", len(program) // 8, ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


class PacketCapture:
    """A non-blocking ``AF_PACKET`` socket on one interface of the calling thread's network
    namespace, passing only TCP segments of the given ports."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        try:
            socket.if_nametoindex(interface)
        except OSError:
            available = ", ".join(name for _, name in socket.if_nameindex())
            raise CaptureInterfaceError(
                f"agent.network_interface: no interface {interface!r} in the target's "
                f"network namespace (it has: {available or 'none'})"
            ) from None
        # Protocol 0 receives nothing until bound: the filter is in place before any frame
        # is queued, so Python never sees unfiltered traffic.
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise CaptureError(
                "mirroring incoming traffic needs CAP_NET_RAW in the target's network "
                "namespace (run the agent as root)"
            ) from None
        try:
            _attach_filter(sock, _DROP_ALL)
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            try:
                sock.bind((interface, ETH_P_ALL))
            except OSError as err:
                raise CaptureInterfaceError(
                    f"agent.network_interface: cannot capture on {interface!r}: "
                    f"{err.strerror or err}"
                ) from None
            hardware_type = sock.getsockname()[3]
            if hardware_type in (_ARPHRD_ETHER, _ARPHRD_LOOPBACK):
                self.link_header = 14
            elif hardware_type in (_ARPHRD_NONE, _ARPHRD_RAWIP):
                self.link_header = 0
            else:
                raise CaptureInterfaceError(
                    f"agent.network_interface: {interface!r} has link type {hardware_type}; "
                    "the mirror captures on Ethernet, loopback and bare-IP interfaces"
                )
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        self._frame = bytearray(FRAME_BUFFER)
        self._view = memoryview(self._frame)
        self.ports: frozenset[int] = frozenset()
        self.truncated = 0
        """Frames larger than :data:`FRAME_BUFFER`, whose segments were skipped."""

    def fileno(self) -> int:
        return self._socket.fileno()

    def set_ports(self, ports: Collection[int]) -> None:
        """Pass the segments of these ports (source or destination) from now on."""
        self.ports = frozenset(ports)
        try:
            program = tcp_filter(self.ports, self.link_header)
        except OverflowError:
            program = tcp_filter(None, self.link_header)
        _attach_filter(self._socket, program)

    def receive(self, max_frames: int, max_bytes: int) -> Iterator[tuple[int, TcpSegment]]:
        """The captured segments that are ready, with their packet type
        (:data:`PACKET_HOST`, :data:`PACKET_OUTGOING`, ...), until ``max_frames`` frames or
        ``max_bytes`` bytes have been read. Each segment's payload is valid until the next
        one is produced."""
        sock, view, size = self._socket, self._view, FRAME_BUFFER
        link_header = self.link_header
        total = 0
        for _ in range(max_frames):
            if total >= max_bytes:
                return
            try:
                length, address = sock.recvfrom_into(view, size, _MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return
            total += length
            if length > size:
                self.truncated += 1
                continue
            segment = parse_frame(view, length, link_header)
            if segment is not None:
                yield address[2], segment

    def take_drops(self) -> int:
        """Frames the kernel dropped because the socket's queue was full, since the last
        call."""
        try:
            raw = self._socket.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, _STATISTICS.size)
        except OSError as err:
            if err.errno == errno.EBADF:
                return 0
            raise
        return _STATISTICS.unpack(raw)[1]

    def close(self) -> None:
        self._socket.close()
