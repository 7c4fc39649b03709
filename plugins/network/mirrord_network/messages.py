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


#: Stream kind: a unix stream socket connected in the target (payload: UnixConnect;
#: ``feature.network.outgoing.unix_streams``).
UNIX_CONNECT_STREAM = "net.unix_connect"


@register_message
@attrs.frozen(kw_only=True)
class UnixConnect(Message):
    """Open payload of a :data:`UNIX_CONNECT_STREAM`.

    ``path`` is a socket file's path, resolved inside the target's root (a relative path
    from the target's ``/``); with ``abstract`` it is a name of the target network
    namespace's abstract socket namespace, without the leading NUL.
    """

    TAG = "net.unix_connect"
    path: bytes
    abstract: bool = False


#: Stream kind (client → agent): a subscription to a port of the target; it lasts until
#: either side ends the stream (payload: Subscribe, accept payload: Subscribed).
INCOMING_SUBSCRIBE_STREAM = "net.incoming_subscribe"
#: Stream kind (agent → client): one connection that reached a subscribed port; the bytes
#: the remote client sent (and, when stealing, what the local app answers) flow on it
#: (payload: IncomingConnection).
INCOMING_CONNECTION_STREAM = "net.incoming_connection"
#: Failure code of a subscription to a port another session already steals.
PORT_BUSY = "port_busy"
#: Failure code of a subscription the agent cannot serve (no capture interface, no nft …).
INCOMING_UNAVAILABLE = "incoming_unavailable"


@register_message
@attrs.frozen(kw_only=True)
class Subscribe(Message):
    """Open payload of an :data:`INCOMING_SUBSCRIBE_STREAM`.

    ``mode`` is ``"mirror"`` or ``"steal"``. With ``header_filter`` set, stealing on a
    port listed in ``http_ports`` takes only the HTTP requests with a matching header
    line; other ports are stolen whole.
    """

    TAG = "net.subscribe"
    port: int
    mode: str
    header_filter: str | None = None
    http_ports: list[int] = attrs.field(factory=list)
    flush_connections: bool = False


@register_message
@attrs.frozen(kw_only=True)
class Subscribed(Message):
    """Accept payload of a subscription: how the agent serves it."""

    TAG = "net.subscribed"
    port: int
    #: ``"mirror"``, ``"steal"`` or ``"steal-http"`` (header-filtered).
    how: str


@register_message
@attrs.frozen(kw_only=True)
class IncomingConnection(Message):
    """Open payload of an :data:`INCOMING_CONNECTION_STREAM`."""

    TAG = "net.incoming_connection"
    #: The subscribed (remote) port.
    port: int
    #: The remote client, as the target saw it.
    client_host: str
    client_port: int
    #: Where the client connected to in the target.
    server_host: str
    server_port: int
    #: A mirrored copy: the local app's answers go nowhere.
    mirrored: bool = False
