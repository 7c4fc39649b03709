"""A socket piped to a stream message by message (``mirrord_network.eager_pipe``), over a
real protocol connection on 127.0.0.1: request/response in order, bulk data beyond the
flow-control window (the task takes over from the callbacks), each direction ending on its
own, and failures reaching the other side."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
from collections.abc import AsyncIterator

import pytest
from asyncio_runner import async_test

from mirrord_core.protocol import (
    Connection,
    ConnectionOptions,
    Message,
    ProtocolServer,
    Stream,
    StreamResetError,
    open_connection,
)
from mirrord_core.protocol.streams import STREAM_WINDOW
from mirrord_network.eager_pipe import eager_socket_to_stream, eager_stream_to_socket
from mirrord_network.socket_pipe import run_both

TOKEN = "eager-pipe-token-0123456789"
FAST = ConnectionOptions(heartbeat_interval=None, peer_timeout=None, close_timeout=1.0)


async def _echo(stream: Stream, _payload: Message) -> None:
    async for chunk in stream:
        await stream.write(chunk)
    await stream.end()


async def _digest(stream: Stream, _payload: Message) -> None:
    """Reads slowly until the end, then answers with the SHA-256 of what it read."""
    digest = hashlib.sha256()
    async for chunk in stream.chunks():
        digest.update(chunk)
        await asyncio.sleep(0.001)
    await stream.write(digest.hexdigest().encode())
    await stream.end()


async def _reset_when_asked(stream: Stream, _payload: Message) -> None:
    await stream.read(1)
    stream.reset("the peer gave up")


@contextlib.asynccontextmanager
async def piped(kind: str) -> AsyncIterator[tuple[socket.socket, asyncio.Task[None]]]:
    """A socket whose other end is piped eagerly to a ``kind`` stream; the pipe's task."""
    handlers = {"echo": _echo, "digest": _digest, "reset": _reset_when_asked}
    server = ProtocolServer(token=TOKEN, stream_handlers=handlers, options=FAST)
    await server.start("127.0.0.1", 0)
    app, relay = tcp_pair()
    try:
        host, port = server.address
        connection: Connection = await open_connection(
            host, port, token=TOKEN, client_name="eager", options=FAST
        )
        async with connection:
            stream = await connection.open_stream(kind)
            relay.setblocking(False)
            app.setblocking(False)
            task = asyncio.ensure_future(
                run_both(
                    eager_socket_to_stream(relay, stream), eager_stream_to_socket(stream, relay)
                )
            )
            try:
                yield app, task
            finally:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
    finally:
        app.close()
        relay.close()
        await server.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        app = socket.create_connection(listener.getsockname())
        relay, _ = listener.accept()
    return app, relay


async def receive_until_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    received = bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 20):
        received += chunk
    return bytes(received)


@async_test(timeout=60)
async def test_requests_come_back_in_order_and_the_ends_pass_through() -> None:
    loop = asyncio.get_running_loop()
    async with piped("echo") as (app, task):
        for index in range(200):
            message = f"GET /{index} HTTP/1.1\r\n\r\n".encode() * (1 + index % 7)
            await loop.sock_sendall(app, message)
            answer = b""
            while len(answer) < len(message):
                answer += await loop.sock_recv(app, 65536)
            assert answer == message
        app.shutdown(socket.SHUT_WR)
        # The end reaches the echo, whose end comes back as the socket's EOF.
        assert await receive_until_eof(app) == b""
        await task


@async_test(timeout=60)
async def test_bulk_data_beyond_the_window_arrives_whole_while_the_peer_reads_slowly() -> None:
    loop = asyncio.get_running_loop()
    payload = random.Random(8).randbytes(3 * STREAM_WINDOW + 12345)
    async with piped("digest") as (app, task):
        await loop.sock_sendall(app, payload)
        app.shutdown(socket.SHUT_WR)
        assert await receive_until_eof(app) == hashlib.sha256(payload).hexdigest().encode()
        await task


@async_test(timeout=60)
async def test_a_reset_stream_fails_the_pipe() -> None:
    loop = asyncio.get_running_loop()
    async with piped("reset") as (app, task):
        await loop.sock_sendall(app, b"!")
        with pytest.raises(StreamResetError, match="gave up"):
            await task


@async_test(timeout=60)
async def test_a_reset_socket_fails_the_pipe_with_its_error() -> None:
    async with piped("echo") as (app, task):
        app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        app.close()
        with pytest.raises(ConnectionResetError):
            await task
