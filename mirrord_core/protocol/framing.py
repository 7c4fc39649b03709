"""Frames: a 4-byte big-endian length followed by that many bytes of msgpack body.

The length prefix is checked against a limit *before* the body is read, so a peer can never
make this side allocate or wait for more than the limit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
import sys

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


#: Frame bodies larger than this are received straight into a buffer of their own (the
#: kernel copies them there; nothing is copied again in user space).
DIRECT_BODY_THRESHOLD = 16 * 1024
#: The buffer that headers and smaller frames are received into (several per receive).
SCRATCH_SIZE = 64 * 1024
#: Frame body buffers are reused in sizes that are multiples of this.
BODY_BUFFER_GRANULE = 64 * 1024
#: Largest body buffer kept for reuse (a ``stream_data`` frame of 1 MiB fits).
MAX_KEPT_BODY_BUFFER = 1024 * 1024 + BODY_BUFFER_GRANULE
#: How many recent body buffers are considered for reuse.
KEPT_BODY_BUFFERS = 8
#: How much a receive takes when the next frame is probably large again (bulk data comes
#: in runs of large frames): enough for its header, little of its body to copy.
LARGE_FRAME_HEAD_READ = 4 * 1024


class FrameReader(asyncio.StreamReader):
    """A :class:`asyncio.StreamReader` that can also hand out whole frames without copying.

    Until :meth:`start_frames` it is an ordinary stream reader (the handshake reads it as
    one). In frame mode it takes the transport's input itself, as an
    :class:`asyncio.BufferedProtocol` put in front of the stream protocol: headers and small
    frames are received into one reusable buffer, and the body of a large frame (a bulk
    ``stream_data``) straight into a buffer of its own, which :meth:`next_frame` hands out
    as it is — where :func:`read_frame` has every byte copied into the stream reader's
    buffer and out of it again. Limits, errors and flow control (pause reading above twice
    the limit) are those of a stream reader and :func:`read_frame`.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(limit=limit, loop=loop)
        self._frame_limit = limit
        self._frames = False
        self._max_frame_size = MAX_FRAME_SIZE
        # Headers and small frames: received at [_end:], parsed from [_start:].
        self._scratch = bytearray()
        self._scratch_view = memoryview(self._scratch)
        self._start = 0
        self._end = 0
        # A large frame's body being received in place, into (the start of) _body.
        self._body: bytearray | None = None
        self._body_view = memoryview(b"")
        self._body_filled = 0
        self._body_buffers = _BodyBuffers()
        # The last frame was received directly: the next one likely is too.
        self._bulk = False
        # Complete frame bodies not yet taken by next_frame().
        self._ready: collections.deque[bytes | memoryview] = collections.deque()
        self._ready_size = 0
        self._parse_error: FrameTooLarge | None = None
        self._frame_waiter: asyncio.Future[None] | None = None
        self._frames_paused = False
        self._frame_transport: asyncio.BaseTransport | None = None
        # The protocol our frame protocol stands in front of (restored by stop_frames).
        self._stream_protocol: asyncio.BaseProtocol | None = None

    def set_transport(self, transport: asyncio.BaseTransport) -> None:
        super().set_transport(transport)
        self._frame_transport = transport

    def start_frames(self, max_size: int = MAX_FRAME_SIZE) -> bool:
        """Switch to frame mode; ``False`` (stay a stream reader) if the state forbids it.

        Frames announcing more than ``max_size`` bytes fail with :class:`FrameTooLarge`.
        """
        # Bytes that arrived with or after the handshake are in the stream reader's buffer.
        buffer = getattr(self, "_buffer", None)
        if self._frames or not isinstance(buffer, bytearray) or getattr(self, "_paused", True):
            return False
        self._max_frame_size = max_size
        self._scratch = bytearray(SCRATCH_SIZE)
        self._scratch_view = memoryview(self._scratch)
        self._frames = True
        if buffer:
            pending = bytes(buffer)
            buffer.clear()
            self._receive(pending)
        self._install_frame_protocol()
        return True

    def stop_frames(self) -> None:
        """Back to an ordinary stream reader, for the lingering close.

        Unparsed bytes stay readable as a stream (dropped at the end of the stream, where
        nobody reads them any more).
        """
        if not self._frames:
            return
        self._frames = False
        rest = self._unparsed()
        self._ready.clear()
        self._ready_size = 0
        self._body = None
        self._body_view = memoryview(b"")
        self._body_buffers = _BodyBuffers()
        self._start = self._end = 0
        self._parse_error = None
        transport = self._frame_transport
        if self._stream_protocol is not None and transport is not None:
            transport.set_protocol(self._stream_protocol)
            self._stream_protocol = None
        self._resume()
        if rest and not self.at_eof():
            super().feed_data(b"".join(rest))

    def feed_data(self, data: bytes) -> None:
        # Frame mode without our protocol in front (a transport that kept the stream
        # protocol): the stream protocol passes the data on.
        if not self._frames:
            super().feed_data(data)
            return
        self._receive(data)

    def feed_eof(self) -> None:
        super().feed_eof()
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        super().set_exception(exc)
        self._wake()

    async def next_frame(self, max_size: int = MAX_FRAME_SIZE) -> bytes | memoryview | None:
        """The next frame body in frame mode, as :func:`read_frame` returns it (read-only).

        ``None`` on a clean end of stream; :class:`TruncatedFrame` and
        :class:`FrameTooLarge` as :func:`read_frame` raises them.
        """
        while True:
            # Like StreamReader.readexactly: a stored exception wins over buffered data.
            exception = self.exception()
            if exception is not None:
                raise exception
            if self._ready:
                body = self._ready.popleft()
                self._ready_size -= len(body)
                if self._ready_size <= self._frame_limit:
                    self._resume()
                if len(body) > max_size:
                    raise FrameTooLarge(len(body), max_size)
                return body
            if self._parse_error is not None:
                raise self._parse_error
            if self.at_eof():
                self._raise_if_truncated()
                return None
            # Waiting for more than is buffered: the transport must deliver it.
            self._resume()
            self._frame_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._frame_waiter
            finally:
                self._frame_waiter = None

    # -- receiving (called by _FrameProtocol, or with copies by _receive) ------------------

    def _get_buffer(self) -> memoryview:
        if self._body is not None:
            return self._body_view[self._body_filled :]
        if self._parse_error is not None:
            # Nothing after a refused header is ever parsed: let it overwrite itself.
            self._start = self._end = 0
        elif self._end == len(self._scratch):
            # Only an incomplete header or small frame is left: move it to the front.
            pending = self._end - self._start
            self._scratch_view[:pending] = self._scratch_view[self._start : self._end]
            self._start, self._end = 0, pending
        elif self._bulk and self._end == self._start:
            return self._scratch_view[:LARGE_FRAME_HEAD_READ]
        return self._scratch_view[self._end :]

    def _buffer_updated(self, size: int) -> None:
        if self._body is not None:
            self._body_filled += size
            if self._body_filled == len(self._body_view):
                body = self._body_view.toreadonly()
                self._body = None
                self._body_view = memoryview(b"")
                self._frame_ready(body)
            return
        self._end += size
        self._parse()
        if self._bulk and self._body is None and size == LARGE_FRAME_HEAD_READ:
            # A short receive filled with small frames: more may be waiting, read them all.
            self._bulk = False

    def _receive(self, data: bytes | bytearray | memoryview) -> None:
        """Take ``data`` as if the transport had received it into our buffers."""
        view = memoryview(data)
        offset = 0
        while offset < len(view) and self._parse_error is None:
            target = self._get_buffer()
            size = min(len(target), len(view) - offset)
            target[:size] = view[offset : offset + size]
            offset += size
            self._buffer_updated(size)

    def _parse(self) -> None:
        scratch, view = self._scratch, self._scratch_view
        start, end = self._start, self._end
        while self._parse_error is None and end - start >= HEADER_SIZE:
            (size,) = _HEADER.unpack_from(scratch, start)
            if size > self._max_frame_size:
                self._parse_error = FrameTooLarge(size, self._max_frame_size)
                self._pause()
                self._wake()
                break
            body_start = start + HEADER_SIZE
            received = end - body_start
            if received >= size:
                self._frame_ready(bytes(view[body_start : body_start + size]))
                start = body_start + size
                continue
            if size > DIRECT_BODY_THRESHOLD:
                # The rest of the body goes straight into a buffer of its own.
                self._body = self._body_buffers.get(size)
                self._body_view = memoryview(self._body)[:size]
                self._body_view[:received] = view[body_start:end]
                self._body_filled = received
                self._bulk = True
                start = end
            break
        if start == end:
            start = end = 0
        self._start, self._end = start, end

    def _frame_ready(self, body: bytes | memoryview) -> None:
        self._ready.append(body)
        self._ready_size += len(body)
        if self._ready_size > 2 * self._frame_limit:
            self._pause()
        self._wake()

    def _raise_if_truncated(self) -> None:
        if self._body is not None:
            raise TruncatedFrame(
                f"stream ended inside a frame body ({self._body_filled} of "
                f"{len(self._body_view)} bytes)"
            )
        pending = self._end - self._start
        if not pending:
            return
        if pending < HEADER_SIZE:
            raise TruncatedFrame(
                f"stream ended inside a frame header ({pending} of {HEADER_SIZE} bytes)"
            )
        (size,) = _HEADER.unpack_from(self._scratch, self._start)
        raise TruncatedFrame(
            f"stream ended inside a frame body ({pending - HEADER_SIZE} of {size} bytes)"
        )

    def _unparsed(self) -> list[bytes | memoryview]:
        """Everything received and not taken by next_frame(), as it arrived (framed)."""
        parts: list[bytes | memoryview] = []
        for body in self._ready:
            parts += (_HEADER.pack(len(body)), body)
        parts.append(self._scratch_view[self._start : self._end])
        if self._body is not None:
            parts += (_HEADER.pack(len(self._body_view)), self._body_view[: self._body_filled])
        return parts

    # -- flow control and wake-ups ---------------------------------------------------------

    def _install_frame_protocol(self) -> None:
        transport = self._frame_transport
        if transport is None or transport.is_closing():
            return
        try:
            stream_protocol = transport.get_protocol()
        except NotImplementedError:
            return
        if stream_protocol is None:
            return
        transport.set_protocol(_FrameProtocol(self, stream_protocol))
        self._stream_protocol = stream_protocol

    def _wake(self) -> None:
        waiter = self._frame_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pause(self) -> None:
        transport = self._frame_transport
        if self._frames_paused or not isinstance(transport, asyncio.ReadTransport):
            return
        try:
            transport.pause_reading()
        except NotImplementedError:
            return
        self._frames_paused = True

    def _resume(self) -> None:
        if not self._frames_paused or self._parse_error is not None:
            return
        self._frames_paused = False
        transport = self._frame_transport
        if isinstance(transport, asyncio.ReadTransport):
            with contextlib.suppress(NotImplementedError):
                transport.resume_reading()


