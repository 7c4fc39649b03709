"""Frame parsing and the kernel BPF filter of the mirror's capture.

The filter is run by the kernel itself: attached to one end of a ``AF_UNIX`` datagram
socket pair, it decides which crafted frames sent through the pair are delivered, exactly
as it decides for frames reaching the ``AF_PACKET`` socket.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys

import pytest

from mirrord_network.agent.packet_capture import (
    MAX_FILTERED_PORTS,
    CaptureInterfaceError,
    PacketCapture,
    TcpSegment,
    _attach_filter,
    default_route_interface,
    parse_frame,
    tcp_filter,
)
from mirrord_network.agent.tcp_reassembly import ACK, FIN, SYN

CLIENT4, SERVER4 = bytes([10, 244, 0, 11]), bytes([10, 244, 0, 10])
CLIENT6 = socket.inet_pton(socket.AF_INET6, "fd00::11")
SERVER6 = socket.inet_pton(socket.AF_INET6, "fd00::10")
MACS = bytes(range(12))


def tcp_header(
    sport: int, dport: int, seq: int, ack: int, flags: int, options: bytes = b""
) -> bytes:
    assert len(options) % 4 == 0
    offset = (20 + len(options)) // 4
    return (
        struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, 65535, 0, 0) + options
    )


def ipv4(payload: bytes, *, protocol: int = 6, options: bytes = b"", fragment: int = 0) -> bytes:
    assert len(options) % 4 == 0
    total = 20 + len(options) + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | (5 + len(options) // 4),
        0,
        total if total <= 0xFFFF else 0,  # 0 beyond 64 KiB, as BIG TCP has it
        1,
        fragment,
        64,
        protocol,
        0,
        CLIENT4,
        SERVER4,
    )
    return header + options + payload


def ipv6(payload: bytes, *, next_header: int = 6, extensions: bytes = b"") -> bytes:
    length = len(extensions) + len(payload)
    return struct.pack("!IHBB16s16s", 0x60000000, length, next_header, 64, CLIENT6, SERVER6) + (
        extensions + payload
    )


def ethernet(packet: bytes, ethertype: int, *, vlan: int | None = None) -> bytes:
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    frame = MACS + tag + struct.pack("!H", ethertype) + packet
    return frame + bytes(max(0, 60 - len(frame)))  # Ethernet's minimum frame size


def segment_bytes(data: bytes = b"payload", flags: int = ACK, dport: int = 8080) -> bytes:
    return (
        tcp_header(40000, dport, 123456, 654321, flags, options=b"\x01\x01\x08\x0a" + bytes(8))
        + data
    )


def parse(frame: bytes, link_header: int = 14) -> TcpSegment | None:
    buffer = bytearray(frame) + bytes(64)  # room after the frame, as in the capture buffer
    return parse_frame(memoryview(buffer), len(frame), link_header)


def test_ipv4_segment_with_ip_options_and_tcp_options() -> None:
    frame = ethernet(ipv4(segment_bytes(b"GET /"), options=b"\x01\x01\x01\x00"), 0x0800)
    segment = parse(frame)
    assert segment is not None
    assert (segment.src, segment.sport, segment.dst, segment.dport) == (
        CLIENT4,
        40000,
        SERVER4,
        8080,
    )
    assert (segment.seq, segment.ack, segment.flags) == (123456, 654321, ACK)
    assert bytes(segment.payload) == b"GET /"


def test_ethernet_padding_is_not_payload() -> None:
    frame = ethernet(ipv4(tcp_header(40000, 8080, 1, 2, ACK | FIN)), 0x0800)
    assert len(frame) == 60
    segment = parse(frame)
    assert segment is not None and segment.flags == ACK | FIN and bytes(segment.payload) == b""


def test_vlan_tagged_frames() -> None:
    segment = parse(ethernet(ipv4(segment_bytes(b"tagged")), 0x0800, vlan=42))
    assert segment is not None and bytes(segment.payload) == b"tagged"
    segment6 = parse(ethernet(ipv6(segment_bytes(b"tagged6")), 0x86DD, vlan=7))
    assert segment6 is not None and bytes(segment6.payload) == b"tagged6"


def test_ipv6_with_and_without_extension_headers() -> None:
    segment = parse(ethernet(ipv6(segment_bytes(b"v6")), 0x86DD))
    assert segment is not None and segment.src == CLIENT6 and segment.dst == SERVER6
    assert bytes(segment.payload) == b"v6"
    # Hop-by-hop options (8 bytes) then destination options (16 bytes) before TCP.
    extensions = bytes([60, 0]) + bytes(6) + bytes([6, 1]) + bytes(14)
    segment = parse(
        ethernet(ipv6(segment_bytes(b"ext"), next_header=0, extensions=extensions), 0x86DD)
    )
    assert segment is not None and bytes(segment.payload) == b"ext"


def test_large_coalesced_frame() -> None:
    """GRO/GSO frames exceed the MTU; the IP length (or the frame, when it says 0) rules."""
    data = bytes(range(256)) * 250
    frame = ethernet(ipv4(segment_bytes(data)), 0x0800)
    segment = parse(frame)
    assert segment is not None and bytes(segment.payload) == data
    big = data * 5  # BIG TCP: more than 64 KiB, total length 0
    segment = parse(ethernet(ipv4(segment_bytes(big)), 0x0800))
    assert segment is not None and bytes(segment.payload) == big


def test_bare_ip_link() -> None:
    segment = parse(ipv4(segment_bytes(b"raw")), link_header=0)
    assert segment is not None and bytes(segment.payload) == b"raw"
    segment = parse(ipv6(segment_bytes(b"raw6")), link_header=0)
    assert segment is not None and bytes(segment.payload) == b"raw6"


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(ethernet(ipv4(b"\x00" * 20, protocol=17), 0x0800), id="udp"),
        pytest.param(ethernet(ipv4(segment_bytes(), fragment=100), 0x0800), id="later-fragment"),
        pytest.param(ethernet(b"\x00" * 46, 0x0806), id="arp"),
        pytest.param(ethernet(ipv4(segment_bytes())[:30], 0x0800)[:44], id="truncated-tcp"),
        pytest.param(ethernet(ipv6(b"\x00" * 8, next_header=17), 0x86DD), id="udp6"),
        pytest.param(MACS, id="runt"),
    ],
)
def test_frames_without_a_tcp_segment(frame: bytes) -> None:
    assert parse(frame) is None


def test_bad_data_offset_is_rejected() -> None:
    header = bytearray(segment_bytes())
    header[12] = 0x30  # 12 bytes: less than a TCP header
    assert parse(ethernet(ipv4(bytes(header)), 0x0800)) is None
    header[12] = 0xF0  # 60 bytes: beyond the packet
    assert parse(ethernet(ipv4(bytes(header[:30])), 0x0800)) is None


def passes(program: bytes, frames: list[bytes]) -> list[bool]:
    """Which frames the kernel lets through ``program``."""
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with receiver, sender:
        _attach_filter(receiver, program)
        receiver.setblocking(False)
        results = []
        for frame in frames:
            sender.send(frame)
            try:
                results.append(receiver.recv(len(frame) + 1) == frame)
            except BlockingIOError:
                results.append(False)
        return results


def test_filter_passes_tcp_of_the_subscribed_ports_only() -> None:
    program = tcp_filter([8080, 9090], 14)
    frames = {
        "to 8080": ethernet(ipv4(segment_bytes(dport=8080)), 0x0800),
        "to 9090": ethernet(ipv4(segment_bytes(dport=9090)), 0x0800),
        "from 8080": ethernet(ipv4(tcp_header(8080, 40000, 1, 1, SYN | ACK)), 0x0800),
        "to 8081": ethernet(ipv4(segment_bytes(dport=8081)), 0x0800),
        "options, to 8080": ethernet(ipv4(segment_bytes(dport=8080), options=b"\x01" * 8), 0x0800),
        "options, to 8081": ethernet(ipv4(segment_bytes(dport=8081), options=b"\x01" * 8), 0x0800),
        "vlan, to 8080": ethernet(ipv4(segment_bytes(dport=8080)), 0x0800, vlan=5),
        "vlan, to 8081": ethernet(ipv4(segment_bytes(dport=8081)), 0x0800, vlan=5),
        "ipv6, to 9090": ethernet(ipv6(segment_bytes(dport=9090)), 0x86DD),
        "ipv6, to 9091": ethernet(ipv6(segment_bytes(dport=9091)), 0x86DD),
        "vlan ipv6, to 8080": ethernet(ipv6(segment_bytes(dport=8080)), 0x86DD, vlan=9),
        "ipv6 extension headers": ethernet(
            ipv6(segment_bytes(dport=8081), next_header=0, extensions=bytes([6, 0]) + bytes(6)),
            0x86DD,
        ),
        "udp to 8080": ethernet(ipv4(struct.pack("!HHHH", 1, 8080, 8, 0), protocol=17), 0x0800),
        "later fragment": ethernet(ipv4(segment_bytes(dport=8080), fragment=10), 0x0800),
        "arp": ethernet(b"\x00" * 46, 0x0806),
    }
    expected = {
        "to 8080",
        "to 9090",
        "from 8080",
        "options, to 8080",
        "vlan, to 8080",
        "ipv6, to 9090",
        "vlan ipv6, to 8080",
        "ipv6 extension headers",  # parsed in Python
    }
    results = dict(zip(frames, passes(program, list(frames.values())), strict=True))
    assert {name for name, passed in results.items() if passed} == expected


def test_filter_on_bare_ip_links() -> None:
    program = tcp_filter([8080], 0)
    frames = [
        ipv4(segment_bytes(dport=8080)),
        ipv4(segment_bytes(dport=8081)),
        ipv6(segment_bytes(dport=8080)),
        ipv6(segment_bytes(dport=8081)),
    ]
    assert passes(program, frames) == [True, False, True, False]


def test_many_ports_fall_back_to_every_tcp_segment() -> None:
    ports = range(10000, 10000 + MAX_FILTERED_PORTS + 1)
    program = tcp_filter(ports, 14)
    frames = [
        ethernet(ipv4(segment_bytes(dport=1)), 0x0800),
        ethernet(ipv4(b"\x00" * 20, protocol=17), 0x0800),
    ]
    assert passes(program, frames) == [True, False]
    all_ports = tcp_filter(range(10000, 10000 + MAX_FILTERED_PORTS), 14)
    assert passes(all_ports, [ethernet(ipv4(segment_bytes(dport=10099)), 0x0800)]) == [True]
    assert passes(all_ports, [ethernet(ipv4(segment_bytes(dport=10100)), 0x0800)]) == [False]


def test_capturing_without_cap_net_raw_is_a_clear_error() -> None:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed for this test"
    code = (
        "from mirrord_network.agent.packet_capture import CaptureError, PacketCapture\n"
        "try:\n"
        "    PacketCapture('lo')\n"
        "except CaptureError as error:\n"
        "    print(error)\n"
    )
    # Still root, but CAP_NET_RAW is gone from the bounding set, so the child lacks it.
    without_net_raw = ["--bounding-set=-net_raw", "--inh-caps=-net_raw"]
    result = subprocess.run(
        [setpriv, *without_net_raw, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "needs CAP_NET_RAW" in result.stdout, result.stderr


def test_unknown_interface_names_the_setting() -> None:
    with pytest.raises(CaptureInterfaceError, match=r"agent\.network_interface.*'nosuch0'"):
        PacketCapture("nosuch0")


ROUTE_HEADER = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
)


def route_line(name: str, destination: str, flags: int, metric: int, mask: str) -> str:
    return f"{name}\t{destination}\t010200C0\t{flags:04X}\t0\t0\t{metric}\t{mask}\t0\t0\t0\n"


def ipv6_route_line(destination: str, prefix: int, metric: int, flags: int, name: str) -> str:
    zeros = "0" * 32
    return (
        f"{destination} {prefix:02x} {zeros} 00 {zeros} {metric:08x} 00000001 00000000 "
        f"{flags:08x} {name:>8}\n"
    )


def test_default_route_interface_prefers_the_lowest_metric_ipv4_route() -> None:
    route = ROUTE_HEADER + "".join(
        [
            route_line("eth0", "000AF40A", 0x0001, 0, "00FFFFFF"),  # not a default route
            route_line("lo", "00000000", 0x0003, 0, "00000000"),
            route_line("blackhole", "00000000", 0x0201, 0, "00000000"),  # reject
            route_line("down0", "00000000", 0x0002, 0, "00000000"),  # not up
            route_line("net1", "00000000", 0x0003, 200, "00000000"),
            route_line("net0", "00000000", 0x0003, 100, "00000000"),
        ]
    )
    ipv6 = ipv6_route_line("0" * 32, 0, 1, 0x0003, "v6only")
    assert default_route_interface(route, ipv6) == "net0"


def test_default_route_interface_falls_back_to_ipv6_then_nothing() -> None:
    ipv6 = "".join(
        [
            ipv6_route_line("fd00" + "0" * 28, 64, 256, 0x0001, "eth0"),
            ipv6_route_line("0" * 32, 0, 0xFFFFFFFF, 0x00200200, "lo"),  # unreachable
            ipv6_route_line("0" * 32, 0, 1024, 0x0003, "wan6"),
        ]
    )
    assert default_route_interface(ROUTE_HEADER, ipv6) == "wan6"
    assert default_route_interface(ROUTE_HEADER, "") is None
    assert default_route_interface("", "") is None
