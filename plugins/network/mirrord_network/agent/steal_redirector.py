"""Stealing incoming TCP connections in the target's network namespace.

One :class:`StealRedirector` per agent. :meth:`~StealRedirector.start` (called in the
target's network namespace) binds a listener on an ephemeral port and creates the agent's
nftables table (:mod:`.nft_steal_table`); :meth:`~StealRedirector.steal` adds a port to the
table's set, after which every new TCP connection arriving at that port from outside the
namespace is redirected to the listener. For each one, the redirector learns the original
destination (``SO_ORIGINAL_DST``) and

- without a header filter, hands the whole connection to the subscriber: ``opener(info)``
  returns a :class:`~.byte_pipes.Pipe` (a protocol stream to the session) and bytes are
  spliced both ways (between the raw socket and a protocol stream by
  :mod:`mirrord_network.eager_pipe`, without a task wake-up per message);
- with a header filter, routes each HTTP/1.x request by its headers
  (:mod:`.http_request_router`): matching ones through ``opener(info)``, the others to
  the original destination, i.e. the pod's own app.

When the subscriber cannot be reached (``opener`` fails), the connection is passed on to
the original destination instead of being dropped. The agent's own connections to the
original destination are not redirected again: the redirect is in ``prerouting``, which
only sees packets arriving from outside the namespace. For the same reason, clients inside
the pod (sidecars, ``localhost``) are not stolen.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import struct
from collections.abc import Awaitable, Callable

import attrs

from mirrord_core.protocol import Stream
from mirrord_network.agent.byte_pipes import (
    CHUNK,
    Pipe,
    SocketPipe,
    close_quietly,
    reset_on_close,
    splice,
)
from mirrord_network.agent.connection_flusher import FlushError, flush_established_connections
from mirrord_network.agent.http_request_router import route_http_requests
from mirrord_network.agent.nft_steal_table import (
    REFRESH_INTERVAL,
    NftablesError,
    StealTable,
    port_stolen_elsewhere,
    sweep_stale_tables,
)
from mirrord_network.eager_pipe import eager_socket_to_stream, eager_stream_to_socket
from mirrord_network.socket_pipe import run_both

__all__ = [
    "FlushError",
    "NftablesError",
    "Opener",
    "Pipe",
    "PortAlreadyStolen",
    "StealError",
    "StealRedirector",
    "StolenConnectionInfo",
]

log = logging.getLogger("mirrord.agent.steal")

#: ``SO_ORIGINAL_DST`` (``SOL_IP``) and ``IP6T_SO_ORIGINAL_DST`` (``SOL_IPV6``): 80 both.
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
_SOCKADDR_IN = struct.Struct("!2xH4s8x")
_SOCKADDR_IN6 = struct.Struct("!2xHI16sI")


class StealError(Exception):
    """A port cannot be stolen; the message says why."""


class PortAlreadyStolen(StealError):
    """The port is already stolen by another subscription (of this agent or another)."""

    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} is already stolen by another mirrord session")
        self.port = port


@attrs.frozen
class StolenConnectionInfo:
    """Who connected, and where to: what the session's ``accept``/``getpeername`` report."""

    #: The real remote peer (address, port).
    client: tuple[str, int]
    #: The address the client connected to, before the redirect (address, port).
    destination: tuple[str, int]


Opener = Callable[[StolenConnectionInfo], Awaitable[Pipe]]


@attrs.define(eq=False)
class _Subscription:
    port: int
    opener: Opener
    header_filter: re.Pattern[str] | None


def _plain_address(address: str) -> str:
    parsed = ipaddress.ip_address(address.partition("%")[0])
    mapped = getattr(parsed, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else address


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """Where a redirected connection was going (``None`` if it was not redirected)."""
    with contextlib.suppress(OSError):
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN.size)
        port, address = _SOCKADDR_IN.unpack_from(raw)
        return str(ipaddress.IPv4Address(address)), port
    with contextlib.suppress(OSError):
        raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6.size)
        port, _, address, _ = _SOCKADDR_IN6.unpack_from(raw)
        return _plain_address(str(ipaddress.IPv6Address(address))), port
    return None


