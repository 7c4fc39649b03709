"""Stream.read_nowait, Stream.write_nowait and Stream.set_readable_callback over a real
connection on 127.0.0.1: what they hand over, when they refuse, and that flow control and
the end of the stream hold as with the awaiting calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asyncio_runner import async_test

from mirrord_core.protocol import (
    Connection,
    ConnectionOptions,
    Message,
    ProtocolServer,
    Stream,
    open_connection,
)
from mirrord_core.protocol.errors import StreamClosedError, StreamResetError
from mirrord_core.protocol.streams import STREAM_WINDOW

TOKEN = "stream-nowait-token-0123456789"
FAST = ConnectionOptions(heartbeat_interval=None, peer_timeout=None, close_timeout=1.0)


async def _echo(stream: Stream, _payload: Message) -> None:
    async for chunk in stream:
        await stream.write(chunk)
    await stream.end()


async def _hold(stream: Stream, _payload: Message) -> None:
    """Accepts and never reads, until the peer resets."""
    await stream.accept()
    with contextlib.suppress(StreamResetError):
        await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def connected(**handlers: Any) -> AsyncIterator[Connection]:
    server = ProtocolServer(
        token=TOKEN, stream_handlers={"echo": _echo, "hold": _hold, **handlers}, options=FAST
    )
    await server.start("127.0.0.1", 0)
    try:
        host, port = server.address
        async with await open_connection(
            host, port, token=TOKEN, client_name="nowait", options=FAST
        ) as connection:
            yield connection
    finally:
        await server.close()


@async_test(timeout=30)
async def test_nowait_calls_carry_data_both_ways_and_the_callback_sees_every_arrival() -> None:
    async with connected() as connection:
        stream = await connection.open_stream("echo")
        events: list[bytes | str] = []

        def readable() -> None:
            while (chunk := stream.read_nowait()) is not None:
                events.append(bytes(chunk))
            if stream.at_eof():
                events.append("eof")

        stream.set_readable_callback(readable)
        assert stream.read_nowait() is None
        for message in (b"GET / HTTP/1.1\r\n\r\n", b"x" * 1000, b"y"):
            assert stream.write_nowait(message)
            while message not in events:
                await asyncio.sleep(0.001)
        await stream.end()
        while "eof" not in events:
            await asyncio.sleep(0.001)
        assert events == [b"GET / HTTP/1.1\r\n\r\n", b"x" * 1000, b"y", "eof"]
        assert await stream.read() == b""


@async_test(timeout=30)
async def test_write_nowait_refuses_beyond_the_credit_and_write_then_waits() -> None:
    async with connected() as connection:
        stream = await connection.open_stream("hold")
        await stream.write(b"a" * (STREAM_WINDOW - 10))
        # Refused while the connection has output queued (its socket is full) ...
        transport = connection._writer.transport
        if transport.get_write_buffer_size():
            assert not stream.write_nowait(b"z")
        # ... which the peer takes into the stream's buffer without the handler reading.
        while transport.get_write_buffer_size():
            await asyncio.sleep(0.01)
        # What does not fit the credit is refused whole: nothing is sent.
        assert not stream.write_nowait(b"b" * 11)
        assert stream._send_credit == 10
        assert stream.write_nowait(b"c" * 10)
        assert not stream.write_nowait(b"d")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.write(b"d"), 0.2)
        stream.reset("done")
        with pytest.raises(StreamResetError):
            stream.write_nowait(b"e")


@async_test(timeout=30)
async def test_the_callback_hears_a_reset_and_read_raises_it() -> None:
    async def reset_when_asked(stream: Stream, _payload: Message) -> None:
        await stream.read(1)
        stream.reset("bye")

    async with connected(reset=reset_when_asked) as connection:
        stream = await connection.open_stream("reset")
        heard = asyncio.Event()
        stream.set_readable_callback(heard.set)
        assert stream.write_nowait(b"!")
        await heard.wait()
        assert stream.read_nowait() is None and stream.at_eof()
        with pytest.raises(StreamResetError, match="bye"):
            await stream.read()


@async_test(timeout=30)
async def test_read_nowait_after_close_is_refused() -> None:
    async with connected() as connection:
        stream = await connection.open_stream("echo")
        await stream.close()
        with pytest.raises(StreamClosedError):
            stream.read_nowait()
