"""The bulk data path: frames received in place, stream data sent and delivered without copies.

``FrameReader`` in frame mode, ``Codec.stream_data_frame_parts`` / ``stream_data_payload``,
the connection's gathering writes and ``Stream.send_from_socket`` (spliced or buffered),
over real TCP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import msgpack
import pytest
from asyncio_runner import async_test

from mirrord_core.protocol import (
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Codec,
    Connection,
    ConnectionOptions,
    FrameTooLarge,
    Hello,
    Message,
    Ok,
    ProtocolServer,
    Stream,
    StreamData,
    StreamEnd,
    StreamOpen,
    encode_frame,
    open_connection,
    read_frame,
)
from mirrord_core.protocol.errors import MalformedMessage, TruncatedFrame
from mirrord_core.protocol.framing import (
    DIRECT_BODY_THRESHOLD,
    LARGE_FRAME_HEAD_READ,
    SCRATCH_SIZE,
    FrameReader,
)
from mirrord_core.protocol.messages import MAX_ID
from mirrord_core.protocol.splicing import SplicePipe
from mirrord_core.protocol.streams import MAX_DATA_CHUNK, STREAM_WINDOW

TOKEN = "bulk-data-path-token-0123456789"
CODEC = Codec()
FAST = ConnectionOptions(heartbeat_interval=None, peer_timeout=None, close_timeout=1.0)
#: Body sizes around every boundary of the frame reader.
SIZES = [
    0,
    1,
    3,
    4,
    100,
    LARGE_FRAME_HEAD_READ - 4,
    LARGE_FRAME_HEAD_READ,
    DIRECT_BODY_THRESHOLD,
    DIRECT_BODY_THRESHOLD + 1,
    SCRATCH_SIZE - 4,
    SCRATCH_SIZE,
    SCRATCH_SIZE + 1,
    300_000,
    MAX_DATA_CHUNK + 40,
]


# -- FrameReader over TCP ----------------------------------------------------------------------


class FramePeer:
    """A loopback TCP connection whose receiving end is a FrameReader."""

    def __init__(self) -> None:
        self.reader: FrameReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.sender: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._accepted = asyncio.Event()

    async def __aenter__(self) -> FramePeer:
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            reader = FrameReader(limit=256 * 1024, loop=loop)

            def accepted(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                assert isinstance(r, FrameReader)
                self.reader, self.writer = r, w
                self._accepted.set()

            return asyncio.StreamReaderProtocol(reader, accepted, loop=loop)

        self._server = await loop.create_server(protocol, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        _, self.sender = await asyncio.open_connection("127.0.0.1", port)
        await self._accepted.wait()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for writer in (self.sender, self.writer):
            if writer is not None:
                writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def send_in_pieces(self, data: bytes, rng: random.Random) -> None:
        """``data`` in writes of random sizes, with pauses so the receiver sees them apart."""
        assert self.sender is not None
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            size = rng.choice([1, 3, 7, 100, 4096, 70_000, 400_000])
            self.sender.write(view[offset : offset + size])
            offset += size
            await self.sender.drain()
            if rng.random() < 0.3:
                await asyncio.sleep(0.001)


@async_test(timeout=20)
async def test_frames_of_every_size_arrive_whole_however_the_bytes_are_split() -> None:
    rng = random.Random(7)
    bodies = [rng.randbytes(size) for size in SIZES * 3]
    rng.shuffle(bodies)
    async with FramePeer() as peer:
        assert peer.reader is not None and peer.sender is not None
        assert peer.reader.start_frames()
        sending = asyncio.create_task(
            peer.send_in_pieces(b"".join(encode_frame(body) for body in bodies), rng)
        )
        for body in bodies:
            frame = await peer.reader.next_frame()
            assert frame is not None
            assert bytes(frame) == body
            # Frames are read-only: nobody can change data another part still holds.
            assert memoryview(frame).readonly
        await sending
        peer.sender.write_eof()
        assert await peer.reader.next_frame() is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (encode_frame(b"x" * 300_000)[:-5], "inside a frame body \\(299995 of 300000 bytes\\)"),
        (encode_frame(b"hello world")[:-3], "inside a frame body \\(8 of 11 bytes\\)"),
        (encode_frame(b"ok") + b"\x00\x00", "inside a frame header \\(2 of 4 bytes\\)"),
    ],
)
@async_test(timeout=20)
async def test_the_end_of_the_stream_inside_a_frame_is_truncation(
    data: bytes, message: str
) -> None:
    async with FramePeer() as peer:
        assert peer.reader is not None and peer.sender is not None
        assert peer.reader.start_frames()
        peer.sender.write(data)
        peer.sender.write_eof()
        if data.startswith(encode_frame(b"ok")):
            assert await peer.reader.next_frame() == b"ok"
        with pytest.raises(TruncatedFrame, match=message):
            await peer.reader.next_frame()


@async_test(timeout=20)
async def test_an_oversized_prefix_fails_after_the_frames_before_it() -> None:
    async with FramePeer() as peer:
        assert peer.reader is not None and peer.sender is not None
        assert peer.reader.start_frames(max_size=1000)
        # The stream stays open: the prefix alone must decide.
        peer.sender.write(encode_frame(b"first") + struct.pack(">I", 1001) + b"garbage")
        assert await peer.reader.next_frame() == b"first"
        with pytest.raises(FrameTooLarge, match="1001 bytes exceeds the maximum frame size"):
            await peer.reader.next_frame()


@async_test(timeout=20)
async def test_stopping_frames_leaves_the_unread_bytes_readable_as_a_stream() -> None:
    async with FramePeer() as peer:
        assert peer.reader is not None and peer.sender is not None
        assert peer.reader.start_frames()
        big = b"b" * (DIRECT_BODY_THRESHOLD * 3)
        peer.sender.write(encode_frame(b"taken") + encode_frame(b"left") + encode_frame(big))
        assert await peer.reader.next_frame() == b"taken"
        # Wait until the big frame is partly received in place.
        while peer.reader._body is None and len(peer.reader._ready) < 2:
            await asyncio.sleep(0.001)
        peer.reader.stop_frames()
        peer.sender.write_eof()
        rest = await peer.reader.read()
        assert rest == (encode_frame(b"left") + encode_frame(big))


@async_test(timeout=20)
async def test_frame_mode_without_a_transport_parses_fed_bytes() -> None:
    # A transport that keeps the stream protocol hands data to feed_data (the copying path).
    reader = FrameReader(limit=1024)
    assert reader.start_frames()
    bodies = [b"", b"a" * 10, b"c" * (DIRECT_BODY_THRESHOLD + 5)]
    data = b"".join(encode_frame(body) for body in bodies)
    for offset in range(0, len(data), 999):
        reader.feed_data(data[offset : offset + 999])
    reader.feed_eof()
    for body in bodies:
        frame = await reader.next_frame()
        assert frame is not None and bytes(frame) == body
    assert await reader.next_frame() is None


@async_test(timeout=20)
async def test_frames_larger_than_the_limit_are_still_refused() -> None:
    # The largest frame a connection accepts is unchanged by receiving frames in place.
    reader = FrameReader(limit=1024)
    assert reader.start_frames()
    reader.feed_data(struct.pack(">I", MAX_FRAME_SIZE + 1))
    with pytest.raises(FrameTooLarge):
        await reader.next_frame()


# -- stream_data frames --------------------------------------------------------------------------

STREAM_IDS = [1, 2, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, MAX_ID]


@pytest.mark.parametrize("stream_id", STREAM_IDS)
def test_stream_data_parts_are_the_general_encoding(stream_id: int) -> None:
    data = random.Random(stream_id).randbytes(3 * 1000 + 17)
    parts = CODEC.stream_data_frame_parts(stream_id, data, 1000)
    expected = b"".join(
        CODEC.encode_frame(StreamData(stream_id=stream_id, data=data[start : start + 1000]))
        for start in range(0, len(data), 1000)
    )
    assert b"".join(parts) == expected
    assert CODEC.encode_stream_data_frames(stream_id, data, 1000) == expected
    # The data itself is not copied: the parts hold views of it.
    assert any(isinstance(part, memoryview) and part.obj is data for part in parts)


@pytest.mark.parametrize("stream_id", STREAM_IDS)
@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 300_000])
def test_stream_data_payload_reads_what_decode_reads(stream_id: int, size: int) -> None:
    data = random.Random(size).randbytes(size)
    body = CODEC.encode(StreamData(stream_id=stream_id, data=data))
    parsed = CODEC.stream_data_payload(body)
    assert parsed is not None
    assert parsed[0] == stream_id and bytes(parsed[1]) == data
    assert CODEC.decode(body) == StreamData(stream_id=stream_id, data=bytes(parsed[1]))
    assert parsed[1].readonly


def _packed(value: dict[str, Any]) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@pytest.mark.parametrize(
    "body",
    [
        # Valid messages in another layout: the general decoder reads them.
        _packed({"stream_id": 3, "t": "stream_data", "data": b"abc"}),
        _packed({"t": "stream_data", "data": b"abc", "stream_id": 3}),
        b"\x83\xa1t\xabstream_data\xa9stream_id\xd0\x03\xa4data\xc4\x03abc",
        _packed({"t": "stream_end", "stream_id": 3}),
        # Invalid ones: the general decoder explains why.
        _packed({"t": "stream_data", "stream_id": 0, "data": b"abc"}),
        _packed({"t": "stream_data", "stream_id": MAX_ID + 1, "data": b"abc"}),
        _packed({"t": "stream_data", "stream_id": 3, "data": "abc"}),
        _packed({"t": "stream_data", "stream_id": -3, "data": b"abc"}),
        _packed({"t": "stream_data", "stream_id": 3, "data": b"abc"}) + b"\x00",
        _packed({"t": "stream_data", "stream_id": 3, "data": b"abc"})[:-1],
        _packed({"t": "stream_data", "stream_id": 3, "data": b"abc", "x": 1}),
        b"\x83\xa1t\xabstream_data\xa9stream_id\xcd\x00",
    ],
)
def test_stream_data_payload_leaves_every_other_layout_to_decode(body: bytes) -> None:
    assert CODEC.stream_data_payload(body) is None
    try:
        message = CODEC.decode(body)
    except MalformedMessage:
        return
    assert message in (StreamData(stream_id=3, data=b"abc"), StreamEnd(stream_id=3))


def test_stream_data_payload_never_accepts_a_body_decode_reads_differently() -> None:
    rng = random.Random(3)
    valid = CODEC.encode(StreamData(stream_id=300, data=b"payload!"))
    for _ in range(3000):
        body = bytearray(valid)
        for _ in range(rng.randint(1, 3)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        parsed = CODEC.stream_data_payload(bytes(body))
        if parsed is not None:
            decoded = CODEC.decode(bytes(body))
            assert decoded == StreamData(stream_id=parsed[0], data=bytes(parsed[1]))


# -- streams over a real connection ----------------------------------------------------------


async def _sink(stream: Stream, _payload: Message) -> None:
    """Reads slowly, then answers with the length and the last bytes it read."""
    total = bytearray()
    async for chunk in stream.chunks():
        assert isinstance(chunk, bytes | memoryview)
        assert memoryview(chunk).readonly
        total += chunk
        await asyncio.sleep(0.002)
    await stream.write(str(len(total)).encode() + b":" + bytes(total[-64:]))
    await stream.end()


async def _echo(stream: Stream, _payload: Message) -> None:
    async for chunk in stream:
        assert type(chunk) is bytes
        await stream.write(chunk)
    await stream.end()


@contextlib.asynccontextmanager
async def serving(**stream_handlers: Any) -> AsyncIterator[ProtocolServer]:
    handlers = {"sink": _sink, "echo": _echo, **stream_handlers}
    server = ProtocolServer(token=TOKEN, stream_handlers=handlers, options=FAST)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


async def connect(server: ProtocolServer) -> Connection:
    host, port = server.address
    return await open_connection(host, port, token=TOKEN, client_name="bulk", options=FAST)


@async_test(timeout=60)
async def test_a_reused_write_buffer_is_never_sent_twice_or_changed_in_flight() -> None:
    # The writer refills one buffer after every write, while the peer reads slowly: any
    # write that kept a reference to the buffer (instead of sending or copying it) would
    # deliver the later contents.
    async with serving() as server, await connect(server) as connection:
        stream = await connection.open_stream("sink")
        buffer = bytearray(MAX_DATA_CHUNK)
        expected = bytearray()
        for index in range(12):
            buffer[:] = bytes([index]) * len(buffer)
            await stream.write(buffer)
            expected += buffer
        await stream.end()
        answer = await stream.read_all()
        assert answer == str(len(expected)).encode() + b":" + bytes(expected[-64:])


async def slow_raw_client(
    server: ProtocolServer, kind: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A handshaken raw connection with a tiny receive buffer that opened stream 1 of ``kind``
    (the test reads the frames itself)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, server.address)
    reader, writer = await asyncio.open_connection(sock=sock)
    hello = Hello(protocol_version=PROTOCOL_VERSION, token=TOKEN, client_name="raw")
    writer.write(CODEC.encode_frame(hello))
    writer.write(CODEC.encode_frame(StreamOpen(stream_id=1, kind=kind, payload=Ok())))
    return reader, writer


@async_test(timeout=60)
async def test_a_write_the_socket_cannot_take_at_once_is_copied_before_write_returns() -> None:
    # The peer's receive buffer is tiny and it reads nothing until every write returned:
    # most of each write waits in the transport. The writer then changes its buffer; what
    # arrives must still be what each write was given.
    chunks = 4
    written = asyncio.Event()

    async def source(stream: Stream, _payload: Message) -> None:
        buffer = bytearray(MAX_DATA_CHUNK)
        for index in range(chunks):
            buffer[:] = bytes([index + 1]) * len(buffer)
            await stream.write(buffer)
        buffer[:] = b"\xff" * len(buffer)
        written.set()
        await stream.end()

    async with serving(source=source) as server:
        reader, writer = await slow_raw_client(server, "source")
        await asyncio.wait_for(written.wait(), 20)
        received = bytearray()
        while len(received) < chunks * MAX_DATA_CHUNK:
            body = await read_frame(reader)
            assert body is not None
            message = CODEC.decode(body)
            if isinstance(message, StreamData):
                received += message.data
        assert received == b"".join(bytes([i + 1]) * MAX_DATA_CHUNK for i in range(chunks))
        writer.close()


@async_test(timeout=60)
async def test_stream_echo_of_writes_of_every_size_through_one_connection() -> None:
    async with serving() as server, await connect(server) as connection:
        stream = await connection.open_stream("echo")
        rng = random.Random(11)
        pieces = [rng.randbytes(size) for size in SIZES * 2 if size]
        rng.shuffle(pieces)

        async def send() -> None:
            for piece in pieces:
                await stream.write(memoryview(piece))
            await stream.end()

        _, echoed = await asyncio.gather(send(), stream.read_all())
        assert echoed == b"".join(pieces)


@async_test(timeout=20)
async def test_a_body_buffer_is_reused_only_once_nothing_refers_to_it() -> None:
    reader = FrameReader(limit=1024)
    assert reader.start_frames()
    size = DIRECT_BODY_THRESHOLD * 4

    async def frame_of(fill: int) -> memoryview:
        reader.feed_data(encode_frame(bytes([fill]) * size))
        frame = await reader.next_frame()
        assert isinstance(frame, memoryview)
        return frame

    first = await frame_of(1)
    second = await frame_of(2)
    # Both are alive: each has a buffer of its own, and neither changed.
    first_buffer, second_buffer = id(first.obj), id(second.obj)
    assert first_buffer != second_buffer
    kept = first[10:20]  # any view of a buffer keeps it in use
    del first
    third = await frame_of(3)
    assert id(third.obj) not in (first_buffer, second_buffer)
    assert bytes(kept) == b"\x01" * 10 and bytes(second) == b"\x02" * size
    del kept
    fourth = await frame_of(4)
    # Nothing referred to the first buffer any more: it carries the fourth frame.
    assert id(fourth.obj) == first_buffer
    assert bytes(fourth) == b"\x04" * size
    assert bytes(second) == b"\x02" * size and bytes(third) == b"\x03" * size


# -- sending what a socket received (splice) -------------------------------------------------


def _source_pair(kind: str) -> tuple[socket.socket, socket.socket]:
    """(feeding end, end the stream sends from), both non-blocking."""
    if kind == "unix":
        feed, source = socket.socketpair()
    else:
        listener = socket.create_server(("127.0.0.1", 0))
        feed = socket.create_connection(listener.getsockname())
        source, _ = listener.accept()
        listener.close()
    for sock in (feed, source):
        sock.setblocking(False)
    return feed, source


def _forwarder(
    chunks: list[bytes], kind: str, splice: bool, done: asyncio.Event, *, slow: bool = False
) -> Callable[[Stream, Message], Coroutine[Any, Any, None]]:
    """A stream handler that sends each chunk as a socket received it, then a marker."""

    async def forward(stream: Stream, _payload: Message) -> None:
        if not splice:
            stream.connection._splice_unusable = True
        if slow:
            # A small send buffer: the connection's socket takes little of a frame at once.
            connection_socket = stream.connection._writer.transport.get_extra_info("socket")
            connection_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        loop = asyncio.get_running_loop()
        feed, source = _source_pair(kind)
        with feed, source:
            for chunk in chunks:
                feeding = asyncio.create_task(loop.sock_sendall(feed, chunk))
                sent = 0
                while sent < len(chunk):
                    size = await stream.send_from_socket(source)
                    assert 0 < size <= MAX_DATA_CHUNK
                    sent += size
                await feeding
                await stream.write(b"|")
            feed.shutdown(socket.SHUT_WR)
            assert await stream.send_from_socket(source) == 0
        done.set()
        await stream.end()

    return forward


@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("splice", [True, False])
@async_test(timeout=60)
async def test_data_from_a_socket_arrives_in_order_even_when_the_peer_is_slow(
    kind: str, splice: bool
) -> None:
    # The peer's receive buffer is tiny and it reads nothing until everything was sent:
    # most frames cannot go out at once and wait in the transport behind each other.
    rng = random.Random(21)
    chunks = [rng.randbytes(size) for size in (1, 5000, 300_000, MAX_DATA_CHUNK + 7, 70_000)]
    done = asyncio.Event()
    async with serving(forward=_forwarder(chunks, kind, splice, done, slow=True)) as server:
        reader, writer = await slow_raw_client(server, "forward")
        await asyncio.wait_for(done.wait(), 20)
        received = bytearray()
        while True:
            body = await read_frame(reader)
            assert body is not None
            message = CODEC.decode(body)
            if isinstance(message, StreamEnd):
                break
            if isinstance(message, StreamData):
                received += message.data
        assert received == b"".join(chunk + b"|" for chunk in chunks)
        writer.close()


@pytest.mark.parametrize("splice", [True, False])
@async_test(timeout=60)
async def test_sending_from_a_socket_waits_for_flow_control_credit(splice: bool) -> None:
    payload = random.Random(4).randbytes(STREAM_WINDOW * 2 + 999)
    done = asyncio.Event()
    async with (
        serving(forward=_forwarder([payload], "tcp", splice, done)) as server,
        await connect(server) as connection,
    ):
        stream = await connection.open_stream("forward")
        # Nothing is read: the sender stops after one window, which arrives whole.
        while stream._buffered < STREAM_WINDOW:
            await asyncio.sleep(0.01)
        (served,) = server.connections
        assert served._streams[stream.id]._send_credit == 0
        await asyncio.sleep(0.05)
        assert stream._buffered == STREAM_WINDOW
        assert await stream.read_all() == payload + b"|"
        assert done.is_set()


def test_a_splice_pipe_holds_what_it_moved_until_it_is_emptied() -> None:
    feed, source = _source_pair("tcp")
    out_feed, out = _source_pair("tcp")
    pipe = SplicePipe(MAX_DATA_CHUNK)
    try:
        with pytest.raises(BlockingIOError):
            pipe.fill_from(source, 100)
        feed.send(b"abcdefgh")
        time.sleep(0.05)
        assert pipe.fill_from(source, 5) == 5
        pipe.empty_into(out_feed.fileno())
        assert pipe.held == 0
        assert pipe.fill_from(source, 100) == 3
        assert pipe.take() == b"fgh"
        time.sleep(0.05)
        assert out.recv(100) == b"abcde"
        feed.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
        assert pipe.fill_from(source, 100) == 0
    finally:
        pipe.close()
        for sock in (feed, source, out_feed, out):
            sock.close()


class _UnsplicableSource:
    """A source whose descriptor ``splice`` refuses (an eventfd); ``recv_into`` serves
    ``data``. Stands for any source the kernel cannot splice from."""

    def __init__(self, data: bytes) -> None:
        self._fd = os.eventfd(0)
        self._data = memoryview(data)

    def fileno(self) -> int:
        return self._fd

    def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
        size = min(nbytes or len(buffer), len(self._data))
        buffer[:size] = self._data[:size]
        self._data = self._data[size:]
        return size

    def close(self) -> None:
        os.close(self._fd)


@async_test(timeout=20)
async def test_a_source_that_cannot_be_spliced_is_read_and_splicing_goes_on() -> None:
    unsplicable = random.Random(8).randbytes(300_000)
    spliced = random.Random(9).randbytes(200_000)
    used_pipe: list[bool] = []

    async def forward(stream: Stream, _payload: Message) -> None:
        source = _UnsplicableSource(unsplicable)
        try:
            while await stream.send_from_socket(source):  # type: ignore[arg-type]
                pass
        finally:
            source.close()
        loop = asyncio.get_running_loop()
        feed, sock = _source_pair("tcp")
        with feed, sock:
            await loop.sock_sendall(feed, spliced)
            feed.shutdown(socket.SHUT_WR)
            while await stream.send_from_socket(sock):
                pass
        used_pipe.append(stream.connection._pipe is not None)
        await stream.end()

    async with serving(forward=forward) as server, await connect(server) as connection:
        stream = await connection.open_stream("forward")
        assert await stream.read_all() == unsplicable + spliced
        assert used_pipe == [True]