def _bind_listener() -> socket.socket:
    """A listener on an ephemeral port: dual-stack if the namespace has IPv6."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return socket.create_server(("0.0.0.0", 0), backlog=1024)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        sock.listen(1024)
    except OSError:
        sock.close()
        return socket.create_server(("0.0.0.0", 0), backlog=1024)
    return sock


class StealRedirector:
    """The agent-wide stealer; see the module docstring.

    Not thread-safe: use it from the agent's event loop. ``start`` and ``close`` bracket
    its life; ``close`` removes the nftables table on every way out that runs Python code,
    and the set's timeouts cover the ones that do not (``kill -9``).
    """

    def __init__(self) -> None:
        self._table: StealTable | None = None
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._subscriptions: dict[int, _Subscription] = {}
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def table_name(self) -> str | None:
        """The name of this agent's nftables table (``inet`` family) once started."""
        return self._table.name if self._table is not None else None

    @property
    def listener_port(self) -> int | None:
        """The port redirected connections arrive at, once started."""
        return self._table.listener_port if self._table is not None else None

    async def start(self) -> None:
        """Sweep stale tables of dead agents, create this agent's table, listen, refresh.

        Must run in the target's network namespace. Raises :class:`NftablesError` when
        nftables cannot be used (the message has nft's own error).
        """
        if self._table is not None:
            raise RuntimeError("the steal redirector is already started")
        for name in sweep_stale_tables():
            log.info("removed the nftables table %s of an agent that is gone", name)
        listener = _bind_listener()
        try:
            table = StealTable(listener.getsockname()[1])
            table.create()
        except BaseException:
            listener.close()
            raise
        self._table = table
        listener.setblocking(False)
        self._listener = listener
        self._acceptor = asyncio.create_task(self._accept_forever(listener))
        self._refresher = asyncio.create_task(self._refresh_forever())
        log.info("steal redirector: table %s, listener port %d", table.name, table.listener_port)

    def steal(
        self,
        port: int,
        opener: Opener,
        header_filter: re.Pattern[str] | None = None,
        *,
        flush_connections: bool = False,
    ) -> Callable[[], None]:
        """Redirect ``port``; returns the function that releases it (idempotent).

        Every redirected connection (``header_filter is None``), or every connection with
        a request whose headers match, goes through ``opener(info)``. Raises
        :class:`PortAlreadyStolen` if another subscription (of this agent or another
        agent in the namespace) steals the port, :class:`StealError` (e.g. a
        :class:`NftablesError`, :class:`FlushError`) if it cannot be stolen. With
        ``flush_connections``, established connections to the port are aborted once the
        redirect is in place, so that their clients reconnect into it.
        """
        table = self._table
        if table is None:
            raise RuntimeError("start() the steal redirector first")
        if not 0 < port < 65536:
            raise StealError(f"cannot steal port {port}: not a TCP port number")
        if port in self._subscriptions or port_stolen_elsewhere(port, table.name):
            raise PortAlreadyStolen(port)
        subscription = _Subscription(port, opener, header_filter)
        self._subscriptions[port] = subscription

        def release() -> None:
            if self._subscriptions.get(port) is not subscription:
                return
            del self._subscriptions[port]
            if self._table is not None:
                try:
                    self._table.remove_port(port)
                except NftablesError as error:
                    # It expires within the element timeout anyway.
                    log.warning("releasing port %d: %s", port, error)

        try:
            table.add_port(port)
            if flush_connections:
                count = flush_established_connections(port)
                log.info("port %d: aborted %d established connections", port, count)
        except (NftablesError, FlushError) as error:
            release()
            raise StealError(f"cannot steal port {port}: {error}") from None
        log.info("stealing port %d (%s)", port, "filtered" if header_filter else "whole")
        return release

    async def close(self) -> None:
        """Remove the table, stop listening and abort the stolen connections (idempotent)."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        self._subscriptions.clear()
        if self._table is not None:
            try:
                self._table.delete()
            except NftablesError as error:
                log.error("could not remove the steal table: %s", error)
            self._table = None
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            table = self._table
            ports = set(self._subscriptions)
            if table is None or not ports:
                continue
            try:
                await table.refresh(ports)
            except (NftablesError, OSError) as error:
                log.error("could not refresh the stolen ports: %s", error)
                continue
            # A port released while the refresh was under way has just been added back.
            for port in ports - set(self._subscriptions):
                with contextlib.suppress(NftablesError):
                    table.remove_port(port)

    async def _accept_forever(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as error:
                # Out of descriptors or memory: the connection waits in the backlog.
                log.warning("accepting a stolen connection: %s", error)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._serve(sock))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self._serve_connection(sock)
        except asyncio.CancelledError:
            pass
        finally:
            sock.close()

    async def _serve_connection(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            peer = sock.getpeername()
        except OSError:
            return  # already gone
        destination = original_destination(sock)
        if destination is None:
            # Someone connected to the listener directly: nothing to steal.
            (await _socket_pipe(sock)).reset("not a redirected connection")
            return
        info = StolenConnectionInfo(
            client=(_plain_address(peer[0]), peer[1]), destination=destination
        )

        async def open_original() -> Pipe:
            return await SocketPipe.connect(*destination)

        subscription = self._subscriptions.get(destination[1])
        if subscription is None:
            # Released after the connection was redirected: the pod's app gets it.
            await self._pass_through(await _socket_pipe(sock), info)
            return
        if subscription.header_filter is not None:
            opener = subscription.opener
            await route_http_requests(
                await _socket_pipe(sock),
                subscription.header_filter,
                lambda: opener(info),
                open_original,
            )
            return
        try:
            stolen = await subscription.opener(info)
        except Exception as error:
            log.info("port %d: the subscriber is gone (%r), passing on", destination[1], error)
            await self._pass_through(await _socket_pipe(sock), info)
            return
        if isinstance(stolen, Stream):
            await _relay_to_stream(sock, stolen)
        else:
            await splice(await _socket_pipe(sock), stolen)

    async def _pass_through(self, client: SocketPipe, info: StolenConnectionInfo) -> None:
        try:
            original = await SocketPipe.connect(*info.destination)
        except OSError as error:
            log.info("cannot reach %s:%d: %s", *info.destination, error)
            client.reset("the original destination is unreachable")
            return
        await splice(client, original)


async def _socket_pipe(sock: socket.socket) -> SocketPipe:
    """The accepted ``sock`` as a :class:`SocketPipe` (asyncio streams own it from now)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK)
    transport, _ = await loop.connect_accepted_socket(
        lambda: asyncio.StreamReaderProtocol(reader), sock
    )
    writer = asyncio.StreamWriter(transport, transport.get_protocol(), reader, loop)  # type: ignore[arg-type]
    return SocketPipe(reader, writer)


async def _relay_to_stream(sock: socket.socket, stream: Stream) -> None:
    """What :func:`~.byte_pipes.splice` does for a socket and a stream, message by message
    without a task wake-up each: both ways until both ended; a failure of either side
    resets the other."""
    try:
        await run_both(eager_socket_to_stream(sock, stream), eager_stream_to_socket(stream, sock))
    except BaseException as error:
        stream.reset(f"the other side failed: {error!r}"[:200])
        reset_on_close(sock)
        if not isinstance(error, Exception):
            raise
    finally:
        await close_quietly(stream)
