"""The agent's mirror of incoming TCP traffic: copies of the connections to subscribed
ports of the target, rebuilt from captured packets while the target serves them as usual.

One :class:`MirrorTap` per agent captures on one interface of the target's network
namespace (:mod:`.packet_capture`) and reassembles each connection's client→server bytes
(:mod:`.tcp_reassembly`). Every subscriber of a port gets its own
:class:`MirroredConnection` per connection, with the whole byte stream. Nothing is sent and
nothing is changed in the target's traffic: the capture only reads copies.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import errno
import logging
import socket
from collections.abc import AsyncIterator, Callable

from mirrord_network.agent.packet_capture import (
    PACKET_HOST,
    PACKET_OUTGOING,
    PacketCapture,
    TcpSegment,
    default_interface,
)
from mirrord_network.agent.tcp_reassembly import ACK, RST, SYN, ClientStreamReassembler

log = logging.getLogger("mirrord.agent.mirror")

CONNECTION_BUFFER_LIMIT = 8 * 1024 * 1024
"""Bytes a subscriber may leave unread on one connection before it is ended (overflowed).
A reader that keeps up holds at most about two capture batches (512 KiB)."""
IDLE_TIMEOUT = 120.0
"""A connection with no packet in either direction for this long is ended (expired)."""
ENDED_FLOW_LINGER = 30.0
"""How long an ended connection's state stays to absorb late retransmissions, which would
otherwise look like a connection joined mid-stream."""
READ_CHUNK = 1024 * 1024
# Frames and bytes handled per wake-up: a flood cannot starve the event loop, and readers
# run between batches, so one that keeps up never holds much more than two batches.
_BATCH_FRAMES = 512
_BATCH_BYTES = 256 * 1024


class MirrorEnd(enum.Enum):
    """Why a mirrored connection ended."""

    FIN = "fin"
    """The client finished sending; every byte up to its FIN was delivered."""
    RESET = "reset"
    """The client or the server reset the connection."""
    LOST = "lost"
    """The capture missed bytes that the server received (or the connection outlived the
    capture): the copy ends before the gap rather than continuing with a hole."""
    OVERFLOWED = "overflowed"
    """The subscriber left more than the buffer limit unread."""
    EXPIRED = "expired"
    """No packet for the idle timeout (a vanished client, a long-idle connection)."""
    CLOSED = "closed"
    """The subscriber unsubscribed or the tap was closed."""


class MirroredConnection:
    """The client→server bytes of one connection to a mirrored port, for one subscriber."""

    def __init__(
        self,
        client: tuple[str, int],
        server: tuple[str, int],
        buffer_limit: int = CONNECTION_BUFFER_LIMIT,
    ) -> None:
        self.client = client
        """The remote peer (source address and port)."""
        self.server = server
        """The destination: the target's address and the mirrored port."""
        self.end_reason: MirrorEnd | None = None
        """Why the connection ended; ``None`` while bytes may still come."""
        self._limit = buffer_limit
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._on_end: Callable[[MirroredConnection], None] | None = None

    @property
    def reset(self) -> bool:
        """The connection was reset."""
        return self.end_reason is MirrorEnd.RESET

    @property
    def overflowed(self) -> bool:
        """The reader fell too far behind and the copy was ended."""
        return self.end_reason is MirrorEnd.OVERFLOWED

    @property
    def lost(self) -> bool:
        """The capture missed bytes; the copy ended before them."""
        return self.end_reason is MirrorEnd.LOST

    async def read(self) -> bytes:
        """The next in-order bytes; ``b""`` once the connection ended (see
        :attr:`end_reason`). Bytes received before a FIN, reset, loss or overflow are read
        first; after an unsubscribe or :meth:`MirrorTap.close` nothing more is returned."""
        while not self._chunks:
            if self.end_reason is not None:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        if len(chunks) == 1 or len(chunks[0]) >= READ_CHUNK:
            data = chunks.popleft()
        else:
            parts, size = [], 0
            while chunks and size + len(chunks[0]) <= READ_CHUNK:
                parts.append(chunks.popleft())
                size += len(parts[-1])
            data = b"".join(parts)
        self._buffered -= len(data)
        return data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while data := await self.read():
            yield data

    def __repr__(self) -> str:
        state = self.end_reason.value if self.end_reason else "open"
        return f"<MirroredConnection {self.client} -> {self.server} {state}>"

    def _feed(self, data: bytes) -> None:
        if self.end_reason is not None:
            return
        if self._buffered + len(data) > self._limit:
            self._finish(MirrorEnd.OVERFLOWED)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()

    def _finish(self, reason: MirrorEnd) -> None:
        if self.end_reason is not None:
            return
        self.end_reason = reason
        if reason is MirrorEnd.CLOSED:
            self._chunks.clear()
            self._buffered = 0
        self._wake()
        if self._on_end is not None:
            self._on_end(self)
            self._on_end = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Subscriber:
    __slots__ = ("active", "connections", "on_connection", "port")

    def __init__(self, port: int, on_connection: Callable[[MirroredConnection], None]) -> None:
        self.port = port
        self.on_connection = on_connection
        self.connections: set[MirroredConnection] = set()
        self.active = True


