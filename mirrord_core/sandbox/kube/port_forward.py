"""``pods/{name}/portforward`` over a websocket, as the kubelet serves it.

Subprotocol ``v4.channel.k8s.io`` (``portforward.k8s.io`` and the unnamed binary
protocol are accepted too). For the i-th port of ``?ports=`` the data channel is ``2i``
and the error channel ``2i+1``; the server's first frame on each carries the port as two
bytes, little-endian. Every later binary frame is one channel byte and payload. As the
kubelet, the server connects to ``localhost:<port>`` inside the pod's network namespace
when the websocket opens; a refused connection is reported on the error channel, and the
websocket closes when every port's connection has ended.

A sandbox pod's namespace is entered by a worker thread that called ``setns`` (only that
thread moves; sockets it creates stay in the namespace), so the host, which has no route
to pods, is never involved. A pod without its own namespace (an agent Job's) is reached
on the host's loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import WSMsgType, web

from mirrord_core.linux.namespaces import CLONE_NEWNET, setns
from mirrord_core.sandbox.netns import netns_path

from .node import PodBacking
from .status import bad_request

PROTOCOLS = ("v4.channel.k8s.io", "portforward.k8s.io")
CONNECT_TIMEOUT = 5.0
_CHUNK = 256 * 1024


def parse_ports(values: list[str]) -> list[int]:
    """The ``ports`` query parameter(s): one or more comma-separated port numbers."""
    ports: list[int] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item.isdigit() or not 0 < int(item) < 65536:
                raise bad_request(f'invalid port "{item}"')
            ports.append(int(item))
    if not ports:
        raise bad_request("at least one port must be specified")
    return ports


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, CLONE_NEWNET)
    finally:
        os.close(fd)


class NamespaceDialer:
    """Opens TCP connections inside named network namespaces (one thread per namespace)."""

    def __init__(self) -> None:
        self._executors: dict[str, ThreadPoolExecutor] = {}

    def _executor(self, netns: str) -> ThreadPoolExecutor:
        executor = self._executors.get(netns)
        if executor is None:
            executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"netns-{netns}",
                initializer=_enter,
                initargs=(str(netns_path(netns)),),
            )
            self._executors[netns] = executor
        return executor

    async def connect(self, netns: str | None, port: int) -> socket.socket:
        """A connected, non-blocking socket to ``127.0.0.1:port`` in ``netns``."""
        if netns is None:
            sock = await asyncio.get_running_loop().run_in_executor(None, _dial, port)
        else:
            sock = await asyncio.get_running_loop().run_in_executor(
                self._executor(netns), _dial, port
            )
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        """Stop the namespace threads (a thread inside a namespace keeps it alive)."""
        for executor in self._executors.values():
            executor.shutdown(wait=True, cancel_futures=True)
        self._executors.clear()


def _dial(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


class LiveForwards:
    """The port-forward websockets being served, so that a test can drop them all at once
    (as a restarting API server or a broken network path would)."""

    def __init__(self) -> None:
        self._drops: set[asyncio.Event] = set()

    @contextlib.contextmanager
    def serving(self) -> Iterator[asyncio.Event]:
        """Register one websocket for its lifetime; the event is set to drop it."""
        dropped = asyncio.Event()
        self._drops.add(dropped)
        try:
            yield dropped
        finally:
            self._drops.discard(dropped)

    def drop_all(self) -> int:
        """Drop every current websocket (both ends aborted); returns how many. Loop thread."""
        for dropped in self._drops:
            dropped.set()
        return len(self._drops)


def _port_prefix(channel: int, port: int) -> bytes:
    return bytes((channel, port & 0xFF, port >> 8))


async def serve_port_forward(
    request: web.Request,
    backing: PodBacking,
    ports: list[int],
    dialer: NamespaceDialer,
    uid: str,
    live: LiveForwards | None = None,
) -> web.WebSocketResponse:
    """Run one port-forward websocket until both sides are done (or ``live`` drops it)."""
    with (live or LiveForwards()).serving() as dropped:
        return await _serve(request, backing, ports, dialer, uid, dropped)


async def _serve(
    request: web.Request,
    backing: PodBacking,
    ports: list[int],
    dialer: NamespaceDialer,
    uid: str,
    dropped: asyncio.Event,
) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    writers: dict[int, asyncio.StreamWriter] = {}
    pumps: list[asyncio.Task[None]] = []
    send_lock = asyncio.Lock()

    async def send(channel: int, data: bytes) -> None:
        async with send_lock:
            if not ws.closed:
                await ws.send_bytes(bytes((channel,)) + data)

    for index, port in enumerate(ports):
        await ws.send_bytes(_port_prefix(2 * index, port))
        await ws.send_bytes(_port_prefix(2 * index + 1, port))
    for index, port in enumerate(ports):
        try:
            sock = await dialer.connect(backing.netns, port)
            reader, writer = await asyncio.open_connection(sock=sock, limit=_CHUNK)
        except OSError as err:
            where = f'network namespace "{backing.netns}"' if backing.netns else "the node"
            await send(
                2 * index + 1,
                (
                    f"error forwarding port {port} to pod {uid}: failed to connect to "
                    f"localhost:{port} inside {where}: {err.strerror or err}"
                ).encode(),
            )
            continue
        writers[index] = writer
        pumps.append(asyncio.create_task(_pump_to_client(reader, index, send)))

    async def from_client() -> None:
        async for message in ws:
            if message.type != WSMsgType.BINARY or not message.data:
                continue
            channel, payload = message.data[0], message.data[1:]
            writer = writers.get(channel // 2) if channel % 2 == 0 else None
            if writer is not None and payload and not writer.is_closing():
                writer.write(payload)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()

    client = asyncio.create_task(from_client())
    drop = asyncio.create_task(dropped.wait())
    try:
        if pumps:
            # Done when every pod-side connection ended, or the client went away first.
            pods_done = asyncio.gather(*pumps)
            # Its outcome is the pumps' (collected below); consumed here so a cancelled
            # gather is not reported as "exception was never retrieved".
            pods_done.add_done_callback(lambda done: done.cancelled() or done.exception())
            await asyncio.wait({client, pods_done, drop}, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.wait({client, drop}, timeout=1.0)
    finally:
        if dropped.is_set():
            # Dropped: no goodbye on either side, the connections just break.
            for writer in writers.values():
                writer.transport.abort()
            if request.transport is not None:
                request.transport.abort()
        for writer in writers.values():
            writer.close()
        for task in [*pumps, client, drop]:
            task.cancel()
        await asyncio.gather(*pumps, client, drop, return_exceptions=True)
        if not dropped.is_set():
            await ws.close()
    return ws


async def _pump_to_client(reader: asyncio.StreamReader, index: int, send: object) -> None:
    assert callable(send)
    while True:
        try:
            data = await reader.read(_CHUNK)
        except ConnectionError:
            return
        if not data:
            return
        await send(2 * index, data)
