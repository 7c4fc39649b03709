"""Frames: u32 big-endian length + body, size limit checked before the body is read."""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from mirrord_core.protocol import framing
from mirrord_core.protocol.errors import FrameTooLarge, TruncatedFrame


def async_test(timeout: float = 10.0) -> Callable[..., Callable[..., None]]:
    """Run an ``async def`` test in a fresh event loop with a hard timeout."""

    def decorate(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            asyncio.run(asyncio.wait_for(fn(*args, **kwargs), timeout))

        return wrapper

    return decorate


def reader_with(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def test_encode_frame_is_big_endian_length_plus_body() -> None:
    assert framing.encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert framing.encode_frame(b"") == b"\x00\x00\x00\x00"
    body = bytes(range(256)) * 300
    frame = framing.encode_frame(body)
    assert struct.unpack(">I", frame[:4]) == (len(body),)
    assert frame[4:] == body


def test_max_frame_size_is_8_mib_and_enforced_when_encoding() -> None:
    assert framing.MAX_FRAME_SIZE == 8 * 1024 * 1024
    assert len(framing.encode_frame(b"x" * 10, max_size=10)) == 14
    with pytest.raises(FrameTooLarge, match="11 bytes exceeds the maximum frame size of 10"):
        framing.encode_frame(b"x" * 11, max_size=10)


def test_decode_header_rejects_sizes_above_the_limit() -> None:
    assert framing.decode_header(struct.pack(">I", framing.MAX_FRAME_SIZE)) == (
        framing.MAX_FRAME_SIZE
    )
    with pytest.raises(FrameTooLarge) as info:
        framing.decode_header(struct.pack(">I", framing.MAX_FRAME_SIZE + 1))
    assert info.value.size == framing.MAX_FRAME_SIZE + 1
    assert info.value.limit == framing.MAX_FRAME_SIZE


@async_test()
async def test_read_frames_back_to_back_then_clean_eof() -> None:
    bodies = [b"", b"one", b"\x00" * 70_000]
    reader = reader_with(b"".join(framing.encode_frame(body) for body in bodies))
    for body in bodies:
        assert await framing.read_frame(reader) == body
    assert await framing.read_frame(reader) is None


@async_test()
async def test_oversized_prefix_fails_without_waiting_for_the_body() -> None:
    # Only the header is available and the stream stays open: a reader that tried to read
    # the announced body would hang here (and the test would time out).
    reader = reader_with(struct.pack(">I", 0xFFFFFFFF), eof=False)
    with pytest.raises(FrameTooLarge, match="4294967295 bytes"):
        await asyncio.wait_for(framing.read_frame(reader), 1)


@async_test()
async def test_handshake_limit_is_smaller() -> None:
    size = framing.HANDSHAKE_MAX_FRAME_SIZE + 1
    reader = reader_with(struct.pack(">I", size), eof=False)
    with pytest.raises(FrameTooLarge):
        await framing.read_frame(reader, framing.HANDSHAKE_MAX_FRAME_SIZE)


@pytest.mark.parametrize("cut", [1, 2, 3])
@async_test()
async def test_eof_inside_header_is_truncated(cut: int) -> None:
    reader = reader_with(framing.encode_frame(b"hello")[:cut])
    with pytest.raises(TruncatedFrame, match=f"inside a frame header \\({cut} of 4 bytes\\)"):
        await framing.read_frame(reader)


@async_test()
async def test_eof_inside_body_is_truncated() -> None:
    reader = reader_with(framing.encode_frame(b"hello world")[:-3])
    with pytest.raises(TruncatedFrame, match="inside a frame body \\(8 of 11 bytes\\)"):
        await framing.read_frame(reader)


@async_test()
async def test_write_frame_over_tcp() -> None:
    received: asyncio.Future[list[bytes | None]] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = [await framing.read_frame(reader) for _ in range(3)]
        received.set_result(frames)
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    big = b"\xab" * (1024 * 1024)
    await framing.write_frame(writer, b"first")
    framing.write_frame_nowait(writer, big)
    writer.close()
    await writer.wait_closed()
    assert await received == [b"first", big, None]
    server.close()
    await server.wait_closed()
