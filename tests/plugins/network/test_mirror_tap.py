"""The mirror on real traffic between sandbox pods: a :class:`MirrorTap` runs in the ``web``
pod's network namespace (as the agent does after entering the target's) and copies the
connections that clients in the ``api`` pod make to web's servers, which keep serving them.

The test's event loop runs on a thread that entered web's namespace, so the tap and the
upload server it starts live there; client sockets are created by a thread in api's
namespace and then driven by the same loop. Packet loss comes from nftables rules with
``numgen random``: in web's namespace (after the capture: the tap sees the dropped copies
and then the retransmissions) and on the sandbox bridge (before the capture: real gaps).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import random
import re
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

from mirrord_core.linux.namespaces import enter_network_namespace
from mirrord_core.sandbox import PodSpec, Sandbox
from mirrord_network.agent import packet_capture
from mirrord_network.agent.mirror_tap import MirroredConnection, MirrorEnd, MirrorTap
from mirrord_network.agent.packet_capture import CaptureInterfaceError

HTTPD_PORT = 8080
UPLOAD_PORT = 8081
TEST_TIMEOUT = 180.0
_CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.create([PodSpec("web"), PodSpec("api")]) as sb:
        yield sb


class Pods:
    """The two pods' namespaces, seen from the test's event loop (in web's namespace)."""

    def __init__(self, sb: Sandbox, api_sockets: concurrent.futures.Executor) -> None:
        self.sb = sb
        self.web_ip = sb.pod("web").ip
        self.api_ip = sb.pod("api").ip
        self._api_sockets = api_sockets

    async def connect(self, port: int, source_port: int = 0) -> Client:
        """A connection from the api pod to web's ``port``."""
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(self._api_sockets, socket.socket)
        sock.setblocking(False)
        try:
            if source_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", source_port))
            await loop.sock_connect(sock, (self.web_ip, port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=1024 * 1024)


def run_in_web(sb: Sandbox, test: Callable[[Pods], Awaitable[Any]]) -> Any:
    """Run ``test`` on an event loop in web's network namespace."""
    api_sockets = concurrent.futures.ThreadPoolExecutor(
        1, initializer=enter_network_namespace, initargs=(sb.pod("api").pid,)
    )
    web_loop = concurrent.futures.ThreadPoolExecutor(
        1, initializer=enter_network_namespace, initargs=(sb.pod("web").pid,)
    )
    with api_sockets, web_loop:
        pods = Pods(sb, api_sockets)
        run = web_loop.submit(asyncio.run, asyncio.wait_for(test(pods), TEST_TIMEOUT))
        return run.result()


async def _serve_uploads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 requests with bodies, answered with the body's SHA-256 (keep-alive)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            match = _CONTENT_LENGTH.search(head)
            body = await reader.readexactly(int(match.group(1))) if match else b""
            digest = hashlib.sha256(body).hexdigest().encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(digest), digest))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@asynccontextmanager
async def upload_server() -> AsyncIterator[None]:
    """The web pod's second server (busybox httpd does not read request bodies)."""
    server = await asyncio.start_server(_serve_uploads, "0.0.0.0", UPLOAD_PORT, reuse_address=True)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


def upload_request(body: bytes) -> bytes:
    return b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % len(body) + body


async def post(client: Client, body: bytes) -> str:
    """Send one upload; return the server's answer (the SHA-256 of what it received)."""
    reader, writer = client
    writer.write(upload_request(body))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    match = _CONTENT_LENGTH.search(head)
    assert match, head
    return (await reader.readexactly(int(match.group(1)))).decode()


async def finish(client: Client) -> None:
    """Half-close, read the rest, close."""
    reader, writer = client
    writer.write_eof()
    await reader.read()
    writer.close()


def client_port(client: Client) -> int:
    return client[1].get_extra_info("sockname")[1]


