"""Frames: a 4-byte big-endian length followed by that many bytes of msgpack body.

The length prefix is checked against a limit *before* the body is read, so a peer can never
make this side allocate or wait for more than the limit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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


class FrameReader(asyncio.StreamReader):
    """A :class:`asyncio.StreamReader` that can also hand out whole frames without copying.

    Until :meth:`start_frames` it is an ordinary stream reader (the handshake reads it as
    one). In frame mode, the bytes the transport delivers are kept as the ``bytes`` objects
    they arrived in, and :meth:`next_frame` returns each frame body as a view into one of
    them (only a frame that straddles two receives is copied), where :func:`read_frame`
    copies every byte into the reader's buffer and out of it again. Limits, errors and
    flow control (pause reading above twice the limit) are those of a stream reader and
    :func:`read_frame`.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(limit=limit, loop=loop)
        self._frame_limit = limit
        self._chunks: collections.deque[bytes] = collections.deque()
        self._head_offset = 0
        self._chunked = 0
        self._frames = False
        self._frame_waiter: asyncio.Future[None] | None = None
        self._frames_paused = False
        self._frame_transport: asyncio.BaseTransport | None = None

    def set_transport(self, transport: asyncio.BaseTransport) -> None:
        super().set_transport(transport)
        self._frame_transport = transport

    def start_frames(self) -> bool:
        """Switch to frame mode; ``False`` (stay a stream reader) if the state forbids it."""
        # Bytes that arrived with or after the handshake are in the stream reader's buffer.
        buffer = getattr(self, "_buffer", None)
        if self._frames or not isinstance(buffer, bytearray) or getattr(self, "_paused", True):
            return False
        if buffer:
            self._append(bytes(buffer))
            buffer.clear()
        self._frames = True
        return True

    def stop_frames(self) -> None:
        """Back to an ordinary stream reader, for the lingering close.

        Unparsed bytes stay readable as a stream (dropped at the end of the stream, where
        nobody reads them any more).
        """
        if not self._frames:
            return
        self._frames = False
        rest = b"".join(self._take_all())
        self._resume()
        if rest and not self.at_eof():
            super().feed_data(rest)

    def feed_data(self, data: bytes) -> None:
        if not self._frames:
            super().feed_data(data)
            return
        if not data:
            return
        self._append(data)
        self._wake()
        if self._chunked > 2 * self._frame_limit and not self._frames_paused:
            transport = self._frame_transport
            if isinstance(transport, asyncio.ReadTransport):
                try:
                    transport.pause_reading()
                except NotImplementedError:
                    return
                self._frames_paused = True

    def feed_eof(self) -> None:
        super().feed_eof()
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        super().set_exception(exc)
        self._wake()

    async def next_frame(self, max_size: int = MAX_FRAME_SIZE) -> bytes | memoryview | None:
        """The next frame body in frame mode, as :func:`read_frame` returns it.

        ``None`` on a clean end of stream; :class:`TruncatedFrame` and
        :class:`FrameTooLarge` as :func:`read_frame` raises them.
        """
        header = await self._take(HEADER_SIZE, "header")
        if header is None:
            return None
        size = decode_header(bytes(header), max_size)
        body = await self._take(size, "body")
        assert body is not None
        return body

    # -- internals -----------------------------------------------------------------------

    def _append(self, data: bytes) -> None:
        self._chunks.append(data)
        self._chunked += len(data)

    def _take_all(self) -> list[bytes | memoryview]:
        parts: list[bytes | memoryview] = []
        if self._chunks:
            parts.append(memoryview(self._chunks.popleft())[self._head_offset :])
            parts.extend(self._chunks)
        self._chunks.clear()
        self._head_offset = 0
        self._chunked = 0
        return parts

    def _wake(self) -> None:
        waiter = self._frame_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resume(self) -> None:
        if not self._frames_paused:
            return
        self._frames_paused = False
        transport = self._frame_transport
        if isinstance(transport, asyncio.ReadTransport):
            with contextlib.suppress(NotImplementedError):
                transport.resume_reading()

    async def _take(self, size: int, part: str) -> bytes | memoryview | None:
        # Like StreamReader.readexactly: a stored exception wins over buffered data.
        exception = self.exception()
        if exception is not None:
            raise exception
        while self._chunked < size:
            if self.at_eof():
                got = self._chunked
                if part == "header":
                    if not got:
                        return None
                    raise TruncatedFrame(
                        f"stream ended inside a frame header ({got} of {HEADER_SIZE} bytes)"
                    )
                raise TruncatedFrame(f"stream ended inside a frame body ({got} of {size} bytes)")
            # Waiting for more than is buffered: the transport must deliver it.
            self._resume()
            self._frame_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._frame_waiter
            finally:
                self._frame_waiter = None
            exception = self.exception()
            if exception is not None:
                raise exception
        if not size:
            return b""
        head = self._chunks[0]
        offset = self._head_offset
        data: bytes | memoryview
        if len(head) - offset >= size:
            data = memoryview(head)[offset : offset + size]
            offset += size
            if offset == len(head):
                self._chunks.popleft()
                offset = 0
        else:
            parts = []
            wanted = size
            while wanted:
                head = self._chunks[0]
                piece = memoryview(head)[offset : offset + wanted]
                parts.append(piece)
                wanted -= len(piece)
                offset += len(piece)
                if offset == len(head):
                    self._chunks.popleft()
                    offset = 0
            data = b"".join(parts)
        self._head_offset = offset
        self._chunked -= size
        if self._chunked <= self._frame_limit:
            self._resume()
        return data
