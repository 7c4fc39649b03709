"""Connections that reached a subscribed port of the target, delivered to the local app.

The agent opens one ``net.incoming_connection`` stream per remote connection (mirrored
copy or stolen connection). For each, the relay connects to the local app's listener and
pipes bytes: the stream's bytes to the app, and the app's answers back to the stream when
stealing (a mirrored connection's answers are read and dropped, so the app never blocks
on a full socket). The relay remembers which remote client each of its connections stands
for, keyed by the relay socket's own address, so that ``accept`` and ``getpeername`` in
the app can report the real client (:mod:`mirrord_network.local.incoming_handlers`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import socket
import threading

import attrs

from mirrord_core.protocol import ConnectionLost, Stream
from mirrord_core.protocol.errors import StreamResetError
from mirrord_network.local.sockaddr import InetAddress
from mirrord_network.messages import IncomingConnection

log = logging.getLogger(__name__)

PIPE_CHUNK = 256 * 1024
#: How many relay-address → client entries are kept for accept/getpeername lookups.
MAX_REMEMBERED_PEERS = 4096


@attrs.frozen
class LocalListener:
    """Where the app listens for a subscribed remote port."""

    address: InetAddress
    family: int

    def connect_address(self) -> tuple[str, int]:
        """The address a relay connects to (loopback for a wildcard listener)."""
        host = self.address.host
        if self.address.is_unspecified:
            host = "::1" if self.family == socket.AF_INET6 and ":" in host else "127.0.0.1"
        return (host, self.address.port)


class PeerBook:
    """Remote clients by the address of the relay socket that stands for them.

    Shared between the event loop (relays) and the notification thread (accept), hence
    the lock; bounded, oldest entries go first.
    """

    def __init__(self, capacity: int = MAX_REMEMBERED_PEERS) -> None:
        self._capacity = capacity
        self._peers: collections.OrderedDict[tuple[str, int], InetAddress] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def remember(self, relay_address: tuple[str, int], client: InetAddress) -> None:
        with self._lock:
            self._peers[relay_address] = client
            self._peers.move_to_end(relay_address)
            while len(self._peers) > self._capacity:
                self._peers.popitem(last=False)

    def lookup(self, relay_address: tuple[str, int]) -> InetAddress | None:
        with self._lock:
            return self._peers.get(relay_address)


def relay_key(address: tuple[object, ...]) -> tuple[str, int]:
    """A socket address as the peer book keys it (IPv4-mapped IPv6 as plain IPv4)."""
    return (str(address[0]).removeprefix("::ffff:"), int(address[1]))  # type: ignore[call-overload]


async def relay_incoming(
    stream: Stream, info: IncomingConnection, listener: LocalListener, peers: PeerBook
) -> None:
    """Connect to the app's ``listener`` and pipe ``stream`` through it until both end.

    Raises ``OSError`` before accepting the stream when the app does not accept the
    connection; the agent then treats the connection as undeliverable.
    """
    loop = asyncio.get_running_loop()
    host, port = listener.connect_address()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # Bound first: the app may accept before this coroutine resumes after the
        # handshake, and its accept must already find whom the relay stands for.
        # The source address is the connect address: both are local.
        sock.bind((host, 0))
        peers.remember(
            relay_key(sock.getsockname()), InetAddress(info.client_host, info.client_port)
        )
        await loop.sock_connect(sock, (host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await stream.accept()
        await asyncio.gather(
            _to_app(loop, stream, sock),
            _from_app(loop, stream, sock, discard=info.mirrored),
            return_exceptions=True,
        )
    except ConnectionRefusedError:
        raise OSError(errno.ECONNREFUSED, f"nothing listens on {host}:{port} any more") from None
    finally:
        sock.close()


async def _to_app(loop: asyncio.AbstractEventLoop, stream: Stream, sock: socket.socket) -> None:
    try:
        while data := await stream.read(PIPE_CHUNK):
            await loop.sock_sendall(sock, data)
    except (StreamResetError, ConnectionLost, OSError) as err:
        log.debug("incoming connection to the app ended: %s", err)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


async def _from_app(
    loop: asyncio.AbstractEventLoop, stream: Stream, sock: socket.socket, *, discard: bool
) -> None:
    try:
        while data := await loop.sock_recv(sock, PIPE_CHUNK):
            if not discard:
                await stream.write(data)
        await stream.end()
    except ConnectionResetError:
        stream.reset("the local app reset the connection")
    except (StreamResetError, ConnectionLost, OSError) as err:
        log.debug("the app's answer could not be delivered: %s", err)
        stream.reset("the local app's answer could not be delivered")
