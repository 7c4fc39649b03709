"""A live protocol connection: requests, streams, heartbeats and closing.

Both sides use :class:`Connection` after the handshake (:func:`connect` on the client,
:func:`accept` on the server). One task reads frames and dispatches them without ever
waiting on the application: stream data goes into per-stream buffers bounded by flow
control, requests run as their own tasks, and control messages (pongs, window updates) are
queued without waiting for the socket to drain. Anything the peer sends that breaks the
protocol is answered with ``ProtocolError`` and closes this connection only.

A resumable connection (protocol version 2, see :mod:`.resumption`) survives the loss of
its transport: it is *suspended* (operations wait), the client reconnects and both sides
send again what the other has not received; streams, requests and handlers never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import attrs

from mirrord_core.protocol.codec import Codec, default_codec
from mirrord_core.protocol.errors import (
    ConnectFailed,
    ConnectionClosedLocally,
    ConnectionLost,
    FrameTooLarge,
    HandshakeError,
    HandshakeRefused,
    PeerClosed,
    PeerProtocolError,
    PeerTimeout,
    ProtocolViolation,
    ProtocolViolationByPeer,
    RequestFailed,
    StreamRefused,
    StreamResetError,
    TruncatedFrame,
    clip,
)
from mirrord_core.protocol.framing import MAX_FRAME_SIZE, FrameReader, read_frame
from mirrord_core.protocol.handshake import (
    HANDSHAKE_TIMEOUT,
    answer_resume,
    client_handshake,
    client_resume,
    refuse,
    server_handshake,
    tokens_match,
)
from mirrord_core.protocol.messages import (
    HANDSHAKE_MESSAGES,
    RESUMABLE_PROTOCOL_VERSION,
    Ack,
    ErrorResponse,
    Goodbye,
    Ok,
    Ping,
    Pong,
    ProtocolError,
    Request,
    Response,
    Resume,
    ResumeTicket,
    StreamAccept,
    StreamData,
    StreamEnd,
    StreamOpen,
    StreamReset,
    WindowUpdate,
)
from mirrord_core.protocol.registry import Message
from mirrord_core.protocol.resumption import (
    ACK_EVERY_BYTES,
    ACK_EVERY_FRAMES,
    Reconnect,
    ReplayBuffer,
    ResumeImpossible,
    ResumeRefused,
    ResumeState,
)
from mirrord_core.protocol.splicing import SplicePipe, SpliceUnsupported
from mirrord_core.protocol.streams import MAX_DATA_CHUNK, STREAM_WINDOW, Stream
from mirrord_core.protocol.transport import close_transport

log = logging.getLogger("mirrord.protocol")

#: ``async def handler(connection, payload) -> Message | None`` (``None`` answers ``Ok()``).
RequestHandler = Callable[["Connection", Any], Awaitable[Message | None]]
#: ``async def handler(stream, open_payload) -> None``; the stream is closed when it returns.
StreamHandler = Callable[[Stream, Any], Awaitable[None]]
CloseCallback = Callable[["Connection"], object]

#: Above this much unsent output the read loop waits for the socket before reading more,
#: so a peer that sends requests but never reads answers cannot grow our memory forever.
MAX_PENDING_OUTPUT = 4 * MAX_FRAME_SIZE
#: StreamReader buffer limit used by :func:`open_connection` and the server.
READ_BUFFER_LIMIT = 256 * 1024
#: Most buffers given to one gathering write (well below the kernel's IOV_MAX of 1024).
_MAX_GATHER = 256


def _direct_socket_fd(transport: asyncio.BaseTransport) -> int | None:
    """The socket a transport writes to, when writing to it ourselves is equivalent.

    Only for asyncio's plain socket transport: its ``write`` sends straight to the socket
    when nothing is queued, which is all a direct write does (TLS, pipes and other
    transports transform or own their output, so they always get ``write``).
    """
    selector_transport = getattr(asyncio.selector_events, "_SelectorSocketTransport", None)
    if selector_transport is None or type(transport) is not selector_transport:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return None
    return sock.fileno()


def _positive_or_none(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be positive or None, got {value!r}")


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen(kw_only=True)
class ConnectionOptions:
    """Timing and resource limits of one connection (both sides choose their own)."""

    #: Seconds between the pings this side sends; ``None`` sends none.
    heartbeat_interval: float | None = attrs.field(default=5.0, validator=_positive_or_none)
    #: Close the connection when nothing arrived from the peer for this long; ``None``: never.
    peer_timeout: float | None = attrs.field(default=30.0, validator=_positive_or_none)
    #: Limit for the whole handshake.
    handshake_timeout: float = attrs.field(default=HANDSHAKE_TIMEOUT, validator=_positive)
    #: How long a close waits for the peer to finish before aborting the socket.
    close_timeout: float = attrs.field(default=2.0, validator=_positive)
    #: Requests from the peer handled at once; more are answered ``overloaded``.
    max_concurrent_requests: int = attrs.field(default=1024, validator=_positive)
    #: Streams open at once (both directions); more are refused.
    max_streams: int = attrs.field(default=512, validator=_positive)
    #: Server: seconds a resumable session whose transport dropped (no ``Goodbye``) stays
    #: suspended, waiting for its client to reconnect; ``None`` offers no resumption.
    #: Longer than the default ``peer_timeout``: a client may notice a silent drop only then.
    resume_grace: float | None = attrs.field(default=60.0, validator=_positive_or_none)
    #: Resumable sessions: bytes of sent, unacknowledged frames kept for replay; above it,
    #: sending waits for the peer's acknowledgement.
    resume_buffer: int = attrs.field(default=32 * 1024 * 1024, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if (
            self.peer_timeout is not None
            and self.heartbeat_interval is not None
            and self.peer_timeout <= self.heartbeat_interval
        ):
            raise ValueError("peer_timeout must be longer than heartbeat_interval")


def _handler_table(
    handlers: Mapping[type[Message] | str, RequestHandler] | None,
) -> dict[str, RequestHandler]:
    table: dict[str, RequestHandler] = {}
    for key, handler in (handlers or {}).items():
        if isinstance(key, str):
            tag = key
        elif isinstance(key, type) and issubclass(key, Message):
            tag = key.TAG
        else:
            raise TypeError(f"request handler key must be a message class or tag, got {key!r}")
        if tag in table:
            raise ValueError(f"two request handlers for message type {tag!r}")
        table[tag] = handler
    return table


class Connection:
    """One authenticated protocol connection over an asyncio stream pair.

    Created by :func:`connect` / :func:`open_connection` (client) or :func:`accept` /
    :class:`~mirrord_core.protocol.server.ProtocolServer` (server); both sides have the same
    API. After the connection ends, every pending and later operation raises a
    :class:`ConnectionLost` subclass whose message says why.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        is_client: bool,
        session_id: str,
        peer_name: str,
        codec: Codec | None = None,
        request_handlers: Mapping[type[Message] | str, RequestHandler] | None = None,
        stream_handlers: Mapping[str, StreamHandler] | None = None,
        options: ConnectionOptions | None = None,
        resume: ResumeState | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        # asyncio's default 64 KiB high-water mark makes every large frame wait for a drain
        # (a wake-up and a system call each); a window's worth of buffering keeps bulk
        # streams moving while the read loop still applies back-pressure above it.
        with contextlib.suppress(AttributeError, NotImplementedError):
            writer.transport.set_write_buffer_limits(high=STREAM_WINDOW)
        self._loop = asyncio.get_running_loop()
        self._direct_fd = _direct_socket_fd(writer.transport)
        # Sending stream data from sockets: a pipe to splice through, or a buffer.
        self._pipe: SplicePipe | None = None
        self._splice_unusable = False
        self._corkable = hasattr(socket, "TCP_CORK")
        self._relay_buffer: bytearray | None = None
        #: True on the side that sent ``Hello``.
        self.is_client = is_client
        #: Chosen by the server in ``Welcome``; identifies the session in both sides' logs.
        self.session_id = session_id
        #: The client's name from ``Hello`` on the server, ``"server"`` on the client.
        self.peer_name = peer_name
        #: The peer's socket address, if any.
        self.peer_address: Any = writer.get_extra_info("peername")
        #: Free space for handlers to keep per-connection state (open files, sockets …).
        self.state: dict[str, Any] = {}
        self.codec = codec if codec is not None else default_codec()
        self.options = options if options is not None else ConnectionOptions()
        self._request_handlers = _handler_table(request_handlers)
        self._stream_handlers = dict(stream_handlers or {})

        self._next_request_id = 1
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._serving: dict[int, asyncio.Task[None]] = {}

        # Client-opened streams are odd, server-opened even: ids never collide.
        self._next_stream_id = 1 if is_client else 2
        self._peer_max_stream_id = 0
        self._streams: dict[int, Stream] = {}

        self._nonces = itertools.count(1)
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._last_received = self._loop.time()

        self._tasks: set[asyncio.Task[Any]] = set()
        self._close_callbacks: list[CloseCallback] = []
        self._close_error: ConnectionLost | None = None
        self._closed = asyncio.Event()
        self._read_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._closer_task: asyncio.Task[None] | None = None

        # Session resumption (see .resumption): frames kept for replay, frames received.
        self._resume = resume
        self._replay = ReplayBuffer(self.options.resume_buffer) if resume is not None else None
        self._received = 0
        self._ack_sent = 0
        self._unacked_bytes = 0
        self._suspended = False
        self._attached = asyncio.Event()
        self._attached.set()
        self._acked = asyncio.Event()
        self._acked.set()
        self._suspend_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._close_error is not None else "open"
        side = "client" if self.is_client else "server"
        return f"<Connection {side} session={self.session_id} peer={self.peer_name!r} {state}>"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading and heartbeats (done by :func:`connect` and :func:`accept`)."""
        if self._read_task is not None:
            return
        self._read_task = self._loop.create_task(
            self._read_loop(self._reader, self._writer), name=f"{self!r} reader"
        )
        if self.options.heartbeat_interval is not None:
            self._heartbeat_task = self._loop.create_task(
                self._heartbeat(), name=f"{self!r} heartbeat"
            )

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed (no new operations possible)."""
        return self._close_error is not None

    @property
    def close_reason(self) -> ConnectionLost | None:
        """Why the connection ended, or ``None`` while it is open."""
        return self._close_error

    @property
    def resumable(self) -> bool:
        """True when the session survives the loss of its transport (protocol version 2)."""
        return self._resume is not None

    @property
    def suspended(self) -> bool:
        """True while a resumable session has no transport (waiting for its client)."""
        return self._suspended

    @property
    def open_streams(self) -> int:
        """Number of streams currently open on this connection."""
        return len(self._streams)

    def serve_streams(self, kind: str, handler: StreamHandler) -> None:
        """Accept streams of ``kind`` that the peer opens from now on with ``handler``.

        Either side can serve streams: the agent pushes incoming connections to the client
        this way. Replaces an earlier handler of ``kind``; streams already open keep theirs.
        """
        self._stream_handlers[kind] = handler

    def add_close_callback(self, callback: CloseCallback) -> None:
        """Call ``callback(connection)`` (sync or async) once the connection is closed."""
        self._close_callbacks.append(callback)

    async def close(self, reason: str = "closed") -> None:
        """Say ``Goodbye`` and close; returns when the socket is closed.

        Pending requests and streams fail at once with :class:`ConnectionClosedLocally`.
        """
        reason = clip(reason)
        self._shutdown(
            ConnectionClosedLocally(f"connection closed: {reason}"), Goodbye(reason=reason)
        )
        await self.wait_closed()

    def abort(self, reason: str = "aborted") -> None:
        """Close without waiting (still sends ``Goodbye`` on a best-effort basis)."""
        reason = clip(reason)
        self._shutdown(
            ConnectionClosedLocally(f"connection closed: {reason}"), Goodbye(reason=reason)
        )

    async def wait_closed(self) -> ConnectionLost:
        """Wait until the connection is closed; returns the reason (never raises it)."""
        await self._closed.wait()
        assert self._close_error is not None
        return self._close_error

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close("session ended")

    # -- requests --------------------------------------------------------------------------

    async def request(self, payload: Message, *, timeout: float | None = None) -> Message:
        """Send ``payload`` as a request and return the payload of the peer's response.

        Raises :class:`RequestFailed` for an ``ErrorResponse``, :class:`TimeoutError` after
        ``timeout`` seconds, :class:`ConnectionLost` if the connection ends first, and
        :class:`EncodeError` / :class:`FrameTooLarge` (connection unaffected) for a payload
        that cannot be sent.
        """
        self._raise_if_closed()
        request_id = self._next_request_id
        self._next_request_id += 1
        frame = self.codec.encode_frame(Request(id=request_id, payload=payload))
        future: asyncio.Future[Message] = self._loop.create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(timeout):
                await self._send_frame(frame)
                return await future
        finally:
            # A late answer to an abandoned request is recognised (id already used) and ignored.
            self._pending.pop(request_id, None)
            if future.done() and not future.cancelled():
                # Failed while the request was still being sent (the connection ended while
                # a resumable session waited for its transport): the raise says it already.
                future.exception()

    async def ping(self, *, timeout: float | None = None) -> float:
        """Round-trip a ``Ping``; returns the round-trip time in seconds."""
        self._raise_if_closed()
        nonce = next(self._nonces)
        future: asyncio.Future[None] = self._loop.create_future()
        self._pings[nonce] = future
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await self._send(Ping(nonce=nonce))
                await future
        finally:
            self._pings.pop(nonce, None)
        return time.perf_counter() - started

    # -- streams ---------------------------------------------------------------------------

    async def open_stream(
        self, kind: str, payload: Message | None = None, *, timeout: float | None = None
    ) -> Stream:
        """Open a stream of ``kind`` and wait until the peer's handler accepts it.

        Raises :class:`StreamRefused` when the peer has no handler for ``kind``, has too many
        streams, or its handler fails before accepting (``errno`` set for OS errors).
        """
        self._raise_if_closed()
        if len(self._streams) >= self.options.max_streams:
            raise StreamRefused(
                f"too many open streams ({self.options.max_streams}); close some first"
            )
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        open_payload = Ok() if payload is None else payload
        frame = self.codec.encode_frame(
            StreamOpen(stream_id=stream_id, kind=kind, payload=open_payload)
        )
        stream = Stream(self, stream_id, kind, open_payload, local=True)
        self._streams[stream_id] = stream
        try:
            async with asyncio.timeout(timeout):
                await self._send_frame(frame)
                await stream._wait_accepted()
        except BaseException:
            stream.reset("open abandoned by the opener")
            raise
        return stream

    # -- sending ---------------------------------------------------------------------------

    def _raise_if_closed(self) -> None:
        if self._close_error is not None:
            raise self._lost()

    def _lost(self) -> ConnectionLost:
        """A fresh copy of the close reason (each raise gets its own traceback)."""
        error = self._close_error
        assert error is not None
        copy = type(error).__new__(type(error))
        copy.args = error.args
        copy.__dict__.update(error.__dict__)
        return copy

    def _write_nowait(self, message: Message) -> None:
        """Queue a small control message without waiting; dropped once closing."""
        frame = self.codec.encode_frame(message)
        if self._close_error is None:
            self._output(frame)

    def _output(self, data: bytes) -> None:
        """Write complete frames; a resumable connection keeps them for replay and, while
        suspended, only keeps them (they go out on the next transport)."""
        if self._replay is not None:
            self._replay.record(data)
            if self._suspended:
                return
        self._writer.write(data)

    async def _send(self, message: Message) -> None:
        await self._send_frame(self.codec.encode_frame(message))

    async def _send_frame(self, frame: bytes) -> None:
        self._raise_if_closed()
        self._output(frame)
        await self._drain()

    async def _send_parts(self, parts: list[bytes | memoryview]) -> None:
        """Send the buffers of ``parts`` in order, as one write; holds no reference to them
        once it returns (the caller may reuse them)."""
        self._raise_if_closed()
        self._write_parts(parts)
        await self._drain()

    def _write_parts(self, parts: list[bytes | memoryview]) -> None:
        if self._replay is not None:
            # Kept for replay: a copy, since the caller reuses its buffers.
            self._output(b"".join(parts))
            return
        transport = self._writer.transport
        fd = self._direct_fd
        if (
            fd is not None
            and len(parts) <= _MAX_GATHER
            and not transport.get_write_buffer_size()
            and not transport.is_closing()
        ):
            # Nothing is queued ahead of us, so the kernel can take the buffers directly:
            # one system call, no copy of the data in user space.
            try:
                sent = os.writev(fd, parts)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                # The transport meets the same error on its write and handles it as usual.
                sent = 0
            if sent:
                rest: list[bytes | memoryview] = []
                for part in parts:
                    if sent >= len(part):
                        sent -= len(part)
                        continue
                    rest.append(memoryview(part)[sent:] if sent else part)
                    sent = 0
                parts = rest
                if not parts:
                    return
        # Copied (joined) here: the transport keeps what it cannot send now, and the caller
        # may reuse its buffers once we return.
        self._writer.write(b"".join(parts))

    def _send_stream_data_from(self, stream_id: int, sock: socket.socket, limit: int) -> int:
        """One ``stream_data`` frame on ``stream_id`` with up to ``limit`` bytes ``sock`` has
        received, written now (nothing waits); returns how many, ``0`` at the socket's EOF.

        Raises :class:`BlockingIOError` when ``sock`` has nothing yet and the socket's
        ``OSError``. The caller drains afterwards.
        """
        self._raise_if_closed()
        pipe = self._splice_pipe()
        if pipe is not None:
            try:
                size = pipe.fill_from(sock, limit)
            except SpliceUnsupported:
                pass  # this source cannot be spliced from (nothing moved): use the buffer
            else:
                if size:
                    try:
                        head = self.codec.stream_data_frame_head(stream_id, size)
                    except BaseException:
                        pipe.take()
                        raise
                    self._write_spliced(head, pipe)
                return size
        if self._relay_buffer is None:
            self._relay_buffer = bytearray(MAX_DATA_CHUNK)
        buffer = memoryview(self._relay_buffer)
        size = sock.recv_into(buffer, min(limit, len(buffer)))
        if size:
            self._write_parts(
                self.codec.stream_data_frame_parts(stream_id, buffer[:size], MAX_DATA_CHUNK)
            )
        return size

    def _splice_pipe(self) -> SplicePipe | None:
        """The pipe for splicing stream data to the connection, if that can work here."""
        if self._replay is not None:
            return None  # spliced data never passes through us, so it could not be replayed
        if self._pipe is None and not self._splice_unusable and self._direct_fd is not None:
            try:
                self._pipe = SplicePipe(MAX_DATA_CHUNK)
            except (SpliceUnsupported, OSError):
                self._splice_unusable = True
        return self._pipe

    def _close_splice_pipe(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    def _write_spliced(self, head: bytes, pipe: SplicePipe) -> None:
        """Write ``head`` and then the data the pipe holds, as one frame; empties the pipe."""
        transport = self._writer.transport
        fd = self._direct_fd
        sent = 0
        if (
            fd is not None
            and self._close_error is None
            and not transport.get_write_buffer_size()
            and not transport.is_closing()
        ):
            # Corked: the header waits for the data instead of going out as a tiny segment.
            self._set_cork(True)
            try:
                with contextlib.suppress(OSError):
                    sent = os.write(fd, head)
                if sent == len(head):
                    # A broken socket: the transport meets the error on its write below.
                    with contextlib.suppress(OSError):
                        pipe.empty_into(fd)
            finally:
                self._set_cork(False)
        rest = pipe.take()
        if self._close_error is None and (sent < len(head) or rest):
            # The transport queues what the socket cannot take now, behind which every
            # later write goes.
            self._writer.write(head[sent:] + rest)

    def _set_cork(self, on: bool) -> None:
        if not self._corkable:
            return
        try:
            self._writer.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_CORK, on
            )
        except (OSError, AttributeError):
            self._corkable = False  # not TCP (a unix socket): nothing to cork

    async def _drain(self) -> None:
        while True:
            self._raise_if_closed()
            if self._suspended:
                await self._attached.wait()  # set again on resumption or close
                continue
            writer = self._writer
            try:
                await writer.drain()
            except ConnectionError as exc:
                self._transport_lost(writer, f"connection lost: {exc}")
                if self._resume is None:
                    raise self._lost() from None
                continue
            break
        replay = self._replay
        while replay is not None and replay.full:
            # The peer has not acknowledged enough: more output would grow the replay buffer.
            self._acked.clear()
            await self._acked.wait()
            self._raise_if_closed()
        self._raise_if_closed()

    # -- receiving -------------------------------------------------------------------------

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = isinstance(reader, FrameReader) and reader.start_frames(MAX_FRAME_SIZE)
        counting = self._replay is not None
        try:
            while self._close_error is None:
                if frames:
                    body = await reader.next_frame(MAX_FRAME_SIZE)
                else:
                    body = await read_frame(reader, MAX_FRAME_SIZE)
                if body is None:
                    self._transport_lost(
                        writer,
                        "connection lost: the peer closed the connection without saying "
                        "goodbye (EOF)",
                    )
                    return
                self._last_received = self._loop.time()
                # Bulk data skips the general decoder: the payload stays a view of the body.
                data = self.codec.stream_data_payload(body)
                if data is not None:
                    if counting:
                        self._count_received(len(body))
                    stream = self._lookup_stream(data[0], StreamData.TAG)
                    if stream is not None:
                        stream._on_data(data[1])
                else:
                    message = self.codec.decode(body)
                    if isinstance(message, Ack):
                        self._on_ack(message)
                    else:
                        if counting:
                            self._count_received(len(body))
                        self._dispatch(message)
                transport = writer.transport
                if transport.get_write_buffer_size() > MAX_PENDING_OUTPUT:
                    await writer.drain()
        except TruncatedFrame as exc:
            if self._resume is None:
                self._protocol_violation(exc)
            else:
                # The transport ended inside a frame: lost, not broken (the frame comes again).
                self._transport_lost(writer, f"connection lost: {exc}")
        except ProtocolViolation as exc:
            self._protocol_violation(exc)
        except (ConnectionError, OSError) as exc:
            self._transport_lost(writer, f"connection lost: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug on this side: close this connection, never the process or other peers.
            log.exception("%r: internal error while handling a frame", self)
            self._shutdown(
                ConnectionLost(f"connection closed after an internal error: {exc!r}"),
                Goodbye(reason="internal error"),
            )
        finally:
            if frames:
                reader.stop_frames()

    def _protocol_violation(self, exc: ProtocolViolation) -> None:
        log.warning("%r: protocol violation by the peer: %s", self, exc)
        self._shutdown(
            ProtocolViolationByPeer(
                f"connection closed: the peer broke the protocol: {clip(str(exc))}"
            ),
            ProtocolError(message=clip(str(exc))),
        )

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, StreamData):
            stream = self._lookup_stream(message.stream_id, message.TAG)
            if stream is not None:
                stream._on_data(message.data)
        elif isinstance(message, WindowUpdate):
            stream = self._lookup_stream(message.stream_id, message.TAG)
            if stream is not None:
                stream._on_window_update(message.credit)
        elif isinstance(message, Request):
            self._on_request(message)
        elif isinstance(message, Response | ErrorResponse):
            self._on_response(message)
        elif isinstance(message, Ping):
            self._write_nowait(Pong(nonce=message.nonce))
        elif isinstance(message, Pong):
            waiter = self._pings.pop(message.nonce, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(message, StreamOpen):
            self._on_stream_open(message)
        elif isinstance(message, StreamAccept):
            stream = self._lookup_stream(message.stream_id, message.TAG)
            if stream is not None:
                stream._on_accept(message.payload)
        elif isinstance(message, StreamEnd):
            stream = self._lookup_stream(message.stream_id, message.TAG)
            if stream is not None:
                stream._on_end()
        elif isinstance(message, StreamReset):
            stream = self._lookup_stream(message.stream_id, message.TAG)
            if stream is not None:
                stream._on_reset(message.reason, message.errno)
        elif isinstance(message, Goodbye):
            self._shutdown(
                PeerClosed(f"connection closed by the peer: {clip(message.reason)}"), None
            )
        elif isinstance(message, ProtocolError):
            self._shutdown(
                PeerProtocolError(
                    "connection closed: the peer reported a protocol error: "
                    f"{clip(message.message)}"
                ),
                None,
            )
        elif isinstance(message, HANDSHAKE_MESSAGES):
            raise ProtocolViolation(f"unexpected {message.TAG!r} message after the handshake")
        else:
            raise ProtocolViolation(
                f"unexpected {message.TAG!r} message outside a request, response or stream"
            )

    # -- requests from the peer --------------------------------------------------------------

    def _on_request(self, message: Request) -> None:
        request_id = message.id
        if request_id in self._serving:
            raise ProtocolViolation(f"request id {request_id} is already in use")
        tag = message.payload.TAG
        handler = self._request_handlers.get(tag)
        if handler is None:
            self._write_nowait(
                ErrorResponse(
                    id=request_id,
                    code="unsupported",
                    message=f"no handler for request type {tag!r}",
                )
            )
            return
        if len(self._serving) >= self.options.max_concurrent_requests:
            self._write_nowait(
                ErrorResponse(
                    id=request_id,
                    code="overloaded",
                    message=(
                        f"too many requests in flight ({self.options.max_concurrent_requests})"
                    ),
                )
            )
            return
        task = self._spawn(self._serve_request(request_id, handler, message.payload))
        self._serving[request_id] = task

    async def _serve_request(
        self, request_id: int, handler: RequestHandler, payload: Message
    ) -> None:
        try:
            reply: Message = await self._run_request_handler(request_id, handler, payload)
        finally:
            self._serving.pop(request_id, None)
        try:
            await self._send(reply)
        except ConnectionLost:
            pass
        except Exception as exc:
            # The handler's answer could not be encoded: the requester must still get one.
            log.exception("%r: cannot send the answer to request %d", self, request_id)
            with contextlib.suppress(ConnectionLost):
                await self._send(
                    ErrorResponse(
                        id=request_id,
                        code="internal_error",
                        message=clip(f"cannot encode the response: {exc}"),
                    )
                )

    async def _run_request_handler(
        self, request_id: int, handler: RequestHandler, payload: Message
    ) -> Message:
        tag = payload.TAG
        try:
            result = await handler(self, payload)
            if result is None:
                result = Ok()
            if not isinstance(result, Message):
                raise TypeError(
                    f"handler for {tag!r} returned {type(result).__name__}, not a message"
                )
            response = Response(id=request_id, payload=result)
            size = len(self.codec.encode(response))
            if size > MAX_FRAME_SIZE:
                raise FrameTooLarge(size, MAX_FRAME_SIZE)
            return response
        except RequestFailed as exc:
            return ErrorResponse(
                id=request_id, code=clip(exc.code, 64), message=clip(exc.message), errno=exc.errno
            )
        except FrameTooLarge as exc:
            return ErrorResponse(id=request_id, code="response_too_large", message=str(exc))
        except OSError as exc:
            failed = RequestFailed.from_os_error(exc)
            return ErrorResponse(
                id=request_id, code=failed.code, message=failed.message, errno=failed.errno
            )
        except Exception as exc:
            log.exception("%r: request handler for %r failed", self, tag)
            return ErrorResponse(
                id=request_id, code="internal_error", message=clip(f"{type(exc).__name__}: {exc}")
            )

    def _on_response(self, message: Response | ErrorResponse) -> None:
        future = self._pending.get(message.id)
        if future is None:
            if message.id >= self._next_request_id:
                raise ProtocolViolation(
                    f"{message.TAG} for request {message.id}, which was never sent"
                )
            return  # the requester gave up (timeout / cancellation)
        if future.done():
            return
        if isinstance(message, Response):
            future.set_result(message.payload)
        else:
            future.set_exception(RequestFailed(message.code, message.message, message.errno))

    # -- streams from the peer ---------------------------------------------------------------

    def _is_local_stream_id(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) == self.is_client

    def _lookup_stream(self, stream_id: int, tag: str) -> Stream | None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if self._is_local_stream_id(stream_id):
            opened = stream_id < self._next_stream_id
        else:
            opened = stream_id <= self._peer_max_stream_id
        if not opened:
            raise ProtocolViolation(f"{tag} for stream {stream_id}, which was never opened")
        # A stream that already closed: frames that crossed our reset/end are dropped.
        return None

    def _on_stream_open(self, message: StreamOpen) -> None:
        stream_id = message.stream_id
        if self._is_local_stream_id(stream_id):
            raise ProtocolViolation(
                f"stream_open with id {stream_id}: the peer must use "
                f"{'even' if self.is_client else 'odd'} stream ids"
            )
        if stream_id <= self._peer_max_stream_id:
            raise ProtocolViolation(
                f"stream_open with id {stream_id}: stream ids must increase "
                f"(last was {self._peer_max_stream_id})"
            )
        self._peer_max_stream_id = stream_id
        handler = self._stream_handlers.get(message.kind)
        if handler is None:
            reason = f"no handler for stream kind {clip(repr(message.kind), 100)}"
        elif len(self._streams) >= self.options.max_streams:
            reason = f"too many open streams ({self.options.max_streams})"
        else:
            stream = Stream(self, stream_id, message.kind, message.payload, local=False)
            self._streams[stream_id] = stream
            stream._handler_task = self._spawn(self._serve_stream(stream, handler))
            return
        self._write_nowait(StreamReset(stream_id=stream_id, reason=reason))

    async def _serve_stream(self, stream: Stream, handler: StreamHandler) -> None:
        try:
            await handler(stream, stream.open_payload)
        except StreamResetError:
            return  # reset by the peer (or by the handler itself): nothing left to do
        except ConnectionLost:
            if self._close_error is None:
                stream.reset("stream handler failed: connection lost")
            return
        except RequestFailed as exc:
            stream.reset(exc.message, errno=exc.errno)
            return
        except OSError as exc:
            failed = RequestFailed.from_os_error(exc)
            stream.reset(f"{failed.code}: {failed.message}", errno=failed.errno)
            return
        except Exception as exc:
            log.exception("%r: stream handler for %r failed", self, stream.kind)
            stream.reset(f"stream handler failed: {type(exc).__name__}: {exc}")
            return
        if not stream._accept_sent:
            stream.reset("the stream handler returned without accepting the stream")
        else:
            await stream.close()

    def _forget_stream(self, stream: Stream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]

    # -- session resumption ------------------------------------------------------------------

    def _count_received(self, size: int) -> None:
        self._received += 1
        self._unacked_bytes += size
        if (
            self._received - self._ack_sent >= ACK_EVERY_FRAMES
            or self._unacked_bytes >= ACK_EVERY_BYTES
        ):
            self._send_ack()

    def _send_ack(self) -> None:
        """Tell the peer how many frames arrived (not counted, not kept for replay)."""
        self._ack_sent = self._received
        self._unacked_bytes = 0
        if not self._suspended and self._close_error is None:
            self._writer.write(self.codec.encode_frame(Ack(received=self._received)))

    def _on_ack(self, message: Ack) -> None:
        if self._replay is None:
            raise ProtocolViolation("'ack' on a connection without session resumption")
        self._replay.acknowledge(message.received)
        if not self._replay.full:
            self._acked.set()

    def _transport_lost(self, writer: asyncio.StreamWriter, reason: str) -> None:
        """The transport of ``writer`` failed: close, or suspend a resumable session."""
        if self._resume is None:
            self._shutdown(PeerClosed(reason), None)
            return
        if self._close_error is not None or self._suspended or writer is not self._writer:
            return  # already handled, or an old transport's late news
        self._suspend(reason)

    def _suspend(self, reason: str) -> None:
        assert self._resume is not None
        self._suspended = True
        self._attached.clear()
        log.info("%r: %s; session suspended for resumption", self, reason)
        read_task = self._read_task
        if read_task is not None and read_task is not asyncio.current_task():
            read_task.cancel()
        self._writer.transport.abort()
        if self._resume.reconnect is not None:
            self._suspend_task = self._spawn(self._reconnect(reason))
        else:
            self._suspend_task = self._spawn(self._expire(reason))

    async def _expire(self, reason: str) -> None:
        """Server: end the suspended session once its grace period is over."""
        assert self._resume is not None
        await asyncio.sleep(self._resume.grace)
        if self._suspended:
            self._shutdown(
                ResumeRefused(
                    f"{reason}; the client did not resume the session within "
                    f"{self._resume.grace:g} s"
                ),
                None,
            )

    async def _reconnect(self, reason: str) -> None:
        """Client: open new transports (with backoff) until the server resumes the session."""
        resume = self._resume
        assert resume is not None and resume.reconnect is not None
        deadline = self._loop.time() + resume.grace
        delay = 0.05
        last_error = "no attempt"
        while (remaining := deadline - self._loop.time()) > 0:
            limit = min(remaining, self.options.handshake_timeout)
            writer = None
            try:
                async with asyncio.timeout(limit):
                    reader, writer = await resume.reconnect()
                peer_received = await client_resume(
                    reader,
                    writer,
                    self.codec,
                    Resume(
                        protocol_version=RESUMABLE_PROTOCOL_VERSION,
                        token=resume.token,
                        client_name=resume.client_name,
                        session_id=self.session_id,
                        secret=resume.secret,
                        received=self._received,
                    ),
                    timeout=limit,
                    linger=self.options.close_timeout,
                )
            except asyncio.CancelledError:
                if writer is not None:
                    writer.transport.abort()  # closed while reconnecting
                raise
            except HandshakeRefused as exc:
                self._shutdown(
                    ResumeRefused(
                        f"{reason}; the server refused to resume the session: {exc.reason}"
                    ),
                    None,
                )
                return
            except Exception as exc:
                last_error = str(exc) or type(exc).__name__
                log.debug("%r: reconnection failed: %s", self, last_error)
                await asyncio.sleep(min(delay, max(0.0, deadline - self._loop.time())))
                delay = min(delay * 2, 1.0)
                continue
            try:
                self._attach(reader, writer, peer_received)
            except ResumeImpossible as exc:
                writer.transport.abort()
                self._shutdown(ResumeRefused(f"{reason}; cannot resume the session: {exc}"), None)
            return
        self._shutdown(
            ResumeRefused(
                f"{reason}; could not resume the session within {resume.grace:g} s "
                f"(last attempt: {last_error})"
            ),
            None,
        )

    async def _take_over(self) -> int:
        """Server: stop using the current transport for a resuming client; returns how many
        frames arrived from the client (the old transport is read no more)."""
        if not self._suspended:
            self._suspend("the client reconnected")
        read_task = self._read_task
        if read_task is not None and read_task is not asyncio.current_task():
            await asyncio.gather(read_task, return_exceptions=True)
        return self._received

    def _attach(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_received: int
    ) -> None:
        """Continue on a new transport: send again what the peer has not received, read on.

        Raises :class:`ResumeImpossible` when ``peer_received`` does not fit what we sent.
        """
        assert self._replay is not None and self._suspended
        again = self._replay.unacknowledged_after(peer_received)
        self._replay.acknowledge(peer_received)
        self._reader, self._writer = reader, writer
        with contextlib.suppress(AttributeError, NotImplementedError):
            writer.transport.set_write_buffer_limits(high=STREAM_WINDOW)
        self._direct_fd = _direct_socket_fd(writer.transport)
        self.peer_address = writer.get_extra_info("peername")
        if again:
            writer.write(b"".join(again))
        self._ack_sent = self._received
        self._unacked_bytes = 0
        self._suspended = False
        self._last_received = self._loop.time()
        task = self._suspend_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._suspend_task = None
        self._read_task = self._loop.create_task(
            self._read_loop(reader, writer), name=f"{self!r} reader"
        )
        self._attached.set()
        if not self._replay.full:
            self._acked.set()
        log.info("%r: session resumed, %d frames sent again", self, len(again))

    # -- heartbeats ----------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.options.heartbeat_interval
        timeout = self.options.peer_timeout
        assert interval is not None
        while self._close_error is None:
            await asyncio.sleep(interval)
            if self._suspended:
                continue
            silent_for = self._loop.time() - self._last_received
            if timeout is not None and silent_for > timeout and self._resume is not None:
                self._transport_lost(
                    self._writer,
                    f"connection lost: no message from the peer for {silent_for:.1f} s",
                )
                continue
            if timeout is not None and silent_for > timeout:
                self._shutdown(
                    PeerTimeout(
                        f"connection lost: no message from the peer for {silent_for:.1f} s "
                        f"(dead-peer timeout {timeout:g} s)"
                    ),
                    Goodbye(reason=f"no message from you for {silent_for:.1f} s"),
                )
                return
            if self._received > self._ack_sent:
                self._send_ack()
            self._write_nowait(Ping(nonce=next(self._nonces)))

    # -- closing ---------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _shutdown(self, error: ConnectionLost, final: Message | None) -> None:
        """Fail everything pending now; close the socket in the background."""
        if self._close_error is not None:
            return
        final_frame = None
        if final is not None:
            try:
                final_frame = self.codec.encode_frame(final)
            except Exception:
                log.exception("%r: cannot encode the final %r", self, final.TAG)
        self._close_error = error
        log.info("%r: %s", self, error)
        # Operations waiting for a transport or an acknowledgement see the close now.
        self._attached.set()
        self._acked.set()

        for future in [*self._pending.values(), *self._pings.values()]:
            if not future.done():
                future.set_exception(self._lost())
        self._pending.clear()
        self._pings.clear()
        for stream in list(self._streams.values()):
            stream._connection_lost(self._lost)
        self._streams.clear()

        current = asyncio.current_task()
        for task in [*self._tasks, self._heartbeat_task, self._read_task]:
            if task is not None and task is not current and not task.done():
                task.cancel()
        self._closer_task = self._loop.create_task(
            self._close_transport(final_frame, current), name=f"{self!r} closer"
        )

    async def _close_transport(
        self, final_frame: bytes | None, closing_task: asyncio.Task[Any] | None
    ) -> None:
        try:
            read_task = self._read_task
            if read_task is not None and read_task is not asyncio.current_task():
                # The closer reads the rest of the input itself; the reader must be gone first.
                await asyncio.gather(read_task, return_exceptions=True)
            await close_transport(
                self._reader,
                self._writer,
                final_frame=final_frame,
                linger=self.options.close_timeout,
            )
            # Handlers were cancelled; one that ignores cancellation must not hang close(), and
            # a handler that called close() itself is waiting for us, not the other way round.
            handlers = [task for task in self._tasks if task is not closing_task]
            if handlers:
                await asyncio.wait(handlers, timeout=self.options.close_timeout)
            for callback in self._close_callbacks:
                try:
                    result = callback(self)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("%r: close callback failed", self)
        finally:
            self._close_splice_pipe()
            self._closed.set()


# -- establishing connections ---------------------------------------------------------------


async def connect(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    token: str,
    client_name: str,
    codec: Codec | None = None,
    request_handlers: Mapping[type[Message] | str, RequestHandler] | None = None,
    stream_handlers: Mapping[str, StreamHandler] | None = None,
    options: ConnectionOptions | None = None,
    reconnect: Reconnect | None = None,
) -> Connection:
    """Run the client handshake on an open stream pair and return the started connection.

    With ``reconnect`` the session is resumable if the server offers it: when the transport
    drops, ``reconnect()`` is called (with backoff, within the server's grace period) for a
    new one, and the session continues on it.

    Raises :class:`HandshakeRefused` (wrong token or version) or :class:`HandshakeError`.
    """
    codec = codec if codec is not None else default_codec()
    options = options if options is not None else ConnectionOptions()
    welcome, ticket = await client_handshake(
        reader,
        writer,
        codec,
        token=token,
        client_name=client_name,
        timeout=options.handshake_timeout,
        linger=options.close_timeout,
        resumable=reconnect is not None,
    )
    resume = None
    if ticket is not None:
        resume = ResumeState(
            secret=ticket.secret,
            grace=ticket.grace,
            reconnect=reconnect,
            token=token,
            client_name=client_name,
        )
    connection = Connection(
        reader,
        writer,
        is_client=True,
        session_id=welcome.session_id,
        peer_name="server",
        codec=codec,
        request_handlers=request_handlers,
        stream_handlers=stream_handlers,
        options=options,
        resume=resume,
    )
    connection.start()
    return connection


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    token: str,
    session_id: str | None = None,
    codec: Codec | None = None,
    request_handlers: Mapping[type[Message] | str, RequestHandler] | None = None,
    stream_handlers: Mapping[str, StreamHandler] | None = None,
    options: ConnectionOptions | None = None,
    sessions: dict[str, Connection] | None = None,
) -> Connection | None:
    """Run the server handshake on an accepted stream pair and return the started connection.

    With ``sessions`` (the server's resumable sessions by id, maintained here) and
    ``options.resume_grace``, a client announcing version 2 gets a resumable session, and a
    client resuming one hands this transport to it: ``None`` is returned then.

    Raises :class:`HandshakeError` after answering ``Refused`` or ``ProtocolError`` and
    closing the socket.
    """
    codec = codec if codec is not None else default_codec()
    options = options if options is not None else ConnectionOptions()
    session_id = session_id if session_id is not None else secrets.token_hex(8)
    ticket = None
    if sessions is not None and options.resume_grace is not None:
        ticket = ResumeTicket(secret=secrets.token_urlsafe(32), grace=options.resume_grace)
    hello = await server_handshake(
        reader,
        writer,
        codec,
        token=token,
        session_id=session_id,
        timeout=options.handshake_timeout,
        linger=options.close_timeout,
        ticket=ticket,
    )
    if isinstance(hello, Resume):
        await _resume_session(reader, writer, codec, hello, sessions or {}, options)
        return None
    resume = None
    if ticket is not None and hello.protocol_version == RESUMABLE_PROTOCOL_VERSION:
        resume = ResumeState(secret=ticket.secret, grace=ticket.grace)
    connection = Connection(
        reader,
        writer,
        is_client=False,
        session_id=session_id,
        peer_name=hello.client_name,
        codec=codec,
        request_handlers=request_handlers,
        stream_handlers=stream_handlers,
        options=options,
        resume=resume,
    )
    if resume is not None and sessions is not None:
        sessions[session_id] = connection
        connection.add_close_callback(lambda closed: sessions.pop(closed.session_id, None))
    connection.start()
    return connection


