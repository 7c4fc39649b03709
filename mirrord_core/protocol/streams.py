"""Multiplexed byte streams with credit-based flow control.

Each direction of a stream has a receive window of :data:`STREAM_WINDOW` bytes: the sender
starts with that much credit, spends it on ``StreamData``, and blocks in
:meth:`Stream.write` at zero; the receiver returns credit with ``WindowUpdate`` as the
application *reads* (not as bytes arrive). So a stream whose reader stalls stops its own
sender after one window, while the TCP connection — and every other stream, request and
heartbeat on it — keeps flowing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING

from mirrord_core.protocol.errors import (
    ProtocolViolation,
    StreamClosedError,
    StreamRefused,
    StreamResetError,
    clip,
)
from mirrord_core.protocol.messages import (
    MAX_WINDOW,
    Ok,
    StreamAccept,
    StreamEnd,
    StreamReset,
    WindowUpdate,
)
from mirrord_core.protocol.registry import Message

if TYPE_CHECKING:
    from mirrord_core.protocol.connection import Connection

#: Initial receive window of every stream direction, in bytes (part of the protocol).
STREAM_WINDOW = 4 * 1024 * 1024
#: Largest ``StreamData`` payload a sender puts in one frame.
MAX_DATA_CHUNK = 1024 * 1024
#: Credit is returned once the application has consumed this much (fewer, larger updates).
WINDOW_UPDATE_THRESHOLD = STREAM_WINDOW // 2

ErrorFactory = Callable[[], BaseException]


async def _readable(sock: socket.socket) -> None:
    """Wait until ``sock`` has something to read (data, its end or an error)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class Stream:
    """One bidirectional byte stream on a :class:`~mirrord_core.protocol.Connection`.

    Obtained from :meth:`Connection.open_stream` (opener side) or passed to a stream handler
    (accepting side). Reads return ``b""`` once the peer has ended its direction; writes
    wait for flow-control credit. ``async with stream:`` closes it on exit (and resets it
    if the block raised).
    """

    def __init__(
        self,
        connection: Connection,
        stream_id: int,
        kind: str,
        open_payload: Message,
        *,
        local: bool,
    ) -> None:
        self.connection = connection
        #: Stream id on the wire (odd: opened by the client, even: by the server).
        self.id = stream_id
        #: The kind named in ``StreamOpen``; selects the handler on the accepting side.
        self.kind = kind
        #: The ``StreamOpen`` payload.
        self.open_payload = open_payload
        #: The ``StreamAccept`` payload (``Ok()`` when the handler gave none).
        self.accept_payload: Message | None = None
        #: True when this side opened the stream.
        self.local = local

        loop = asyncio.get_running_loop()
        self._accepted: asyncio.Future[Message] = loop.create_future()
        self._accept_sent = False

        # Received data as it arrived: bytes, or read-only views of frame bodies.
        self._buffer: collections.deque[bytes | memoryview] = collections.deque()
        self._buffered = 0
        self._recv_eof = False
        # close() was called: nobody reads any more, so new data resets the stream.
        self._read_closed = False
        # Bytes the peer may still send before we return credit; overrunning it is a violation.
        self._recv_allowed = STREAM_WINDOW
        self._unacknowledged = 0
        self._readable = asyncio.Event()
        # Called (synchronously, by the read loop) when data, the end or a failure arrives.
        self._readable_callback: Callable[[], None] | None = None

        self._send_credit = STREAM_WINDOW
        self._send_ended = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._write_lock = asyncio.Lock()

        self._error: ErrorFactory | None = None
        #: The accepting side's handler task (set by the connection).
        self._handler_task: asyncio.Task[None] | None = None
        # The peer ended its direction before the stream failed: reads still end cleanly.
        self._eof_before_error = False
        self._finished = False

    def __repr__(self) -> str:
        return f"<Stream {self.id} kind={self.kind!r} {self._state()}>"

    def _state(self) -> str:
        if self._error is not None:
            return "reset"
        if self._finished:
            return "closed"
        parts = []
        if self._recv_eof:
            parts.append("read-ended")
        if self._send_ended:
            parts.append("write-ended")
        return ",".join(parts) or "open"

    # -- public API ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once both directions ended, or the stream was reset or its connection lost."""
        return self._finished

    def at_eof(self) -> bool:
        """True when the peer ended its direction and every byte has been read."""
        return self._recv_eof and not self._buffer

    async def accept(self, payload: Message | None = None) -> None:
        """Accept a stream opened by the peer, with an optional reply payload.

        Only for the accepting side. Reading, writing or ending accept implicitly with
        ``Ok()``; a handler that needs to refuse raises instead (the peer's ``open_stream``
        then fails with :class:`StreamRefused`).
        """
        if self.local:
            raise StreamClosedError(f"stream {self.id}: only the accepting side can accept")
        self._raise_if_failed()
        self._ensure_accepted(payload)

    async def read(self, max_bytes: int = -1) -> bytes:
        """Up to ``max_bytes`` bytes (all buffered bytes if ``-1``); ``b""`` at end of stream.

        Waits until data arrives. Raises :class:`StreamResetError` if the stream was reset
        and :class:`ConnectionLost` if the connection ended before the peer finished.
        """
        if self._read_closed:
            raise StreamClosedError(f"stream {self.id}: read after close")
        if max_bytes == 0:
            return b""
        if not await self._wait_for_data():
            return b""
        if max_bytes < 0 or max_bytes >= self._buffered:
            data = b"".join(self._buffer)
            self._buffer.clear()
        else:
            pieces = []
            wanted = max_bytes
            while wanted:
                head = self._buffer[0]
                if len(head) <= wanted:
                    pieces.append(self._buffer.popleft())
                    wanted -= len(head)
                else:
                    pieces.append(head[:wanted])
                    self._buffer[0] = head[wanted:]
                    wanted = 0
            data = b"".join(pieces)
        self._buffered -= len(data)
        self._consumed(len(data))
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`asyncio.IncompleteReadError` if the stream ends first."""
        chunks = []
        remaining = n
        while remaining:
            chunk = await self.read(remaining)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(chunks), n)
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    async def read_all(self) -> bytes:
        """Everything until the peer ends the stream."""
        chunks = []
        while chunk := await self.read():
            chunks.append(chunk)
        return b"".join(chunks)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Iterate over chunks as they arrive, until the end of the stream."""
        async for chunk in self.chunks():
            yield chunk if type(chunk) is bytes else bytes(chunk)

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        """Iterate over the data as it arrived, without copying it, until the end of the stream.

        Each item is a non-empty, read-only bytes-like object (``bytes`` or a
        ``memoryview``) that stays valid and unchanged for as long as it is referenced:
        for writing the data on (``socket.send``, ``os.writev`` …) without the copy that
        turning it into ``bytes`` takes.
        """
        while True:
            if self._read_closed:
                raise StreamClosedError(f"stream {self.id}: read after close")
            if not await self._wait_for_data():
                return
            chunk = self._buffer.popleft()
            self._buffered -= len(chunk)
            self._consumed(len(chunk))
            yield chunk

    def read_nowait(self) -> bytes | memoryview | None:
        """The next chunk already received, as :meth:`chunks` yields it, or ``None`` when
        nothing is buffered (at the end of the stream too: :meth:`at_eof` tells; a failed
        stream's error is raised by :meth:`read`). Never waits."""
        if self._read_closed:
            raise StreamClosedError(f"stream {self.id}: read after close")
        if not self._buffer:
            return None
        self._ensure_accepted(None)
        chunk = self._buffer.popleft()
        self._buffered -= len(chunk)
        self._consumed(len(chunk))
        return chunk

    def set_readable_callback(self, callback: Callable[[], None] | None) -> None:
        """Have ``callback()`` called whenever data arrives, the peer ends its direction or
        the stream fails, right as the connection's read loop handles it (so it must not
        block); for handing the data on without waking a task (:meth:`read_nowait`)."""
        self._readable_callback = callback

    def write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Send ``data`` now if that needs no waiting: flow-control credit for all of it,
        no :meth:`write` under way and nothing queued on the connection. ``False`` (nothing
        sent) otherwise (also while a resumable connection is suspended or waits for
        acknowledgements): then :meth:`write` it. Keeps no reference to ``data``; raises
        what :meth:`write` raises."""
        view = memoryview(data).cast("B")
        connection = self.connection
        if self._write_lock.locked():
            return False  # a write is under way: ours goes after it
        self._ensure_accepted(None)
        self._raise_if_not_writable()
        connection._raise_if_closed()
        if len(view) > self._send_credit or connection._writer.transport.get_write_buffer_size():
            return False
        replay = connection._replay
        if replay is not None and (connection._suspended or replay.full):
            return False  # write() waits for the new transport or the peer's acknowledgement
        parts = connection.codec.stream_data_frame_parts(self.id, view, MAX_DATA_CHUNK)
        self._send_credit -= len(view)
        connection._write_parts(parts)
        return True

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``, waiting for flow-control credit as needed.

        Returns once every byte is handed to the connection (not when the peer read it);
        nothing refers to ``data`` any more then, so the caller may reuse its buffer.
        Raises :class:`StreamClosedError` after :meth:`end`, :class:`StreamResetError` after
        a reset, :class:`ConnectionLost` when the connection is gone.
        """
        view = memoryview(data).cast("B")
        async with self._write_lock:
            self._ensure_accepted(None)
            self._raise_if_not_writable()
            while view:
                while self._send_credit <= 0:
                    self._writable.clear()
                    await self._writable.wait()
                    self._raise_if_not_writable()
                # All the credit allows (within one window) goes out as one write of frames
                # of at most MAX_DATA_CHUNK each: one syscall, and one wake-up of the peer.
                # The frames are headers between slices of ``data``, not a copy of it.
                size = min(len(view), self._send_credit, STREAM_WINDOW)
                parts = self.connection.codec.stream_data_frame_parts(
                    self.id, view[:size], MAX_DATA_CHUNK
                )
                view = view[size:]
                self._send_credit -= size
                await self.connection._send_parts(parts)
                self._raise_if_not_writable()

    async def send_from_socket(self, sock: socket.socket) -> int:
        """Send what the non-blocking stream socket ``sock`` received, as much as flow control
        allows now (at least one byte), waiting until it has something; ``0`` once ``sock``
        reached its end (nothing is sent then: :meth:`end` is up to the caller).

        The same as reading ``sock`` and :meth:`write`, but where the connection allows it
        the bytes go from ``sock`` to the connection's socket inside the kernel
        (``splice``), never copied through this process. Raises the socket's ``OSError``
        (e.g. a reset) and what :meth:`write` raises.
        """
        while True:
            async with self._write_lock:
                self._ensure_accepted(None)
                self._raise_if_not_writable()
                while self._send_credit <= 0:
                    self._writable.clear()
                    await self._writable.wait()
                    self._raise_if_not_writable()
                limit = min(self._send_credit, MAX_DATA_CHUNK)
                try:
                    size = self.connection._send_stream_data_from(self.id, sock, limit)
                except BlockingIOError:
                    pass
                else:
                    self._send_credit -= size
                    await self.connection._drain()
                    return size
            await _readable(sock)

    async def end(self) -> None:
        """Half-close: tell the peer this side sends no more data (idempotent)."""
        async with self._write_lock:
            self._ensure_accepted(None)
            if self._send_ended:
                return
            self._raise_if_failed()
            self._send_ended = True
            self.connection._write_nowait(StreamEnd(stream_id=self.id))
            self._maybe_finished()

    def reset(self, reason: str = "reset", *, errno: int | None = None) -> None:
        """Abort both directions now; unread data is dropped and pending calls fail."""
        if self._finished:
            return
        reason = clip(reason)
        self.connection._write_nowait(StreamReset(stream_id=self.id, reason=reason, errno=errno))
        message = f"stream {self.id} ({self.kind}) was reset locally: {reason}"
        self._fail(lambda: StreamResetError(message, reason=reason, errno=errno))

    async def close(self) -> None:
        """Stop using the stream: end this side and stop reading, like closing a socket.

        Data already sent stays readable by the peer. If unread data is buffered here, the
        stream is reset instead, and data arriving after the close resets it too (a TCP
        socket answers both with a RST), so the peer never waits for a reader that is gone.
        The stream is finished once the peer ends its direction. Never raises for a stream
        that is already reset or whose connection is lost.
        """
        if self._finished:
            return
        if self._buffer:
            self.reset("closed by the application with unread data")
            return
        self._read_closed = True
        with contextlib.suppress(StreamResetError, StreamClosedError, ConnectionError):
            await self.end()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.reset(f"aborted: {type(exc).__name__}")
        else:
            await self.close()

    # -- called by the connection's read loop (synchronous: it never blocks) ----------------

    def _on_accept(self, payload: Message) -> None:
        if not self.local or self._accepted.done():
            raise ProtocolViolation(f"unexpected stream_accept for stream {self.id}")
        self.accept_payload = payload
        self._accepted.set_result(payload)

    def _on_data(self, data: bytes | memoryview) -> None:
        if not self._is_accepted():
            raise ProtocolViolation(f"stream_data for stream {self.id} before it was accepted")
        if self._recv_eof:
            raise ProtocolViolation(f"stream_data for stream {self.id} after its stream_end")
        if len(data) > self._recv_allowed:
            raise ProtocolViolation(
                f"stream {self.id}: peer sent {len(data)} bytes with only "
                f"{self._recv_allowed} bytes of flow-control credit"
            )
        self._recv_allowed -= len(data)
        if self._error is not None:
            # Reset locally while the data was in flight: drop it.
            return
        if self._read_closed and data:
            self.reset("the receiver closed the stream")
            return
        if data:
            self._buffer.append(data)
            self._buffered += len(data)
            self._readable.set()
            if self._readable_callback is not None:
                self._readable_callback()

    def _on_end(self) -> None:
        if not self._is_accepted():
            raise ProtocolViolation(f"stream_end for stream {self.id} before it was accepted")
        if self._recv_eof:
            raise ProtocolViolation(f"duplicate stream_end for stream {self.id}")
        self._recv_eof = True
        self._readable.set()
        if self._readable_callback is not None:
            self._readable_callback()
        self._maybe_finished()

    def _on_reset(self, reason: str, errno: int | None) -> None:
        if self.local and not self._accepted.done():
            message = f"the peer refused to open a {self.kind!r} stream: {clip(reason)}"
            self._fail(lambda: StreamRefused(message, reason=reason, errno=errno))
            return
        message = f"stream {self.id} ({self.kind}) was reset by the peer: {clip(reason)}"
        self._fail(lambda: StreamResetError(message, reason=reason, errno=errno))
        if not self.local and not self._accept_sent and self._handler_task is not None:
            # The opener gave up before the handler accepted (e.g. a slow outgoing connect):
            # nobody will ever use what the handler is still setting up.
            self._handler_task.cancel()

    def _on_window_update(self, credit: int) -> None:
        self._send_credit += credit
        if self._send_credit > MAX_WINDOW:
            raise ProtocolViolation(
                f"stream {self.id}: flow-control credit exceeds {MAX_WINDOW} bytes"
            )
        self._writable.set()

    def _connection_lost(self, error: ErrorFactory) -> None:
        if self._finished:
            return
        # Data the peer finished sending before the connection went away stays readable.
        self._eof_before_error = self._recv_eof
        self._fail(error, keep_buffer=self._recv_eof)

    # -- internals -------------------------------------------------------------------------

    async def _wait_for_data(self) -> bool:
        """Wait until data is buffered; ``False`` at the end of the stream (raises if failed)."""
        self._ensure_accepted(None)
        while not self._buffer:
            if self._recv_eof and self._eof_before_error:
                return False
            self._raise_if_failed()
            if self._recv_eof:
                return False
            self._readable.clear()
            await self._readable.wait()
        return True

    def _is_accepted(self) -> bool:
        return self._accepted.done() if self.local else self._accept_sent

    def _ensure_accepted(self, payload: Message | None) -> None:
        if self.local or self._accept_sent or self._finished:
            return
        reply = Ok() if payload is None else payload
        self.connection._write_nowait(StreamAccept(stream_id=self.id, payload=reply))
        self._accept_sent = True
        self.accept_payload = reply

    async def _wait_accepted(self) -> Message:
        return await asyncio.shield(self._accepted)

    def _consumed(self, size: int) -> None:
        if self._recv_eof or self._finished:
            return
        self._unacknowledged += size
        if self._unacknowledged >= WINDOW_UPDATE_THRESHOLD:
            credit = self._unacknowledged
            self._unacknowledged = 0
            self._recv_allowed += credit
            self.connection._write_nowait(WindowUpdate(stream_id=self.id, credit=credit))

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error()

    def _raise_if_not_writable(self) -> None:
        self._raise_if_failed()
        if self._send_ended:
            raise StreamClosedError(f"stream {self.id}: write after end")

    def _fail(self, error: ErrorFactory, *, keep_buffer: bool = False) -> None:
        self._error = error
        if not keep_buffer:
            self._buffer.clear()
            self._buffered = 0
            self._recv_eof = True
        if not self._accepted.done():
            self._accepted.set_exception(error())
            # Nobody may await it (the opener was cancelled); don't log "never retrieved".
            self._accepted.exception()
        self._readable.set()
        self._writable.set()
        callback, self._readable_callback = self._readable_callback, None
        if callback is not None:
            callback()
        self._finish()

    def _maybe_finished(self) -> None:
        if self._recv_eof and self._send_ended:
            self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self.connection._forget_stream(self)
