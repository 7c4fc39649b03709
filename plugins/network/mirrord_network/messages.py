"""Wire messages of the network plugin (shared by its local and agent sides)."""

from __future__ import annotations

import attrs

from mirrord_core.protocol import Message, register_message

#: Stream kind: an outgoing TCP connection made from the target (payload: TcpConnect).
TCP_CONNECT_STREAM = "net.tcp_connect"
#: Stream kind: a connected UDP socket in the target (payload: UdpConnect); each datagram
#: travels as a 2-byte big-endian length followed by its bytes.
UDP_STREAM = "net.udp"
#: Failure codes of Resolve (getaddrinfo's EAI_NONAME and EAI_AGAIN).
NAME_NOT_FOUND = "name_not_found"
NAME_UNAVAILABLE = "name_unavailable"


@register_message
@attrs.frozen(kw_only=True)
class Resolve(Message):
    """Resolve ``name`` as the target would; ``family`` is AF_UNSPEC, AF_INET or AF_INET6."""

    TAG = "net.resolve"
    name: str
    family: int = 0


@register_message
@attrs.frozen(kw_only=True)
class Addresses(Message):
    TAG = "net.addresses"
    addresses: list[str]


@register_message
@attrs.frozen(kw_only=True)
class TcpConnect(Message):
    """Open payload of a :data:`TCP_CONNECT_STREAM`."""

    TAG = "net.tcp_connect"
    host: str
    port: int


@register_message
@attrs.frozen(kw_only=True)
class UdpConnect(Message):
    """Open payload of a :data:`UDP_STREAM`."""

    TAG = "net.udp_connect"
    host: str
    port: int


@register_message
@attrs.frozen(kw_only=True)
class Connected(Message):
    """Accept payload of an outgoing stream: the socket's local address in the target."""

    TAG = "net.connected"
    local_host: str
    local_port: int