class _BodyBuffers:
    """Buffers for frame bodies, reused once nothing refers to them any more.

    A body is handed out as views of its buffer, which live on in stream buffers and in
    whatever the application does with the data; a new buffer would cost its allocation,
    zero-filling and page faults every time (the allocator gives large blocks back to the
    system when they are freed). A buffer is reused only when its reference count shows
    that nothing but this pool holds it: every view of a buffer keeps a reference to it.
    """

    def __init__(self) -> None:
        self._recent: collections.deque[bytearray] = collections.deque(maxlen=KEPT_BODY_BUFFERS)

    def get(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes that nothing else refers to (contents stale)."""
        capacity = -(-size // BODY_BUFFER_GRANULE) * BODY_BUFFER_GRANULE
        if capacity > MAX_KEPT_BODY_BUFFER:
            return bytearray(size)
        best: bytearray | None = None
        for buffer in self._recent:
            # Free: referred to by the deque, this variable and getrefcount's argument only.
            if (
                len(buffer) >= size
                and sys.getrefcount(buffer) == 3
                and (best is None or len(buffer) < len(best))
            ):
                best = buffer  # the smallest free one that fits
        if best is not None:
            return best
        buffer = bytearray(capacity)
        self._recent.append(buffer)
        return buffer


class _FrameProtocol(asyncio.BufferedProtocol):
    """Input for a :class:`FrameReader` in frame mode; everything else goes to the stream
    protocol it stands in front of (end of file, connection loss, write flow control)."""

    def __init__(self, reader: FrameReader, stream_protocol: asyncio.BaseProtocol) -> None:
        self._reader = reader
        self._stream_protocol = stream_protocol

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader._get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._reader._buffer_updated(nbytes)

    def data_received(self, data: bytes) -> None:
        # Transports without buffered reads (pipes) hand over bytes objects.
        self._reader._receive(data)

    def eof_received(self) -> bool | None:
        if isinstance(self._stream_protocol, asyncio.Protocol | asyncio.BufferedProtocol):
            return self._stream_protocol.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stream_protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._stream_protocol.pause_writing()

    def resume_writing(self) -> None:
        self._stream_protocol.resume_writing()
