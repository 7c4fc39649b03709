"""Connections that reached a subscribed port of the target, delivered to the local app.

The agent opens one ``net.incoming_connection`` stream per remote connection (mirrored
copy or stolen connection). For each, the relay connects to the local app's listener and
pipes bytes: the stream's bytes to the app, and the app's answers back to the stream when
stealing (a mirrored connection's answers are read and dropped, so the app never blocks
on a full socket). The relay remembers which remote client each of its connections stands
for, keyed by the relay socket's own address, so that ``accept`` and ``getpeername`` in
the app can report the real client (:mod:`mirrord_network.local.incoming_handlers`). The
relay connections the app has not accepted yet stay within its listen backlog
(:mod:`mirrord_network.local.accept_gate`): the kernel never has to refuse one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import socket
import threading
from collections.abc import Callable

import attrs

from mirrord_core.protocol import ConnectionLost, Stream
from mirrord_core.protocol.errors import StreamResetError
from mirrord_network.eager_pipe import eager_socket_to_stream, eager_stream_to_socket
from mirrord_network.local.accept_gate import AcceptGate
from mirrord_network.local.sockaddr import InetAddress
from mirrord_network.messages import IncomingConnection

log = logging.getLogger(__name__)

#: How many relay-address → client entries are kept for accept/getpeername lookups.
MAX_REMEMBERED_PEERS = 4096


@attrs.frozen
class LocalListener:
    """Where the app listens for a subscribed remote port, and the relay connections it
    has not accepted yet."""

    address: InetAddress
    family: int
    gate: AcceptGate = attrs.field(eq=False)

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
        self._on_accept: dict[tuple[str, int], Callable[[], None]] = {}
        self._lock = threading.Lock()

    def remember(
        self,
        relay_address: tuple[str, int],
        client: InetAddress,
        on_accept: Callable[[], None] | None = None,
    ) -> None:
        """``relay_address`` stands for ``client``; ``on_accept`` (any thread) is called
        when the app accepts it."""
        with self._lock:
            self._peers[relay_address] = client
            self._peers.move_to_end(relay_address)
            if on_accept is not None:
                self._on_accept[relay_address] = on_accept
            while len(self._peers) > self._capacity:
                forgotten, _ = self._peers.popitem(last=False)
                self._on_accept.pop(forgotten, None)

    def forget(self, relay_address: tuple[str, int]) -> None:
        """The relay connection ended: nothing waits for its accept any more."""
        with self._lock:
            self._on_accept.pop(relay_address, None)

    def claim(self, relay_address: tuple[str, int]) -> InetAddress | None:
        """The app accepted the connection from ``relay_address``: whom it stands for
        (``None`` for a connection that is not the relay's)."""
        with self._lock:
            client = self._peers.get(relay_address)
            on_accept = self._on_accept.pop(relay_address, None)
        if on_accept is not None:
            on_accept()
        return client


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
    async with listener.gate.admit() as accepted:
        sock = socket.socket(family, socket.SOCK_STREAM)
        key: tuple[str, int] | None = None
        try:
            sock.setblocking(False)
            # Bound first: the app may accept before this coroutine resumes after the
            # handshake, and its accept must already find whom the relay stands for.
            # The source address is the connect address: both are local.
            sock.bind((host, 0))
            key = relay_key(sock.getsockname())
            peers.remember(key, InetAddress(info.client_host, info.client_port), accepted)
            await loop.sock_connect(sock, (host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await stream.accept()
            await asyncio.gather(
                _to_app(loop, stream, sock),
                _from_app(loop, stream, sock, discard=info.mirrored),
                return_exceptions=True,
            )
        except ConnectionRefusedError:
            message = f"nothing listens on {host}:{port} any more"
            raise OSError(errno.ECONNREFUSED, message) from None
        finally:
            if key is not None:
                peers.forget(key)
            sock.close()


async def _to_app(loop: asyncio.AbstractEventLoop, stream: Stream, sock: socket.socket) -> None:
    try:
        # Shuts the socket's sending side down at the end of the stream.
        await eager_stream_to_socket(stream, sock)
    except (StreamResetError, ConnectionLost, OSError) as err:
        log.debug("incoming connection to the app ended: %s", err)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


async def _from_app(
    loop: asyncio.AbstractEventLoop, stream: Stream, sock: socket.socket, *, discard: bool
) -> None:
    try:
        # Ends the stream at the app's end of data.
        await eager_socket_to_stream(sock, stream, discard=discard)
    except ConnectionResetError:
        stream.reset("the local app reset the connection")
    except (StreamResetError, ConnectionLost, OSError) as err:
        log.debug("the app's answer could not be delivered: %s", err)
        stream.reset("the local app's answer could not be delivered")