async def _resume_session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    codec: Codec,
    resume: Resume,
    sessions: dict[str, Connection],
    options: ConnectionOptions,
) -> None:
    """Give the suspended session ``resume`` names this transport, or refuse."""
    connection = sessions.get(resume.session_id)
    if connection is None or connection.closed or connection._resume is None:
        reason = "no such session (it ended, its grace period expired, or the agent restarted)"
    elif not tokens_match(resume.secret, connection._resume.secret):
        reason = "wrong resume secret"
    else:
        received = await connection._take_over()
        try:
            assert connection._replay is not None
            connection._replay.unacknowledged_after(resume.received)
            if connection.closed:  # its grace ended while we waited for its reader
                raise ResumeImpossible("the session ended")
        except ResumeImpossible as exc:
            reason = f"cannot resume: {exc}"
            connection.abort(reason)
        else:
            answer_resume(writer, codec, received)
            connection._attach(reader, writer, resume.received)
            log.info("%r: client %r resumed the session", connection, resume.client_name)
            return
    await refuse(reader, writer, codec, reason, linger=options.close_timeout)
    raise HandshakeError(
        f"refused to resume session {clip(repr(resume.session_id), 40)} for client "
        f"{clip(repr(resume.client_name), 100)}: {reason}"
    )


async def _open_stream_pair(host: str, port: int) -> tuple[FrameReader, asyncio.StreamWriter]:
    """:func:`asyncio.open_connection`, with a :class:`FrameReader` as the reader."""
    loop = asyncio.get_running_loop()
    reader = FrameReader(limit=READ_BUFFER_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def open_connection(
    host: str,
    port: int,
    *,
    token: str,
    client_name: str,
    connect_timeout: float = 10.0,
    codec: Codec | None = None,
    request_handlers: Mapping[type[Message] | str, RequestHandler] | None = None,
    stream_handlers: Mapping[str, StreamHandler] | None = None,
    options: ConnectionOptions | None = None,
    resumable: bool = False,
) -> Connection:
    """Connect over TCP to ``host:port`` and run the client handshake.

    ``resumable``: when the connection drops, connect to ``host:port`` again and resume the
    session (if the server offers resumption).

    Raises :class:`ConnectFailed` when the server is unreachable, :class:`HandshakeRefused`
    when it refuses the token or version, :class:`HandshakeError` otherwise.
    """
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await _open_stream_pair(host, port)
    except TimeoutError:
        raise ConnectFailed(
            f"cannot connect to {host}:{port}: no answer within {connect_timeout} s"
        ) from None
    except OSError as exc:
        # asyncio's strerror is "Connect call failed (...)"; the errno text says why.
        detail = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConnectFailed(f"cannot connect to {host}:{port}: {detail}") from None

    async def reconnect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(connect_timeout):
            return await _open_stream_pair(host, port)

    return await connect(
        reader,
        writer,
        token=token,
        client_name=client_name,
        codec=codec,
        request_handlers=request_handlers,
        stream_handlers=stream_handlers,
        options=options,
        reconnect=reconnect if resumable else None,
    )
