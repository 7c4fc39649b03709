"""Frames: a 4-byte big-endian length followed by that many bytes of msgpack body.

The length prefix is checked against a limit *before* the body is read, so a peer can never
make this side allocate or wait for more than the limit.
"""

from __future__ import annotations

import asyncio
import struct

from mirrord_core.protocol.errors import FrameTooLarge, TruncatedFrame

#: Size of the length prefix in bytes.
HEADER_SIZE = 4
#: Largest frame body either side accepts or sends once the handshake is done.
MAX_FRAME_SIZE = 8 * 1024 * 1024
#: Largest frame body accepted before the peer is authenticated (a ``Hello`` is tiny).
HANDSHAKE_MAX_FRAME_SIZE = 64 * 1024

_HEADER = struct.Struct(">I")


def encode_header(size: int, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """The length prefix for a body of ``size`` bytes; :class:`FrameTooLarge` above the limit."""
    if size > max_size:
        raise FrameTooLarge(size, max_size)
    return _HEADER.pack(size)


def encode_frame(body: bytes, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """A complete frame (prefix + body); :class:`FrameTooLarge` above the limit."""
    return encode_header(len(body), max_size) + body


def decode_header(header: bytes, max_size: int = MAX_FRAME_SIZE) -> int:
    """The body size announced by a 4-byte prefix; :class:`FrameTooLarge` above the limit."""
    (size,) = _HEADER.unpack(header)
    if size > max_size:
        raise FrameTooLarge(size, max_size)
    return size


async def read_frame(reader: asyncio.StreamReader, max_size: int = MAX_FRAME_SIZE) -> bytes | None:
    """Read one frame body.

    Returns ``None`` on a clean end of stream (EOF exactly between frames). Raises
    :class:`TruncatedFrame` when the stream ends inside a frame and :class:`FrameTooLarge`
    when the prefix announces more than ``max_size`` bytes (nothing of the body is read).
    """
    try:
        header = await reader.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise TruncatedFrame(
            f"stream ended inside a frame header ({len(exc.partial)} of {HEADER_SIZE} bytes)"
        ) from None
    size = decode_header(header, max_size)
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise TruncatedFrame(
            f"stream ended inside a frame body ({len(exc.partial)} of {size} bytes)"
        ) from None


def write_frame_nowait(
    writer: asyncio.StreamWriter, body: bytes, max_size: int = MAX_FRAME_SIZE
) -> None:
    """Queue one frame on the transport without waiting for the buffer to drain.

    Each frame goes out in a single ``write`` call, so frames queued by concurrent tasks
    never interleave.
    """
    writer.write(encode_frame(body, max_size))


async def write_frame(
    writer: asyncio.StreamWriter, body: bytes, max_size: int = MAX_FRAME_SIZE
) -> None:
    """Write one frame and wait until the transport buffer is below its high-water mark."""
    write_frame_nowait(writer, body, max_size)
    await writer.drain()
