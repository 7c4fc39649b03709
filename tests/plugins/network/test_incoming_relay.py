"""The local side of incoming connections: the relay that connects to the app's listener
(``incoming_relay``) and the gate that keeps its unaccepted connections within the
listener's backlog (``accept_gate``).

A protocol server plays the agent and opens ``net.incoming_connection`` streams; the
"app" is a listening socket on 127.0.0.1 in this process that the test accepts on as the
supervisor does for a real app (accept, then claim the relay's address).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncio_runner import async_test

from mirrord_core import protocol
from mirrord_core.protocol import Connection, Stream
from mirrord_network.local.accept_gate import AcceptGate, accept_queue_capacity
from mirrord_network.local.incoming_relay import LocalListener, PeerBook, relay_incoming, relay_key
from mirrord_network.local.sockaddr import InetAddress
from mirrord_network.messages import INCOMING_CONNECTION_STREAM, IncomingConnection

TOKEN = "incoming-relay-token-0123456789"
#: No heartbeats: the test's session only lives for the test.
SESSION_OPTIONS = protocol.ConnectionOptions(
    heartbeat_interval=None, peer_timeout=None, close_timeout=1
)


async def settled(condition: object, what: str) -> None:
    """Wait (within the test's timeout) until ``condition()`` holds."""
    while not condition():  # type: ignore[operator]
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def agent_and_client(
    listener: LocalListener, peers: PeerBook
) -> AsyncIterator[tuple[Connection, Connection]]:
    """The agent's end of a session and the client's, which relays incoming connections
    to ``listener``."""
    server = protocol.ProtocolServer(token=TOKEN, options=SESSION_OPTIONS)
    await server.start("127.0.0.1", 0)
    try:
        host, port = server.address
        client = await protocol.open_connection(
            host, port, token=TOKEN, client_name="relay test", options=SESSION_OPTIONS
        )

        async def serve(stream: Stream, info: IncomingConnection) -> None:
            await relay_incoming(stream, info, listener, peers)

        client.serve_streams(INCOMING_CONNECTION_STREAM, serve)
        async with client:
            await settled(lambda: server.connections, "the session")
            yield next(iter(server.connections)), client
    finally:
        await server.close()


async def push(agent: Connection, client_port: int, request: bytes, opened: list[int]) -> None:
    """Send one mirrored connection's bytes as the agent does; wait until it is done."""
    stream = await agent.open_stream(
        INCOMING_CONNECTION_STREAM,
        IncomingConnection(
            port=8080,
            client_host="10.1.2.3",
            client_port=client_port,
            server_host="10.9.9.9",
            server_port=8080,
            mirrored=True,
        ),
    )
    opened.append(client_port)
    async with stream:
        await stream.write(request)
        await stream.end()
        while await stream.read():
            pass


def listening_socket(backlog: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def serve_one(
    app: socket.socket, peers: PeerBook, gate: AcceptGate, capacity: int
) -> tuple[InetAddress | None, bytes]:
    """Accept one relay connection as the supervisor does for the app; read its bytes."""
    loop = asyncio.get_running_loop()
    accepted, peer = await loop.sock_accept(app)
    with accepted:
        assert gate.pending <= capacity
        client = peers.claim(relay_key(peer))
        received = b""
        while data := await loop.sock_recv(accepted, 4096):
            received += data
    return client, received


@async_test(timeout=30.0)
async def test_the_relay_keeps_unaccepted_connections_within_the_backlog() -> None:
    # A burst of connections to an app that does not accept yet: the kernel queues only
    # `backlog` of them. The relay must not connect more (the kernel would drop their
    # SYNs, and later answer them with cookies and reset them); the rest wait.
    backlog, count = 2, 7
    app = listening_socket(backlog)
    gate = AcceptGate(backlog)
    listener = LocalListener(InetAddress("127.0.0.1", app.getsockname()[1]), app.family, gate)
    peers = PeerBook()
    requests = {40000 + n: f"GET /connection-{n} HTTP/1.1\r\n\r\n".encode() for n in range(count)}
    opened: list[int] = []
    with app:
        async with agent_and_client(listener, peers) as (agent, _client):
            pushes = [
                asyncio.ensure_future(push(agent, port, request, opened))
                for port, request in requests.items()
            ]
            # Two relays connected (their streams were accepted), the others wait.
            await settled(lambda: len(opened) == backlog, "two relays to connect")
            await settled(lambda: gate.waiting == count - backlog, "the others to wait")
            assert gate.pending == backlog
            # The kernel holds exactly those two: nothing more was connected.
            loop = asyncio.get_running_loop()
            first = [await loop.sock_accept(app) for _ in range(backlog)]
            with pytest.raises(BlockingIOError):
                app.accept()
            assert gate.pending == backlog  # accepted, but not yet for the app
            served: dict[int, bytes] = {}
            for accepted, peer in first:
                with accepted:
                    client = peers.claim(relay_key(peer))
                    assert client is not None
                    received = b""
                    while data := await loop.sock_recv(accepted, 4096):
                        received += data
                    served[client.port] = received
            while len(served) < count:
                client, received = await serve_one(app, peers, gate, backlog)
                assert client is not None and client.host == "10.1.2.3"
                served[client.port] = received
            await asyncio.gather(*pushes)
    assert served == requests
    assert gate.pending == 0 and gate.waiting == 0


@async_test(timeout=30.0)
async def test_a_connection_refused_by_the_app_frees_its_room() -> None:
    # Nothing listens: the relay's connect is refused, the stream is refused, and the
    # room it held is free again (else the gate would close for good).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gate = AcceptGate(1)
    listener = LocalListener(InetAddress("127.0.0.1", port), socket.AF_INET, gate)
    peers = PeerBook()
    async with agent_and_client(listener, peers) as (agent, _client):
        for client_port in (1, 2):
            with pytest.raises(Exception, match="nothing listens"):
                await push(agent, client_port, b"GET / HTTP/1.1\r\n\r\n", [])
            assert gate.pending == 0


def test_capacity_is_the_backlog_as_the_kernel_clamps_it() -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert accept_queue_capacity(5) == 5
    assert accept_queue_capacity(0) == 1  # the kernel still queues one connection
    assert accept_queue_capacity(somaxconn + 1000) == somaxconn


@async_test()
async def test_the_gate_admits_in_turn_and_on_resize() -> None:
    gate = AcceptGate(1)
    admitted: list[str] = []
    releases: dict[str, object] = {}
    done: dict[str, asyncio.Event] = {}

    async def relay(name: str) -> None:
        done[name] = asyncio.Event()
        async with gate.admit() as accepted:
            admitted.append(name)
            releases[name] = accepted
            await done[name].wait()

    first = asyncio.ensure_future(relay("first"))
    await settled(lambda: admitted == ["first"], "the first to enter")
    others = [asyncio.ensure_future(relay(name)) for name in ("second", "third", "fourth")]
    await settled(lambda: gate.waiting == 3, "the others to wait")
    # The app accepts the first connection, on another thread (the supervisor's).
    accepted_first = releases["first"]
    thread = threading.Thread(target=accepted_first)  # type: ignore[arg-type]
    thread.start()
    thread.join()
    await settled(lambda: admitted == ["first", "second"], "the second to enter")
    assert gate.pending == 1 and gate.waiting == 2
    releases["first"]()  # type: ignore[operator]  # idempotent
    assert gate.pending == 1
    # The app listens again with a larger backlog: one more may enter.
    gate.resize(2)
    await settled(lambda: len(admitted) == 3, "the third to enter")
    assert gate.pending == 2 and gate.waiting == 1
    # A relay that ends without an accept (refused, reset) frees its room too.
    done["second"].set()
    await settled(lambda: len(admitted) == 4, "the fourth to enter")
    for event in done.values():
        event.set()
    await asyncio.gather(first, *others)
    assert gate.pending == 0


@async_test()
async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    gate = AcceptGate(1)
    entered: list[str] = []
    releases: list[object] = []

    async def relay(name: str) -> None:
        async with gate.admit() as accepted:
            entered.append(name)
            releases.append(accepted)
            await asyncio.Event().wait()

    holder = asyncio.ensure_future(relay("holder"))
    await settled(lambda: entered == ["holder"], "the holder to enter")
    woken = asyncio.ensure_future(relay("woken"))
    successor = asyncio.ensure_future(relay("successor"))
    await settled(lambda: gate.waiting == 2, "both to wait")
    releases[0]()  # type: ignore[operator]  # the app accepted the holder's connection
    await asyncio.sleep(0)  # the release ran: the room went to "woken", not yet running
    assert gate.waiting == 1
    woken.cancel()
    await settled(lambda: "successor" in entered, "the successor to enter")
    assert entered == ["holder", "successor"]
    for task in (holder, woken, successor):
        task.cancel()
    await asyncio.gather(holder, woken, successor, return_exceptions=True)
    assert gate.pending == 0
