"""The agent side of incoming traffic: port subscriptions and the connections they bring.

A client subscribes a port of the target by opening a ``net.incoming_subscribe`` stream;
the subscription lasts as long as that stream (so a client that goes away, however it
goes, unsubscribes). Every connection that reaches a subscribed port is pushed to the
client as a ``net.incoming_connection`` stream the agent opens:

- mirror: a copy of the bytes the remote client sent, reassembled from sniffed packets
  (:mod:`mirrord_network.agent.mirror_tap`); the target answers its client itself.
- steal: the connection itself, redirected to the agent by nftables
  (:mod:`mirrord_network.agent.steal_redirector`); what the client's local app answers goes
  back to the remote client. With a header filter, only matching HTTP requests come to the
  client and the rest go on to the target's own app.

Both services are agent-wide (one capture socket, one nft table, whatever the number of
clients) and live in the agent's lifespan, which removes the nft table on every exit.

A client has a limited number of streams (the protocol's ``max_streams``). Its mirrored
connections hold at most half of them at once; more wait in the agent, their bytes
buffered by the tap, until the client has finished one: a client that falls behind for a
while (a busy machine, an app that accepts slowly) gets every connection late rather than
some never.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from mirrord_core.agent.handlers import AgentContext
from mirrord_core.protocol import Connection, ConnectionLost, RequestFailed, Stream
from mirrord_core.protocol.errors import StreamResetError
from mirrord_network.messages import (
    INCOMING_CONNECTION_STREAM,
    INCOMING_UNAVAILABLE,
    PORT_BUSY,
    IncomingConnection,
    Subscribe,
    Subscribed,
)

if TYPE_CHECKING:
    from mirrord_network.agent.mirror_tap import MirroredConnection, MirrorTap
    from mirrord_network.agent.steal_redirector import StealRedirector, StolenConnectionInfo

log = logging.getLogger("mirrord.agent.incoming")

SERVICE_KEY = "network.incoming"
MODES = ("mirror", "steal")
#: Longest header filter accepted (the regex is compiled in the agent).
MAX_FILTER_LENGTH = 4096
#: Mirrored connections of one client that may wait for a stream; beyond, new ones are
#: dropped (with a warning): a client that never catches up must not exhaust the agent.
MAX_WAITING_MIRRORED = 8192


class MirrorDeliveries:
    """The mirrored connections being sent to one client: at most ``limit`` streams at
    once, at most ``max_waiting`` more waiting for one."""

    def __init__(self, limit: int, max_waiting: int = MAX_WAITING_MIRRORED) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._max_waiting = max_waiting
        self.waiting = 0
        self.dropped = 0
        """Connections given up because too many were waiting."""

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[bool]:
        """Hold one stream's worth of room; yields ``False`` (holding nothing) when the
        connection must be dropped."""
        if self.waiting >= self._max_waiting:
            self.dropped += 1
            yield False
            return
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield True
        finally:
            self._slots.release()


class IncomingServices:
    """The agent-wide capture tap and steal redirector, started on first use."""

    def __init__(self, interface: str | None) -> None:
        self.interface = interface
        self._tap: MirrorTap | None = None
        self._redirector: StealRedirector | None = None
        self._starting = asyncio.Lock()
        self._deliveries: dict[Connection, MirrorDeliveries] = {}

    def tap(self) -> MirrorTap:
        # Imported on first use: an agent nobody subscribes to never loads the capture code.
        from mirrord_network.agent.mirror_tap import MirrorTap

        if self._tap is None:
            self._tap = MirrorTap(self.interface)
        return self._tap

    async def redirector(self) -> StealRedirector:
        async with self._starting:
            if self._redirector is None:
                from mirrord_network.agent.steal_redirector import StealRedirector

                redirector = StealRedirector()
                await redirector.start()
                self._redirector = redirector
            return self._redirector

    def deliveries(self, connection: Connection) -> MirrorDeliveries:
        """The mirrored connections being sent to ``connection``'s client."""
        deliveries = self._deliveries.get(connection)
        if deliveries is None:
            limit = max(1, connection.options.max_streams // 2)
            deliveries = self._deliveries[connection] = MirrorDeliveries(limit)
            connection.add_close_callback(self._forget_client)
        return deliveries

    def _forget_client(self, connection: Connection) -> None:
        self._deliveries.pop(connection, None)

    async def close(self) -> None:
        if self._redirector is not None:
            await self._redirector.close()
        if self._tap is not None:
            await self._tap.close()


@contextlib.asynccontextmanager
async def incoming_lifespan(context: AgentContext) -> AsyncIterator[None]:
    """Make the incoming services available to handlers; tear them down on exit."""
    services = IncomingServices(context.network_interface)
    context.services[SERVICE_KEY] = services
    try:
        yield
    finally:
        await services.close()


def _check(request: Subscribe) -> re.Pattern[str] | None:
    if not 0 < request.port < 65536:
        raise RequestFailed("invalid_port", f"invalid port {request.port}")
    if request.mode not in MODES:
        raise RequestFailed("invalid_mode", f"unknown incoming mode {request.mode[:40]!r}")
    if request.mode != "steal" or not request.header_filter:
        return None
    if request.port not in request.http_ports:
        return None
    if len(request.header_filter) > MAX_FILTER_LENGTH:
        raise RequestFailed("invalid_filter", "the HTTP header filter is too long")
    try:
        return re.compile(request.header_filter)
    except re.error as err:
        raise RequestFailed(
            "invalid_filter", f"feature.network.incoming.http_filter.header_filter: {err}"
        ) from None


async def subscribe(stream: Stream, request: Subscribe) -> None:
    """Serve one subscription until the client ends it (or goes away)."""
    header_filter = _check(request)
    connection = stream.connection
    services: IncomingServices = AgentContext.of(connection).services[SERVICE_KEY]
    if request.mode == "steal":
        release = await _steal(connection, services, request, header_filter)
        how = "steal-http" if header_filter is not None else "steal"
    else:
        release = _mirror(connection, services, request.port)
        how = "mirror"
    log.info("client %s: %s port %d", connection.peer_name, how, request.port)
    try:
        await stream.accept(Subscribed(port=request.port, how=how))
        # The client sends nothing on this stream: its end (or loss) is the unsubscribe.
        while await stream.read():
            pass
    finally:
        release()
        log.info("client %s: port %d released", connection.peer_name, request.port)


async def _steal(
    connection: Connection,
    services: IncomingServices,
    request: Subscribe,
    header_filter: re.Pattern[str] | None,
) -> Callable[[], None]:
    from mirrord_network.agent.steal_redirector import PortAlreadyStolen, StealError

    try:
        redirector = await services.redirector()
    except (StealError, OSError) as err:
        raise RequestFailed(INCOMING_UNAVAILABLE, f"cannot steal traffic: {err}") from None

    async def open_to_client(info: StolenConnectionInfo) -> Stream:
        return await connection.open_stream(
            INCOMING_CONNECTION_STREAM,
            IncomingConnection(
                port=request.port,
                client_host=info.client[0],
                client_port=info.client[1],
                server_host=info.destination[0],
                server_port=info.destination[1],
            ),
        )

    try:
        return redirector.steal(
            request.port,
            open_to_client,
            header_filter,
            flush_connections=request.flush_connections,
        )
    except PortAlreadyStolen as err:
        raise RequestFailed(PORT_BUSY, str(err)) from None
    except (StealError, OSError) as err:
        message = f"cannot steal port {request.port}: {err}"
        raise RequestFailed(INCOMING_UNAVAILABLE, message) from None


def _mirror(connection: Connection, services: IncomingServices, port: int) -> Callable[[], None]:
    tasks: set[asyncio.Task[None]] = set()
    deliveries = services.deliveries(connection)

    def on_connection(mirrored: MirroredConnection) -> None:
        push = _push_mirrored(connection, port, mirrored, deliveries)
        task = asyncio.get_running_loop().create_task(push)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    from mirrord_network.agent.packet_capture import CaptureError

    try:
        unsubscribe = services.tap().subscribe(port, on_connection)
    except (CaptureError, OSError) as err:
        raise RequestFailed(INCOMING_UNAVAILABLE, f"cannot mirror port {port}: {err}") from None

    def release() -> None:
        unsubscribe()
        for task in list(tasks):
            task.cancel()

    return release


async def _push_mirrored(
    connection: Connection, port: int, mirrored: MirroredConnection, deliveries: MirrorDeliveries
) -> None:
    """Send one mirrored connection's bytes to the client once it has room for another
    stream; the client's answers are discarded."""
    async with deliveries.slot() as room:
        if not room:
            if deliveries.dropped & (deliveries.dropped - 1) == 0:  # 1, 2, 4, 8 …: no flood
                log.warning(
                    "mirror: client %s is %d mirrored connections behind; dropped the one "
                    "from %s (%d dropped so far)",
                    connection.peer_name,
                    deliveries.waiting,
                    mirrored.client,
                    deliveries.dropped,
                )
        else:
            await _deliver_mirrored(connection, port, mirrored)


async def _deliver_mirrored(
    connection: Connection, port: int, mirrored: MirroredConnection
) -> None:
    try:
        stream = await connection.open_stream(
            INCOMING_CONNECTION_STREAM,
            IncomingConnection(
                port=port,
                client_host=mirrored.client[0],
                client_port=mirrored.client[1],
                server_host=mirrored.server[0],
                server_port=mirrored.server[1],
                mirrored=True,
            ),
        )
    except (StreamResetError, ConnectionLost) as err:
        log.debug("mirrored connection from %s not delivered: %s", mirrored.client, err)
        return
    try:
        async with stream:

            async def discard_answers() -> None:
                while await stream.read():
                    pass

            drain = asyncio.ensure_future(discard_answers())
            try:
                while data := await mirrored.read():
                    await stream.write(data)
                if mirrored.lost or mirrored.overflowed:
                    # A copy with a hole must not look complete to the local app.
                    stream.reset(f"the mirrored copy is incomplete ({mirrored.end_reason})")
                    return
                await stream.end()
                await drain
            finally:
                drain.cancel()
    except (StreamResetError, ConnectionLost) as err:
        log.debug("mirrored connection from %s ended: %s", mirrored.client, err)