class Recorder:
    """A subscriber that reads every mirrored connection to its end."""

    def __init__(self) -> None:
        self.results: dict[MirroredConnection, bytes] = {}
        self.partial: dict[MirroredConnection, bytearray] = {}
        self.announced: list[MirroredConnection] = []
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, connection: MirroredConnection) -> None:
        self.announced.append(connection)
        task = asyncio.get_running_loop().create_task(self._drain(connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._changed.set()

    async def _drain(self, connection: MirroredConnection) -> None:
        received = self.partial[connection] = bytearray()
        while chunk := await connection.read():
            received += chunk
            self._changed.set()
        self.results[connection] = bytes(received)
        self._changed.set()

    async def wait_bytes(self, count: int) -> None:
        """Until ``count`` bytes have been read, over all connections."""
        while sum(map(len, self.partial.values())) < count:
            self._changed.clear()
            await self._changed.wait()

    async def wait(self, count: int) -> dict[MirroredConnection, bytes]:
        """Until ``count`` connections have ended."""
        while len(self.results) < count:
            self._changed.clear()
            await self._changed.wait()
        return self.results

    async def wait_announced(self, count: int) -> list[MirroredConnection]:
        while len(self.announced) < count:
            self._changed.clear()
            await self._changed.wait()
        return self.announced

    def by_client_port(self) -> dict[int, tuple[MirroredConnection, bytes]]:
        return {
            connection.client[1]: (connection, data) for connection, data in self.results.items()
        }

    def data_by_client_port(self) -> dict[int, bytes]:
        return {connection.client[1]: data for connection, data in self.results.items()}


@asynccontextmanager
async def mirroring(
    port: int | None = UPLOAD_PORT, **options: Any
) -> AsyncIterator[tuple[MirrorTap, Recorder]]:
    """The upload server and a tap (``options``: MirrorTap's) with a recording subscriber of
    ``port`` (``None``: the recorder is not subscribed yet); all closed afterwards."""
    tap = MirrorTap(**options)
    recorder = Recorder()
    if port is not None:
        tap.subscribe(port, recorder)
    try:
        async with upload_server():
            yield tap, recorder
    finally:
        await tap.close()


async def upload(pods: Pods, body: bytes) -> tuple[int, bytes]:
    """One upload on a new connection, checked against the server's digest; returns the
    client's port and the bytes it sent."""
    client = await pods.connect(UPLOAD_PORT)
    assert await post(client, body) == hashlib.sha256(body).hexdigest()
    await finish(client)
    return client_port(client), upload_request(body)


@contextmanager
def nft_table(netns: str, family: str, name: str, chain: str) -> Iterator[Callable[[], int]]:
    """A temporary nftables table with one chain (``chain``: its body) in ``netns``; yields a
    function returning how many packets the chain's counter saw."""
    ruleset = f"table {family} {name} {{\n  chain drops {{\n    {chain}\n  }}\n}}\n"
    nft = ["ip", "netns", "exec", netns, "nft"]
    subprocess.run([*nft, "-f", "-"], input=ruleset, text=True, check=True, timeout=30)

    def counted() -> int:
        listing = subprocess.run(
            [*nft, "list", "table", family, name], capture_output=True, text=True, check=True
        ).stdout
        match = re.search(r"counter packets (\d+)", listing)
        assert match, listing
        return int(match.group(1))

    try:
        yield counted
    finally:
        subprocess.run([*nft, "delete", "table", family, name], check=True, timeout=30)


def test_mirrors_requests_to_the_pods_own_server(sandbox: Sandbox) -> None:
    """Every connection to busybox httpd is copied byte for byte, the pod answers as usual,
    and the default interface is the one of web's default route."""

    async def scenario(pods: Pods) -> None:
        async with mirroring(HTTPD_PORT) as (tap, recorder):
            assert tap.interface == "eth0"
            sent = {}
            for index in range(5):
                client = await pods.connect(HTTPD_PORT)
                request = (
                    f"GET /index.html HTTP/1.0\r\nHost: web\r\nX-Request: {index}\r\n"
                    f"User-Agent: mirror-test-{'x' * index * 300}\r\n\r\n"
                ).encode()
                client[1].write(request)
                await client[1].drain()
                answer = await client[0].read()
                assert answer.startswith(b"HTTP/1.") and b"pod web in namespace default" in answer
                client[1].close()
                sent[client_port(client)] = request
            await recorder.wait(5)
            assert recorder.data_by_client_port() == sent
            for connection in recorder.results:
                assert connection.end_reason is MirrorEnd.FIN
                assert connection.client[0] == pods.api_ip
                assert connection.server == (pods.web_ip, HTTPD_PORT)

    run_in_web(sandbox, scenario)


def test_every_subscriber_gets_every_connection_of_its_port(sandbox: Sandbox) -> None:
    async def scenario(pods: Pods) -> None:
        async with mirroring() as (tap, first):
            second, other_port = Recorder(), Recorder()
            tap.subscribe(UPLOAD_PORT, second)
            tap.subscribe(9999, other_port)
            rng = random.Random(5)
            bodies = [rng.randbytes(1000 + index * 7000) for index in range(12)]
            sent = dict(await asyncio.gather(*(upload(pods, body) for body in bodies)))
            # Traffic to another port of the pod is not mirrored.
            httpd = await pods.connect(HTTPD_PORT)
            httpd[1].write(b"GET / HTTP/1.0\r\n\r\n")
            assert b"pod web" in await httpd[0].read()
            httpd[1].close()
            for recorder in (first, second):
                await recorder.wait(12)
                assert recorder.data_by_client_port() == sent
            assert not set(first.results) & set(second.results)
            assert other_port.announced == []

    run_in_web(sandbox, scenario)


def test_unsubscribing_ends_only_that_subscribers_connections(sandbox: Sandbox) -> None:
    async def scenario(pods: Pods) -> None:
        async with mirroring() as (tap, staying):
            leaving = Recorder()
            unsubscribe_leaving = tap.subscribe(UPLOAD_PORT, leaving)
            client = await pods.connect(UPLOAD_PORT)
            await post(client, b"first")
            await leaving.wait_announced(1)
            unsubscribe_leaving()
            ((connection, data),) = (await leaving.wait(1)).items()
            # Bytes not yet read when the subscriber left are dropped with it.
            assert connection.end_reason is MirrorEnd.CLOSED
            assert upload_request(b"first").startswith(data)
            await post(client, b"second")
            await finish(client)
            ((connection, data),) = (await staying.wait(1)).items()
            assert connection.end_reason is MirrorEnd.FIN
            assert data == upload_request(b"first") + upload_request(b"second")

    run_in_web(sandbox, scenario)


def test_the_capture_closes_with_the_last_subscriber_and_reopens(sandbox: Sandbox) -> None:
    async def scenario(pods: Pods) -> None:
        async with mirroring(None) as (tap, recorder):
            unsubscribe = tap.subscribe(UPLOAD_PORT, recorder)
            assert tap.capturing
            unsubscribe()
            assert not tap.capturing and tap.flow_count == 0
            tap.subscribe(UPLOAD_PORT, recorder)
            assert tap.capturing
            port, request = await upload(pods, b"after reopening")
            await recorder.wait(1)
            assert recorder.data_by_client_port() == {port: request}

    run_in_web(sandbox, scenario)


def test_connection_open_before_the_subscription_is_joined_mid_stream(sandbox: Sandbox) -> None:
    async def scenario(pods: Pods) -> None:
        async with mirroring(None) as (tap, recorder):
            client = await pods.connect(UPLOAD_PORT)
            await post(client, b"before the subscription")
            tap.subscribe(UPLOAD_PORT, recorder)
            await post(client, b"after the subscription")
            await finish(client)
            ((connection, data),) = (await recorder.wait(1)).items()
            assert data == upload_request(b"after the subscription")
            assert connection.end_reason is MirrorEnd.FIN

    run_in_web(sandbox, scenario)


def test_reset_connection(sandbox: Sandbox) -> None:
    async def scenario(pods: Pods) -> None:
        async with mirroring() as (_, recorder):
            client = await pods.connect(UPLOAD_PORT)
            await post(client, b"then a reset")
            sock = client[1].get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client[1].close()  # linger 0: the kernel sends RST
            ((connection, data),) = (await recorder.wait(1)).items()
            assert connection.reset and connection.end_reason is MirrorEnd.RESET
            assert data == upload_request(b"then a reset")

    run_in_web(sandbox, scenario)


def test_a_late_subscriber_joins_an_open_connection_at_its_next_bytes(sandbox: Sandbox) -> None:
    async def scenario(pods: Pods) -> None:
        async with mirroring() as (tap, early):
            client = await pods.connect(UPLOAD_PORT)
            await post(client, b"seen by the early subscriber only")
            await early.wait_bytes(len(upload_request(b"seen by the early subscriber only")))
            late = Recorder()
            tap.subscribe(UPLOAD_PORT, late)
            await post(client, b"seen by both")
            await finish(client)
            ((_, early_data),) = (await early.wait(1)).items()
            ((_, late_data),) = (await late.wait(1)).items()
            assert early_data == (
                upload_request(b"seen by the early subscriber only")
                + upload_request(b"seen by both")
            )
            assert late_data == upload_request(b"seen by both")

    run_in_web(sandbox, scenario)


def test_a_client_reusing_its_port_is_a_new_connection(sandbox: Sandbox) -> None:
    """A reset connection, then a new one from the same address and port: its SYN (a new
    initial sequence number) replaces the ended connection's state."""

    async def scenario(pods: Pods) -> None:
        async with mirroring() as (_, recorder):
            first = await pods.connect(UPLOAD_PORT)
            source_port = client_port(first)
            await post(first, b"first life")
            sock = first[1].get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            first[1].close()
            await recorder.wait(1)
            second = await pods.connect(UPLOAD_PORT, source_port=source_port)
            assert client_port(second) == source_port
            await post(second, b"second life")
            await finish(second)
            results = await recorder.wait(2)
            assert [(c.client[1], c.end_reason, data) for c, data in results.items()] == [
                (source_port, MirrorEnd.RESET, upload_request(b"first life")),
                (source_port, MirrorEnd.FIN, upload_request(b"second life")),
            ]

    run_in_web(sandbox, scenario)


@pytest.mark.parametrize("where", ["after-capture", "before-capture"])
def test_large_uploads_are_intact_under_packet_loss(sandbox: Sandbox, where: str) -> None:
    """5% of the packets to the upload port are dropped, either in web's input path (the
    capture has seen them: retransmissions arrive as duplicates) or on the bridge (the
    capture never sees them: gaps, reordering and overlapping retransmissions)."""
    web = sandbox.pod("web")
    if where == "after-capture":
        table = nft_table(
            web.netns,
            "inet",
            "mirrord_mirror_loss",
            "type filter hook input priority 0;\n"
            f"    tcp dport {UPLOAD_PORT} numgen random mod 100 < 5 counter drop",
        )
    else:
        table = nft_table(
            sandbox.node_netns,
            "bridge",
            "mirrord_mirror_loss",
            "type filter hook forward priority 0;\n"
            f"    ip daddr {web.ip} tcp dport {UPLOAD_PORT} numgen random mod 100 < 5 counter drop",
        )

    async def scenario(pods: Pods, dropped: Callable[[], int]) -> None:
        rng = random.Random(where)
        async with mirroring() as (_, recorder):
            sent: dict[int, bytes] = {}
            # Until the rule has dropped something (almost always in the first upload).
            while len(sent) < 5 and (not sent or dropped() == 0):
                port, request = await upload(pods, rng.randbytes(2 * 1024 * 1024 + len(sent)))
                sent[port] = request
                await recorder.wait(len(sent))
                connection, data = recorder.by_client_port()[port]
                assert connection.end_reason is MirrorEnd.FIN
                assert len(data) == len(request)
                assert data == request
            assert recorder.data_by_client_port() == sent
            assert dropped() > 0

    with table as dropped:
        run_in_web(sandbox, lambda pods: scenario(pods, dropped))


def test_many_connections_are_all_intact(sandbox: Sandbox) -> None:
    """200 connections, 25 at a time, as fast as the pods make them."""

    async def scenario(pods: Pods) -> None:
        rng = random.Random(200)
        bodies = [rng.randbytes(rng.randrange(10, 20000)) for _ in range(200)]
        async with mirroring() as (_, recorder):
            slots = asyncio.Semaphore(25)

            async def one(body: bytes) -> tuple[int, bytes]:
                async with slots:
                    return await upload(pods, body)

            sent = dict(await asyncio.gather(*(one(body) for body in bodies)))
            await recorder.wait(200)
            assert recorder.data_by_client_port() == sent
            assert all(c.end_reason is MirrorEnd.FIN for c in recorder.results)

    run_in_web(sandbox, scenario)


def test_bytes_the_capture_missed_end_the_copy_as_lost(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames too large for the capture's buffer are skipped, as if the kernel had dropped
    them; the server acknowledges bytes the tap never saw, so the copy ends as lost instead
    of waiting for them or continuing with a hole."""
    monkeypatch.setattr(packet_capture, "FRAME_BUFFER", 600)

    async def scenario(pods: Pods) -> None:
        body = random.Random(1).randbytes(256 * 1024)
        async with mirroring() as (_, recorder):
            client = await pods.connect(UPLOAD_PORT)
            assert await post(client, body) == hashlib.sha256(body).hexdigest()
            ((connection, data),) = (await recorder.wait(1)).items()
            assert connection.lost and connection.end_reason is MirrorEnd.LOST
            assert upload_request(body).startswith(data)
            assert len(data) < len(upload_request(body))
            await finish(client)

    run_in_web(sandbox, scenario)


def test_a_reader_that_falls_behind_is_ended_alone(sandbox: Sandbox) -> None:
    async def scenario(pods: Pods) -> None:
        body = random.Random(2).randbytes(6 * 1024 * 1024)
        # A reader that keeps up holds about two capture batches (512 KiB) at most.
        async with mirroring(buffer_limit=1024 * 1024) as (tap, reading):
            idle: list[MirroredConnection] = []
            tap.subscribe(UPLOAD_PORT, idle.append)
            _, request = await upload(pods, body)
            ((connection, data),) = (await reading.wait(1)).items()
            assert data == request and connection.end_reason is MirrorEnd.FIN
            (slow,) = idle
            assert slow.overflowed
            kept = bytearray()
            while chunk := await slow.read():
                kept += chunk
            assert 0 < len(kept) <= 1024 * 1024
            assert request.startswith(kept)

    run_in_web(sandbox, scenario)


def test_idle_connections_expire(sandbox: Sandbox) -> None:
    async def scenario(pods: Pods) -> None:
        async with mirroring(idle_timeout=1.0, ended_linger=1.0) as (tap, recorder):
            client = await pods.connect(UPLOAD_PORT)
            await post(client, b"and then silence")
            ((connection, data),) = (await recorder.wait(1)).items()
            assert connection.end_reason is MirrorEnd.EXPIRED
            assert data == upload_request(b"and then silence")
            while tap.flow_count:
                await asyncio.sleep(0.2)
            client[1].close()

    run_in_web(sandbox, scenario)


def test_unknown_interface_is_a_clear_error(sandbox: Sandbox) -> None:
    async def scenario(pods: Pods) -> None:
        tap = MirrorTap("eth7")
        with pytest.raises(CaptureInterfaceError) as raised:
            tap.subscribe(HTTPD_PORT, lambda connection: None)
        message = str(raised.value)
        assert "agent.network_interface" in message and "'eth7'" in message
        assert "eth0" in message  # what the namespace does have
        assert not tap.capturing
        await tap.close()

    run_in_web(sandbox, scenario)