_FlowKey = tuple[bytes, int, bytes, int]  # client address, client port, server address, port


class _Flow:
    __slots__ = (
        "client",
        "connections",
        "ended",
        "last_seen",
        "port",
        "served",
        "server",
        "stream",
    )

    def __init__(self, key: _FlowKey, stream: ClientStreamReassembler, now: float) -> None:
        self.client = (_address(key[0]), key[1])
        self.server = (_address(key[2]), key[3])
        self.port = key[3]
        self.stream = stream
        self.connections: list[MirroredConnection] = []
        self.served: set[_Subscriber] = set()
        self.last_seen = now
        self.ended = False


def _address(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


class MirrorTap:
    """Sniffs one interface of the current network namespace (the agent has already
    setns'd into the target's) and hands out copies of the connections to subscribed ports.

    Use it from one event loop: :meth:`subscribe` and the unsubscribe functions must be
    called on the loop's thread, which must be in the target's network namespace.
    """

    def __init__(
        self,
        interface: str | None = None,
        *,
        buffer_limit: int = CONNECTION_BUFFER_LIMIT,
        idle_timeout: float = IDLE_TIMEOUT,
        ended_linger: float = ENDED_FLOW_LINGER,
    ) -> None:
        self._interface = interface
        self._buffer_limit = buffer_limit
        self._idle_timeout = idle_timeout
        self._ended_linger = ended_linger
        self._loop: asyncio.AbstractEventLoop | None = None
        self._capture: PacketCapture | None = None
        self._subscribers: dict[int, list[_Subscriber]] = {}
        self._flows: dict[_FlowKey, _Flow] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.kernel_drops = 0
        """Frames the kernel dropped because the capture fell behind (since opened)."""

    @property
    def interface(self) -> str | None:
        """The interface captured on (resolved when the capture opens)."""
        return self._capture.interface if self._capture else self._interface

    @property
    def capturing(self) -> bool:
        """The capture socket is open (there are subscribers)."""
        return self._capture is not None

    @property
    def flow_count(self) -> int:
        """Connections whose state the tap holds (open ones and recently ended ones)."""
        return len(self._flows)

    def subscribe(
        self, port: int, on_connection: Callable[[MirroredConnection], None]
    ) -> Callable[[], None]:
        """Start delivering every new TCP connection to local port ``port`` (destination
        port) to ``on_connection``, called on the event loop once per connection per
        subscriber: every subscriber of a port gets its own :class:`MirroredConnection`
        with the full byte stream. Connections already open are delivered too, from the
        next data segment on. Opens the capture socket on first use (raising
        :class:`~.packet_capture.CaptureError`, e.g. for an interface that does not exist).
        Returns an unsubscribe function; the capture socket is closed when the last
        subscriber leaves."""
        if not 0 < port < 65536:
            raise ValueError(f"invalid port {port}")
        if self._capture is None:
            self._open()
        subscriber = _Subscriber(port, on_connection)
        subscribers = self._subscribers.setdefault(port, [])
        subscribers.append(subscriber)
        if len(subscribers) == 1:
            self._update_ports()
        return lambda: self._unsubscribe(subscriber)

    async def close(self) -> None:
        """End every connection and subscription and close the capture."""
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                self._drop_subscriber(subscriber)
        self._subscribers.clear()
        for flow in self._flows.values():
            self._end_flow(flow, MirrorEnd.CLOSED)
        self._flows.clear()
        self._close_capture()

    def _open(self) -> None:
        loop = asyncio.get_running_loop()
        capture = PacketCapture(self._interface or default_interface())
        try:
            loop.add_reader(capture.fileno(), self._on_readable)
        except BaseException:
            capture.close()
            raise
        self._loop, self._capture = loop, capture
        self.kernel_drops = 0
        self._sweeper = loop.call_later(self._sweep_interval(), self._sweep)
        log.info("mirror: capturing on %s", capture.interface)

    def _close_capture(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._capture is not None and self._loop is not None:
            self._loop.remove_reader(self._capture.fileno())
            self._capture.close()
            self._capture = None

    def _update_ports(self) -> None:
        if self._capture is not None:
            self._capture.set_ports(self._subscribers)

    def _unsubscribe(self, subscriber: _Subscriber) -> None:
        if not subscriber.active:
            return
        port = subscriber.port
        subscribers = self._subscribers.get(port, [])
        with contextlib.suppress(ValueError):
            subscribers.remove(subscriber)
        self._drop_subscriber(subscriber)
        if subscribers:
            for flow in self._flows.values():
                if flow.port == port:
                    flow.served.discard(subscriber)
                    flow.connections = [c for c in flow.connections if c.end_reason is None]
            return
        self._subscribers.pop(port, None)
        self._flows = {key: flow for key, flow in self._flows.items() if flow.port != port}
        if self._subscribers:
            self._update_ports()
        else:
            self._flows.clear()
            self._close_capture()

    @staticmethod
    def _drop_subscriber(subscriber: _Subscriber) -> None:
        subscriber.active = False
        for connection in list(subscriber.connections):
            connection._finish(MirrorEnd.CLOSED)

    def _on_readable(self) -> None:
        capture = self._capture
        if capture is None or self._loop is None:
            return
        now = self._loop.time()
        ports = self._subscribers
        flows = self._flows
        try:
            for packet_type, segment in capture.receive(_BATCH_FRAMES, _BATCH_BYTES):
                if packet_type == PACKET_OUTGOING:
                    if segment.sport in ports:
                        key = (segment.dst, segment.dport, segment.src, segment.sport)
                        flow = flows.get(key)
                        if flow is not None:
                            flow.last_seen = now
                            self._server_segment(flow, segment)
                elif packet_type == PACKET_HOST and segment.dport in ports:
                    self._client_segment(segment, now)
        except OSError as err:
            if err.errno == errno.ENETDOWN:
                # The interface went down; the socket resumes when it is up again, and
                # connections that missed bytes meanwhile end as lost.
                log.warning("mirror: %s is down", capture.interface)
                return
            log.error("mirror: capture on %s failed: %s", capture.interface, err)
            for flow in self._flows.values():
                self._end_flow(flow, MirrorEnd.LOST)
            self._flows.clear()
            self._close_capture()

    def _client_segment(self, segment: TcpSegment, now: float) -> None:
        key = (segment.src, segment.sport, segment.dst, segment.dport)
        flags = segment.flags
        flow = self._flows.get(key)
        if flow is not None and flow.stream.is_new_connection(segment.seq, flags):
            # The client reused its port for a new connection: the old one ended unseen.
            self._end_flow(flow, MirrorEnd.LOST)
            flow = None
        if flow is None:
            if flags & RST or not (segment.payload or flags & (SYN | ACK) == SYN):
                return  # only a SYN or data opens a connection we have not seen
            flow = self._flows[key] = _Flow(key, ClientStreamReassembler(), now)
        flow.last_seen = now
        if flow.ended:
            return
        stream = flow.stream
        data = stream.client_segment(segment.seq, flags, segment.payload)
        if data:
            self._connect_subscribers(flow)
            for connection in flow.connections:
                connection._feed(data)
        if stream.end is not None:
            self._end_flow(flow, MirrorEnd(stream.end.value))

    def _server_segment(self, flow: _Flow, segment: TcpSegment) -> None:
        if flow.ended:
            return
        stream = flow.stream
        stream.server_segment(segment.flags, segment.ack)
        if stream.end is not None:
            self._end_flow(flow, MirrorEnd(stream.end.value))
        elif stream.accepted:
            # The server accepted the connection: subscribers see it before any data.
            self._connect_subscribers(flow)

    def _connect_subscribers(self, flow: _Flow) -> None:
        """Give every subscriber of the flow's port that has none yet a connection (late
        subscribers join a known connection at its next bytes)."""
        served = flow.served
        for subscriber in self._subscribers.get(flow.port, ()):
            if subscriber in served:
                continue
            served.add(subscriber)
            connection = MirroredConnection(flow.client, flow.server, self._buffer_limit)
            connection._on_end = subscriber.connections.discard
            subscriber.connections.add(connection)
            flow.connections.append(connection)
            assert self._loop is not None
            self._loop.call_soon(self._announce, subscriber, connection)

    @staticmethod
    def _announce(subscriber: _Subscriber, connection: MirroredConnection) -> None:
        if not subscriber.active:
            return
        try:
            subscriber.on_connection(connection)
        except Exception:
            log.exception("mirror: subscriber of port %d failed", subscriber.port)

    @staticmethod
    def _end_flow(flow: _Flow, reason: MirrorEnd) -> None:
        flow.ended = True
        for connection in flow.connections:
            connection._finish(reason)
        flow.connections.clear()

    def _sweep_interval(self) -> float:
        return max(0.5, min(10.0, self._idle_timeout / 4, self._ended_linger / 2))

    def _sweep(self) -> None:
        """Forget ended connections after the linger time and expire idle ones."""
        if self._capture is None or self._loop is None:
            return
        now = self._loop.time()
        for key, flow in list(self._flows.items()):
            idle = now - flow.last_seen
            if flow.ended:
                if idle > self._ended_linger:
                    del self._flows[key]
            elif idle > self._idle_timeout:
                self._end_flow(flow, MirrorEnd.EXPIRED)
                del self._flows[key]
        drops = self._capture.take_drops()
        if drops:
            self.kernel_drops += drops
            log.warning(
                "mirror: the kernel dropped %d captured frames on %s (the agent fell behind); "
                "connections missing bytes end as lost",
                drops,
                self._capture.interface,
            )
        self._sweeper = self._loop.call_later(self._sweep_interval(), self._sweep)
