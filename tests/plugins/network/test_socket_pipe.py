"""Sockets piped to streams (``mirrord_network.socket_pipe``) over real sockets: the agent's
outgoing TCP pipe (``tcp_connect``) and the local ``TcpRelay``.

A protocol server serves ``net.tcp_connect`` streams with the agent's own handler; the
targets (and the "tracees" of the relay) are TCP sockets on 127.0.0.1 in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from asyncio_runner import async_test

from mirrord_core.protocol import (
    Connection,
    ConnectionOptions,
    ProtocolServer,
    Stream,
    StreamResetError,
    open_connection,
)
from mirrord_network.agent.outgoing import tcp_connect
from mirrord_network.local.relays import TcpRelay
from mirrord_network.messages import TCP_CONNECT_STREAM, TcpConnect
from mirrord_network.socket_pipe import run_both

TOKEN = "socket-pipe-token-0123456789"
FAST = ConnectionOptions(heartbeat_interval=None, peer_timeout=None, close_timeout=1.0)
TargetHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def piping(target: TargetHandler) -> AsyncIterator[tuple[Connection, ProtocolServer, int]]:
    """A client connection to a server that serves tcp_connect, and a target server's port."""
    target_server = await asyncio.start_server(target, "127.0.0.1", 0)
    server = ProtocolServer(
        token=TOKEN, stream_handlers={TCP_CONNECT_STREAM: tcp_connect}, options=FAST
    )
    await server.start("127.0.0.1", 0)
    try:
        host, port = server.address
        connection = await open_connection(
            host, port, token=TOKEN, client_name="pipe test", options=FAST
        )
        async with connection:
            yield connection, server, target_server.sockets[0].getsockname()[1]
    finally:
        await server.close()
        target_server.close()
        await target_server.wait_closed()


async def open_pipe(connection: Connection, port: int) -> Stream:
    return await connection.open_stream(TCP_CONNECT_STREAM, TcpConnect(host="127.0.0.1", port=port))


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(100_000):
        writer.write(data)
        await writer.drain()
    writer.close()


def reading_until_closed(ended: asyncio.Future[bytes]) -> TargetHandler:
    """A target that reads until the connection ends: ``ended`` gets what it read (or the
    repr of the error that ended it)."""

    async def read_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ended.set_result(await reader.read())
        except ConnectionError as exc:
            ended.set_result(repr(exc).encode())
        writer.close()

    return read_until_closed


@async_test(timeout=60)
async def test_bytes_come_back_unchanged_in_writes_of_any_size() -> None:
    rng = random.Random(5)
    payload = rng.randbytes(12 * 1024 * 1024 + 321)
    async with piping(echo) as (connection, _server, port):
        stream = await open_pipe(connection, port)

        async def send() -> None:
            view = memoryview(payload)
            offset = 0
            while offset < len(view):
                size = rng.choice([1, 1000, 65536, 300_000, 2 * 1024 * 1024])
                await stream.write(view[offset : offset + size])
                offset += size
            await stream.end()

        async with stream:
            _, echoed = await asyncio.gather(send(), stream.read_all())
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


@async_test()
async def test_each_direction_ends_on_its_own() -> None:
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def greet_then_listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        writer.write_eof()  # the target is done talking, not listening
        received.set_result(await reader.read())
        writer.close()

    async with piping(greet_then_listen) as (connection, _server, port):
        stream = await open_pipe(connection, port)
        async with stream:
            assert await stream.read_all() == b"hello"
            data = random.Random(1).randbytes(3 * 1024 * 1024)
            await stream.write(data)
            await stream.end()
            assert await asyncio.wait_for(received, 10) == data


@async_test()
async def test_a_reset_by_the_target_resets_the_stream_with_its_errno() -> None:
    async def reset_after_a_while(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read(1000)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with piping(reset_after_a_while) as (connection, _server, port):
        stream = await open_pipe(connection, port)
        with pytest.raises(StreamResetError) as reset:
            async with stream:
                await stream.write(b"x" * 2000)
                while await stream.read():
                    pass
                # The reset may also arrive while we keep writing.
                while True:
                    await stream.write(b"y" * 65536)
        assert reset.value.errno in (errno.ECONNRESET, errno.EPIPE)


@async_test()
async def test_a_reset_stream_closes_the_target_connection_and_frees_the_stream() -> None:
    ended: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    read_until_closed = reading_until_closed(ended)

    async with piping(read_until_closed) as (connection, server, port):
        stream = await open_pipe(connection, port)
        await stream.write(b"partial")
        stream.reset("the client gave up")
        # A reset drops data in flight: the target sees some prefix, then the end.
        outcome = await asyncio.wait_for(ended, 10)
        assert b"partial".startswith(outcome) or outcome.startswith(b"Connection")
        (served,) = server.connections
        for _ in range(200):
            if not served.open_streams:
                break
            await asyncio.sleep(0.01)
        assert served.open_streams == 0


@async_test()
async def test_run_both_cancels_the_other_when_one_fails() -> None:
    cancelled = asyncio.Event()

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise ConnectionResetError(errno.ECONNRESET, "reset")

    async def waits() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(ConnectionResetError):
        await run_both(waits(), fails())
    # Nothing is left running once run_both raised.
    assert cancelled.is_set()


@async_test()
async def test_run_both_waits_for_both() -> None:
    finished: list[str] = []

    async def after(delay: float, name: str) -> None:
        await asyncio.sleep(delay)
        finished.append(name)

    await run_both(after(0.05, "slow"), after(0.0, "fast"))
    assert finished == ["fast", "slow"]


# -- the local relay: tracee socket ⇄ stream ⇄ target socket --------------------------------


@contextlib.asynccontextmanager
async def relayed(
    connection: Connection, port: int
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A "tracee" connection to a TcpRelay piping to the target on ``port``."""
    relay = TcpRelay(await open_pipe(connection, port))
    running = asyncio.create_task(relay.run())
    reader, writer = await asyncio.open_connection(*relay.address)
    try:
        yield reader, writer
    finally:
        writer.close()
        await asyncio.wait_for(running, 10)


@async_test(timeout=60)
async def test_a_relay_carries_bulk_data_both_ways() -> None:
    payload = random.Random(9).randbytes(8 * 1024 * 1024 + 5)
    async with (
        piping(echo) as (connection, _server, port),
        relayed(connection, port) as (reader, writer),
    ):

        async def send() -> None:
            for offset in range(0, len(payload), 70_000):
                writer.write(payload[offset : offset + 70_000])
                await writer.drain()
            writer.write_eof()

        _, echoed = await asyncio.gather(send(), reader.read())
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


@async_test()
async def test_a_reset_by_the_target_reaches_the_tracee_as_a_reset() -> None:
    async def answer_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(5)
        writer.write(b"bye")
        await writer.drain()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with (
        piping(answer_then_reset) as (connection, _server, port),
        relayed(connection, port) as (reader, writer),
    ):
        writer.write(b"hello")
        assert await reader.readexactly(3) == b"bye"
        with pytest.raises(ConnectionResetError):
            await reader.read()


@async_test()
async def test_a_reset_by_the_tracee_ends_the_target_connection() -> None:
    ended: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    read_until_closed = reading_until_closed(ended)

    async with (
        piping(read_until_closed) as (connection, _server, port),
        relayed(connection, port) as (_reader, writer),
    ):
        writer.write(b"some data")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        outcome = await asyncio.wait_for(ended, 10)
        assert b"some data".startswith(outcome) or outcome.startswith(b"Connection")
