"""Session resumption over real TCP: a proxy between client and server is cut mid-traffic
(both sides closed abruptly) and the session goes on over a new connection through it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from asyncio_runner import async_test

from mirrord_core.protocol import (
    STREAM_WINDOW,
    Connection,
    ConnectionClosedLocally,
    ConnectionLost,
    ConnectionOptions,
    Message,
    PeerClosed,
    ProtocolServer,
    ResumeRefused,
    Stream,
    open_connection,
    register_message,
)
from mirrord_core.session import Session, SessionError
from mirrord_core.target_model import AgentEndpoint

TOKEN = "resume-test-token"
OPTIONS = ConnectionOptions(heartbeat_interval=0.5, peer_timeout=5.0, resume_grace=10.0)


@register_message
@attrs.frozen(kw_only=True)
class Gated(Message):
    """Answered with ``value * 2`` once the server's gate opens."""

    TAG = "test_resume.gated"
    value: int


@register_message
@attrs.frozen(kw_only=True)
class Doubled(Message):
    TAG = "test_resume.doubled"
    value: int


@register_message
@attrs.frozen(kw_only=True)
class Produce(Message):
    """Open payload of a ``source`` stream: send ``size`` bytes of :func:`pattern`."""

    TAG = "test_resume.produce"
    size: int


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes in which a lost, repeated or reordered chunk shows."""
    out = bytearray()
    counter = seed
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


class Proxy:
    """A TCP relay that can cut every connection through it (abort: an RST both ways)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.accepted = 0
        self.refusing = False
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._pairs.append((writer, up_writer))

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        for task in (
            asyncio.create_task(pump(reader, up_writer)),
            asyncio.create_task(pump(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def cut(self) -> None:
        """Close both sides of every current connection abruptly."""
        for client_side, server_side in self._pairs:
            client_side.transport.abort()
            server_side.transport.abort()
        self._pairs.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@attrs.define
class Setup:
    server: ProtocolServer
    proxy: Proxy
    gate: asyncio.Event
    disconnected: list[Connection]

    async def client(self, **kwargs: Any) -> Connection:
        kwargs.setdefault("options", OPTIONS)
        host, port = self.proxy.address
        return await open_connection(
            host, port, token=TOKEN, client_name="resume test", resumable=True, **kwargs
        )

    def server_side(self) -> Connection:
        (connection,) = self.server.connections
        return connection


@contextlib.asynccontextmanager
async def setup(options: ConnectionOptions = OPTIONS) -> AsyncIterator[Setup]:
    gate = asyncio.Event()

    async def gated(_connection: Connection, message: Gated) -> Doubled:
        await gate.wait()
        return Doubled(value=message.value * 2)

    async def echo(stream: Stream, _payload: Any) -> None:
        await stream.accept()
        async for chunk in stream:
            await stream.write(chunk)
        await stream.end()

    async def source(stream: Stream, payload: Produce) -> None:
        await stream.accept()
        data = pattern(payload.size)
        for offset in range(0, len(data), 300_000):  # writes that straddle frames
            await stream.write(data[offset : offset + 300_000])
        await stream.end()

    disconnected: list[Connection] = []
    server = ProtocolServer(
        token=TOKEN,
        request_handlers={Gated: gated},
        stream_handlers={"echo": echo, "source": source},
        options=options,
        on_disconnect=disconnected.append,
    )
    await server.start("127.0.0.1", 0)
    proxy = Proxy(server.address)
    await proxy.start()
    try:
        yield Setup(server, proxy, gate, disconnected)
    finally:
        await proxy.close()
        await server.close()


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


# -- resumption keeps everything going -------------------------------------------------------


@async_test(timeout=30)
async def test_requests_in_flight_are_answered_after_a_cut() -> None:
    async with setup() as s:
        client = await s.client()
        assert client.resumable
        before = [asyncio.create_task(client.request(Gated(value=i))) for i in range(20)]
        await until(lambda: len(s.server_side()._serving) == 20)
        s.proxy.cut()
        await until(lambda: client.suspended or s.proxy.accepted == 2)
        # Sent while the transport is down (or just back): kept and delivered once.
        during = [asyncio.create_task(client.request(Gated(value=i))) for i in range(20, 40)]
        await until(lambda: s.proxy.accepted == 2 and not client.suspended)
        s.gate.set()
        answers = await asyncio.gather(*before, *during)
        assert answers == [Doubled(value=2 * i) for i in range(40)]
        assert len(s.server.connections) == 1 and not s.disconnected
        assert client.session_id == s.server_side().session_id
        await client.close()
        await until(lambda: len(s.disconnected) == 1)


@async_test(timeout=60)
async def test_stream_data_both_ways_arrives_exactly_once_in_order_across_cuts() -> None:
    async with setup() as s:
        client = await s.client()
        stream = await client.open_stream("echo")
        sent = pattern(3_000_000, seed=7)
        received = bytearray()

        async def read() -> None:
            async for chunk in stream:
                received.extend(chunk)

        reader = asyncio.create_task(read())
        cuts = 0
        for offset in range(0, len(sent), 50_000):
            await stream.write(sent[offset : offset + 50_000])
            if offset and offset % 600_000 == 0:
                await until(lambda: len(received) > 0)
                s.proxy.cut()
                cuts += 1
        await stream.end()
        await reader
        assert cuts == 4
        assert s.proxy.accepted >= 2
        assert bytes(received) == sent
        assert not s.disconnected
        await client.close()


@async_test(timeout=60)
async def test_large_transfer_survives_cuts_with_a_bounded_replay_buffer() -> None:
    limit = 2 * 1024 * 1024
    options = attrs.evolve(OPTIONS, resume_buffer=limit)
    async with setup(options) as s:
        client = await s.client(options=options)
        size = 40 * 1024 * 1024
        stream = await client.open_stream("source", Produce(size=size))
        server_side = s.server_side()
        digest = hashlib.sha256()
        got = 0
        largest = 0
        next_cut = 5 * 1024 * 1024
        async for chunk in stream:
            digest.update(chunk)
            got += len(chunk)
            assert server_side._replay is not None
            largest = max(largest, server_side._replay.size)
            if got >= next_cut:
                s.proxy.cut()
                next_cut += 9 * 1024 * 1024
        assert got == size
        assert digest.digest() == hashlib.sha256(pattern(size)).digest()
        assert s.proxy.accepted >= 4
        # One write may go past the limit; the next waits for acknowledgements.
        assert largest <= limit + STREAM_WINDOW + 64 * 1024
        await client.close()


# -- resumption refused or impossible ----------------------------------------------------------


@async_test(timeout=30)
async def test_a_wrong_secret_is_refused_and_the_session_fails_clearly() -> None:
    async with setup() as s:
        client = await s.client()
        assert client._resume is not None
        client._resume.secret = "not the secret"
        pending = asyncio.create_task(client.request(Gated(value=1)))
        await until(lambda: len(s.server_side()._serving) == 1)
        s.proxy.cut()
        with pytest.raises(
            ResumeRefused, match="server refused to resume the session: wrong resume secret"
        ):
            await pending
        await until(lambda: s.server.rejected == 1)
        # The server keeps the real session for its real client until the grace ends.
        assert s.server_side().suspended


@async_test(timeout=30)
async def test_grace_expiry_ends_both_sides_cleanly() -> None:
    options = attrs.evolve(OPTIONS, resume_grace=0.5)
    async with setup(options) as s:
        client = await s.client(options=options)
        await client.ping()
        s.proxy.refusing = True  # every reconnection attempt fails
        s.proxy.cut()
        with pytest.raises(ResumeRefused, match=r"could not resume the session within 0\.5 s"):
            await client.request(Gated(value=1))
        await until(lambda: len(s.disconnected) == 1)
        assert isinstance(s.disconnected[0].close_reason, ResumeRefused)
        assert "did not resume the session within 0.5 s" in str(s.disconnected[0].close_reason)
        assert not s.server._sessions


@async_test(timeout=30)
async def test_a_session_the_server_no_longer_has_is_refused() -> None:
    options = attrs.evolve(OPTIONS, resume_grace=0.3)
    async with setup(options) as s:
        client = await s.client(options=options)
        assert client._resume is not None
        client._resume.grace = 30.0  # the client would wait longer than the server keeps it
        s.proxy.refusing = True
        s.proxy.cut()
        await until(lambda: len(s.disconnected) == 1)
        s.proxy.refusing = False
        with pytest.raises(ResumeRefused, match="no such session"):
            await client.request(Gated(value=1))


@async_test(timeout=30)
async def test_a_session_that_cannot_resume_fails_with_a_session_error() -> None:
    options = attrs.evolve(OPTIONS, resume_grace=0.3)
    async with setup(options) as s:
        host, port = s.proxy.address
        endpoint = AgentEndpoint(host=host, port=port, token=TOKEN, resumable=True)
        session = await Session.connect(endpoint, client_name="session")
        assert session.connection.resumable
        s.proxy.refusing = True
        s.proxy.cut()
        with pytest.raises(SessionError, match=r"^lost the agent: .*resume the session"):
            await session.request(Gated(value=1))
        await session.close()


@async_test(timeout=30)
async def test_goodbye_ends_the_session_at_once_without_grace() -> None:
    async with setup() as s:
        client = await s.client()
        await client.ping()
        server_side = s.server_side()
        await client.close("done")
        await until(lambda: len(s.disconnected) == 1)
        assert isinstance(server_side.close_reason, PeerClosed)
        assert not server_side.suspended
        assert not s.server._sessions
        assert s.proxy.accepted == 1

        other = await s.client()
        await other.ping()
        await s.server_side().close("server leaves")
        reason = await other.wait_closed()
        assert "server leaves" in str(reason) and not other.suspended
        assert s.proxy.accepted == 2


@async_test(timeout=30)
async def test_a_client_without_resumption_still_works_and_is_not_suspended() -> None:
    async with setup() as s:
        host, port = s.proxy.address
        client = await open_connection(host, port, token=TOKEN, client_name="v1", options=OPTIONS)
        assert not client.resumable and not s.server_side().resumable
        s.gate.set()
        assert await client.request(Gated(value=4)) == Doubled(value=8)
        s.proxy.cut()
        with pytest.raises(ConnectionLost):
            await client.request(Gated(value=1))
        await until(lambda: len(s.disconnected) == 1)
        assert not isinstance(client.close_reason, ConnectionClosedLocally)


# -- the agent keeps a suspended client ----------------------------------------------------------


def _socket_fds(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def test_the_agent_keeps_a_suspended_client_counted() -> None:
    sleeper = subprocess.Popen(["sleep", "120"])
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}
    environ["MIRRORD_AGENT_TOKEN"] = TOKEN
    argv = [sys.executable, "-m", "mirrord_core.cli", "agent", "--listen", "127.0.0.1:0"]
    argv += ["--target-pid", str(sleeper.pid), "--communication-timeout", "30"]
    agent = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
    )
    try:
        assert agent.stdout is not None
        ready = json.loads(agent.stdout.readline())["ready"]

        async def go() -> None:
            proxy = Proxy((ready["host"], ready["port"]))
            await proxy.start()
            try:
                host, port = proxy.address
                endpoint = AgentEndpoint(host=host, port=port, token=TOKEN, resumable=True)
                session = await Session.connect(endpoint, client_name="suspended")
                await session.ping()
                connected = _socket_fds(agent.pid)
                proxy.refusing = True
                proxy.cut()
                # The agent noticed the drop once it closed its end of the connection.
                await until(lambda: _socket_fds(agent.pid) == connected - 1)
                await asyncio.sleep(0.5)
                assert agent.poll() is None  # its only client is suspended, not gone
                proxy.refusing = False
                assert await session.ping() < 10  # resumed with the same agent
                assert proxy.accepted >= 2
                await session.close()
            finally:
                await proxy.close()

        asyncio.run(asyncio.wait_for(go(), 30))
        _, stderr = agent.communicate(timeout=15)
        assert agent.returncode == 0, stderr
        assert "the last client left" in stderr
    finally:
        for process in (agent, sleeper):
            if process.poll() is None:
                process.kill()
        agent.communicate()
        sleeper.wait()
