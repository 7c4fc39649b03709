"""Connections over real TCP on 127.0.0.1: handshake, requests, streams, heartbeats, closing."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import msgpack
import pytest
from asyncio_runner import async_test

from mirrord_core.protocol import (
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    STREAM_WINDOW,
    Codec,
    ConnectFailed,
    Connection,
    ConnectionClosedLocally,
    ConnectionLost,
    ConnectionOptions,
    FrameTooLarge,
    Goodbye,
    HandshakeError,
    HandshakeRefused,
    Hello,
    Message,
    Ok,
    PeerClosed,
    PeerTimeout,
    Ping,
    Pong,
    ProtocolError,
    ProtocolServer,
    ProtocolViolationByPeer,
    Refused,
    Request,
    RequestFailed,
    Response,
    Stream,
    StreamClosedError,
    StreamData,
    StreamEnd,
    StreamOpen,
    StreamRefused,
    StreamReset,
    StreamResetError,
    Welcome,
    WindowUpdate,
    encode_frame,
    open_connection,
    read_frame,
    register_message,
)
from mirrord_core.protocol.errors import MAX_REASON_LENGTH
from mirrord_core.protocol.handshake import unsupported_version_reason
from mirrord_core.protocol.streams import Stream as StreamImpl

TOKEN = "test-token-0123456789"


# -- messages used by these tests --------------------------------------------------------


@register_message
@attrs.frozen(kw_only=True)
class Double(Message):
    TAG = "test_connection.double"
    value: int
    delay: float = 0.0


@register_message
@attrs.frozen(kw_only=True)
class Doubled(Message):
    TAG = "test_connection.doubled"
    value: int


@register_message
@attrs.frozen(kw_only=True)
class Fail(Message):
    TAG = "test_connection.fail"
    how: str


@register_message
@attrs.frozen(kw_only=True)
class Blob(Message):
    TAG = "test_connection.blob"
    data: bytes


@register_message
@attrs.frozen(kw_only=True)
class Hang(Message):
    TAG = "test_connection.hang"


async def double(_connection: Connection, payload: Double) -> Doubled:
    await asyncio.sleep(payload.delay)
    return Doubled(value=payload.value * 2)


async def fail(_connection: Connection, payload: Fail) -> Message | None:
    if payload.how == "value":
        raise ValueError("boom")
    if payload.how == "oserror":
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")
    if payload.how == "custom":
        raise RequestFailed("not_allowed", "you may not")
    if payload.how == "none":
        return None
    if payload.how == "huge":
        return Blob(data=b"x" * (9 * 1024 * 1024))
    return Blob(data=payload.how.encode())


async def hang(_connection: Connection, _payload: Hang) -> None:
    await asyncio.Event().wait()


async def echo_stream(stream: Stream, _payload: Message) -> None:
    async for chunk in stream:
        await stream.write(chunk)
    await stream.end()


async def hold_stream(stream: Stream, _payload: Message) -> None:
    """Accept and never read: the stream stays open until the connection ends."""
    await stream.accept()
    await asyncio.Event().wait()


REQUEST_HANDLERS: dict[Any, Any] = {Double: double, Fail: fail, Hang: hang}
STREAM_HANDLERS: dict[str, Any] = {"echo": echo_stream, "hold": hold_stream}

FAST = ConnectionOptions(heartbeat_interval=None, peer_timeout=None, close_timeout=1.0)


@contextlib.asynccontextmanager
async def serving(**kwargs: Any) -> AsyncIterator[ProtocolServer]:
    kwargs.setdefault("token", TOKEN)
    kwargs.setdefault("request_handlers", REQUEST_HANDLERS)
    kwargs.setdefault("stream_handlers", STREAM_HANDLERS)
    kwargs.setdefault("options", FAST)
    server = ProtocolServer(**kwargs)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


async def client(server: ProtocolServer, **kwargs: Any) -> Connection:
    kwargs.setdefault("token", TOKEN)
    kwargs.setdefault("client_name", "test client")
    kwargs.setdefault("options", FAST)
    host, port = server.address
    return await open_connection(host, port, **kwargs)


async def raw_connect(server: ProtocolServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.address
    return await asyncio.open_connection(host, port)


async def raw_handshake(
    server: ProtocolServer,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await raw_connect(server)
    hello = Hello(protocol_version=PROTOCOL_VERSION, token=TOKEN, client_name="raw")
    writer.write(CODEC.encode_frame(hello))
    body = await read_frame(reader)
    assert body is not None
    assert isinstance(CODEC.decode(body), Welcome)
    return reader, writer


async def frames_until_eof(reader: asyncio.StreamReader) -> list[Message]:
    messages = []
    while (body := await read_frame(reader)) is not None:
        messages.append(CODEC.decode(body))
    return messages


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def expect_message(reader: asyncio.StreamReader) -> Message:
    body = await read_frame(reader)
    assert body is not None
    return CODEC.decode(body)


CODEC = Codec()


# -- handshake -------------------------------------------------------------------------------


@async_test()
async def test_handshake_success() -> None:
    connected: list[Connection] = []
    async with serving(on_connect=connected.append) as server:
        connection = await client(server, client_name="mirrord unit test")
        async with connection:
            await asyncio.sleep(0.05)
            assert len(connected) == 1
            server_side = connected[0]
            assert server.connections == {server_side}
            assert server_side.session_id == connection.session_id
            assert len(connection.session_id) == 16
            assert server_side.peer_name == "mirrord unit test"
            assert connection.is_client
            assert not server_side.is_client
            reply = await connection.request(Double(value=21))
            assert reply == Doubled(value=42)


@async_test()
async def test_wrong_token_is_refused() -> None:
    async with serving() as server:
        with pytest.raises(HandshakeRefused, match="refused the connection: invalid session token"):
            await client(server, token="wrong")
        await wait_until(lambda: server.rejected == 1)
        assert not server.connections


@async_test()
async def test_token_of_a_different_length_is_refused() -> None:
    async with serving() as server:
        with pytest.raises(HandshakeRefused) as info:
            await client(server, token=TOKEN + "x")
        assert info.value.reason == "invalid session token"


@pytest.mark.parametrize("extra_field", [False, True])
@async_test()
async def test_wrong_version_is_refused(extra_field: bool) -> None:
    async with serving() as server:
        reader, writer = await raw_connect(server)
        hello: dict[str, Any] = {
            "t": "hello",
            "protocol_version": 99,
            "token": TOKEN,
            "client_name": "future client",
        }
        if extra_field:
            hello["capabilities"] = ["something new"]  # a newer Hello still gets "wrong version"
        writer.write(encode_frame(msgpack.packb(hello)))
        messages = await frames_until_eof(reader)
        writer.close()
        assert messages == [Refused(reason=unsupported_version_reason(99))]
        await wait_until(lambda: server.rejected == 1)


@async_test()
async def test_first_frame_not_hello_gets_protocol_error() -> None:
    async with serving() as server:
        reader, writer = await raw_connect(server)
        writer.write(CODEC.encode_frame(Ping(nonce=1)))
        messages = await frames_until_eof(reader)
        writer.close()
        assert messages == [ProtocolError(message="expected a 'hello' message first, got 'ping'")]


@async_test()
async def test_handshake_timeout() -> None:
    options = attrs.evolve(FAST, handshake_timeout=0.3)
    async with serving(options=options) as server:
        reader, writer = await raw_connect(server)
        started = time.monotonic()
        messages = await frames_until_eof(reader)
        elapsed = time.monotonic() - started
        writer.close()
        assert messages == [ProtocolError(message="no hello within the handshake timeout of 0.3 s")]
        assert 0.25 < elapsed < 2


@async_test()
async def test_client_handshake_times_out_on_a_silent_server() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    options = attrs.evolve(FAST, handshake_timeout=0.3, close_timeout=0.3)
    with pytest.raises(HandshakeError, match=r"no answer from the server within 0\.3 s"):
        await open_connection("127.0.0.1", port, token=TOKEN, client_name="c", options=options)
    server.close()
    await server.wait_closed()


@async_test()
async def test_unreachable_server() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(ConnectFailed, match=f"cannot connect to 127.0.0.1:{port}: .*refused"):
        await open_connection("127.0.0.1", port, token=TOKEN, client_name="c")


# -- requests --------------------------------------------------------------------------------


@async_test(timeout=20)
async def test_many_concurrent_requests() -> None:
    async with serving() as server, await client(server) as connection:
        values = list(range(1, 1001))
        rng = random.Random(7)
        replies = await asyncio.gather(
            *(
                connection.request(Double(value=value, delay=rng.random() * 0.02))
                for value in values
            )
        )
        assert replies == [Doubled(value=value * 2) for value in values]


@async_test()
async def test_handler_failures_become_error_responses() -> None:
    async with serving() as server, await client(server) as connection:
        with pytest.raises(RequestFailed) as info:
            await connection.request(Fail(how="value"))
        assert info.value.code == "internal_error"
        assert info.value.message == "ValueError: boom"
        assert info.value.errno is None

        with pytest.raises(RequestFailed) as info:
            await connection.request(Fail(how="oserror"))
        assert (info.value.code, info.value.errno) == ("ENOENT", errno.ENOENT)
        os_error = info.value.to_os_error()
        assert isinstance(os_error, FileNotFoundError)

        with pytest.raises(RequestFailed, match="not_allowed: you may not"):
            await connection.request(Fail(how="custom"))

        with pytest.raises(RequestFailed, match="unsupported: no handler for request type 'ok'"):
            await connection.request(Ok())

        with pytest.raises(RequestFailed) as info:
            await connection.request(Fail(how="huge"))
        assert info.value.code == "response_too_large"

        assert await connection.request(Fail(how="none")) == Ok()
        assert await connection.request(Fail(how="abc")) == Blob(data=b"abc")
        assert not connection.closed
        assert len(server.connections) == 1


@async_test()
async def test_too_large_request_fails_locally_and_connection_survives() -> None:
    async with serving() as server, await client(server) as connection:
        with pytest.raises(FrameTooLarge):
            await connection.request(Blob(data=b"x" * (9 * 1024 * 1024)))
        assert await connection.request(Double(value=1)) == Doubled(value=2)


@async_test()
async def test_request_timeout_and_late_response_is_ignored() -> None:
    async with serving() as server, await client(server) as connection:
        with pytest.raises(TimeoutError):
            await connection.request(Double(value=1, delay=0.2), timeout=0.02)
        await asyncio.sleep(0.3)  # the late response arrives and must be ignored
        assert not connection.closed
        assert await connection.request(Double(value=2)) == Doubled(value=4)


@async_test()
async def test_overloaded_server_answers_with_an_error() -> None:
    options = attrs.evolve(FAST, max_concurrent_requests=2)
    async with serving(options=options) as server, await client(server) as connection:
        slow = [asyncio.create_task(connection.request(Double(value=1, delay=0.3)))]
        slow.append(asyncio.create_task(connection.request(Double(value=2, delay=0.3))))
        await asyncio.sleep(0.05)
        with pytest.raises(RequestFailed, match="overloaded"):
            await connection.request(Double(value=3))
        assert [reply.value for reply in await asyncio.gather(*slow)] == [2, 4]  # type: ignore[attr-defined]


@register_message
@attrs.frozen(kw_only=True)
class Quit(Message):
    TAG = "test_connection.quit"


@async_test()
async def test_handler_can_close_its_own_connection() -> None:
    async def quit_handler(connection: Connection, _payload: Quit) -> None:
        await connection.close("asked to quit")

    handlers = {**REQUEST_HANDLERS, Quit: quit_handler}
    async with serving(request_handlers=handlers) as server:
        connection = await client(server)
        started = time.monotonic()
        with pytest.raises(PeerClosed, match="closed by the peer: asked to quit"):
            await connection.request(Quit())
        await connection.wait_closed()
        await wait_until(lambda: not server.connections)
        # Well below close_timeout: the closing handler does not wait for itself.
        assert time.monotonic() - started < FAST.close_timeout / 2


@async_test()
async def test_server_on_a_pre_bound_socket() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = ProtocolServer(token=TOKEN, request_handlers=REQUEST_HANDLERS, options=FAST)
    await server.start(sock=sock)
    try:
        assert server.address == sock.getsockname()
        async with await client(server) as connection:
            assert await connection.request(Double(value=4)) == Doubled(value=8)
    finally:
        await server.close()


@async_test()
async def test_ping_round_trip() -> None:
    async with serving() as server, await client(server) as connection:
        rtt = await connection.ping(timeout=1)
        assert 0 < rtt < 1


# -- streams ---------------------------------------------------------------------------------


@async_test(timeout=20)
async def test_stream_echo_of_several_mib_stays_within_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    most_buffered = 0
    original = StreamImpl._on_data

    def on_data(self: StreamImpl, data: bytes) -> None:
        nonlocal most_buffered
        original(self, data)
        most_buffered = max(most_buffered, self._buffered)

    monkeypatch.setattr(StreamImpl, "_on_data", on_data)
    payload = random.Random(1).randbytes(6 * 1024 * 1024 + 12345)
    async with serving() as server, await client(server) as connection:
        stream = await connection.open_stream("echo")
        assert stream.accept_payload == Ok()

        async def send() -> None:
            view = memoryview(payload)
            for start in range(0, len(payload), 100_000):
                await stream.write(view[start : start + 100_000])
            await stream.end()

        sender = asyncio.create_task(send())
        received = bytearray()
        while chunk := await stream.read(50_000):
            assert len(chunk) <= 50_000
            received += chunk
        await sender
        assert bytes(received) == payload
        assert stream.at_eof()
        await asyncio.sleep(0.05)
        assert stream.closed
        assert connection.open_streams == 0
    assert 0 < most_buffered <= STREAM_WINDOW


@async_test(timeout=20)
async def test_stalled_stream_does_not_block_other_streams_or_pings() -> None:
    release = asyncio.Event()
    stalled: list[Stream] = []

    async def lazy_sink(stream: Stream, _payload: Message) -> None:
        await stream.accept()
        stalled.append(stream)
        await release.wait()  # the application does not read for now
        total = len(await stream.read_all())
        await stream.write(str(total).encode())
        await stream.end()

    handlers = {**STREAM_HANDLERS, "lazy": lazy_sink}
    async with serving(stream_handlers=handlers) as server, await client(server) as connection:
        slow = await connection.open_stream("lazy")
        blob = b"s" * (3 * STREAM_WINDOW)

        async def fill() -> None:
            await slow.write(blob)
            await slow.end()

        filler = asyncio.create_task(fill())
        await asyncio.sleep(0.2)
        # The writer is blocked on credit with exactly one window buffered at the reader.
        assert not filler.done()
        assert stalled[0]._buffered == STREAM_WINDOW

        fast = await connection.open_stream("echo")
        data = os.urandom(2 * 1024 * 1024)

        async def echo_round() -> bytes:
            writer = asyncio.create_task(fast.write(data))
            received = bytearray()
            while len(received) < len(data):
                received += await fast.read()
            await writer
            return bytes(received)

        assert await asyncio.wait_for(echo_round(), 5) == data
        assert await connection.ping(timeout=1) < 1
        assert await connection.request(Double(value=5), timeout=1) == Doubled(value=10)
        assert not filler.done()

        release.set()
        await asyncio.wait_for(filler, 5)
        assert await slow.read_all() == str(len(blob)).encode()
        await fast.end()
        assert await fast.read_all() == b""


@async_test()
async def test_server_opens_a_stream_to_the_client() -> None:
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_push(stream: Stream, payload: Message) -> None:
        assert payload == Blob(data=b"meta")
        await stream.accept(Blob(data=b"ready"))
        received.set_result(await stream.read_all())

    async def push(connection: Connection) -> None:
        stream = await connection.open_stream("push", Blob(data=b"meta"))
        assert stream.id % 2 == 0  # server-opened streams are even
        assert stream.accept_payload == Blob(data=b"ready")
        await stream.write(b"hello from the agent")
        await stream.end()

    async with (
        serving(on_connect=push) as server,
        await client(server, stream_handlers={"push": on_push}),
    ):
        assert await asyncio.wait_for(received, 5) == b"hello from the agent"


@async_test()
async def test_stream_without_handler_is_refused() -> None:
    async with serving() as server, await client(server) as connection:
        with pytest.raises(StreamRefused, match="no handler for stream kind 'nope'"):
            await connection.open_stream("nope")
        assert connection.open_streams == 0
        assert await connection.ping(timeout=1) < 1


@async_test()
async def test_stream_handler_failure_before_accept_refuses_with_errno() -> None:
    async def connect_out(_stream: Stream, _payload: Message) -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    async with (
        serving(stream_handlers={"connect": connect_out}) as server,
        await client(server) as connection,
    ):
        with pytest.raises(StreamRefused) as info:
            await connection.open_stream("connect")
        assert info.value.errno == errno.ECONNREFUSED
        assert "ECONNREFUSED: Connection refused" in str(info.value)


@async_test()
async def test_handler_that_does_not_accept_refuses() -> None:
    async def lazy(_stream: Stream, _payload: Message) -> None:
        return None

    async with (
        serving(stream_handlers={"lazy": lazy}) as server,
        await client(server) as connection,
    ):
        with pytest.raises(StreamRefused, match="returned without accepting"):
            await connection.open_stream("lazy")


@async_test()
async def test_handler_failure_after_accept_resets_the_stream() -> None:
    async def broken(stream: Stream, _payload: Message) -> None:
        await stream.write(b"partial")
        raise RuntimeError("disk on fire")

    async with (
        serving(stream_handlers={"broken": broken}) as server,
        await client(server) as connection,
    ):
        stream = await connection.open_stream("broken")
        with pytest.raises(StreamResetError) as info:
            while await stream.read():
                pass
        assert "reset by the peer: stream handler failed: RuntimeError: disk on fire" in str(
            info.value
        )
        with pytest.raises(StreamResetError):
            await stream.write(b"more")
        assert await connection.request(Double(value=1)) == Doubled(value=2)


@async_test()
async def test_reset_by_the_opener_reaches_the_handler() -> None:
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def reader(stream: Stream, _payload: Message) -> None:
        try:
            await stream.read()
            await stream.read()
        except StreamResetError as exc:
            outcome.set_result(exc)
            raise

    async with (
        serving(stream_handlers={"reader": reader}) as server,
        await client(server) as connection,
    ):
        stream = await connection.open_stream("reader")
        await stream.write(b"x")
        stream.reset("changed my mind", errno=errno.ECANCELED)
        error = await asyncio.wait_for(outcome, 5)
        assert isinstance(error, StreamResetError)
        assert error.reason == "changed my mind"
        assert error.errno == errno.ECANCELED
        with pytest.raises(StreamResetError, match="reset locally"):
            await stream.read()


@async_test()
async def test_abandoned_open_resets_the_stream_on_the_other_side() -> None:
    cancelled = asyncio.Event()

    async def never_accepts(_stream: Stream, _payload: Message) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    connected: list[Connection] = []
    handlers = {**STREAM_HANDLERS, "slow": never_accepts}
    async with (
        serving(stream_handlers=handlers, on_connect=connected.append) as server,
        await client(server) as connection,
    ):
        with pytest.raises(TimeoutError):
            await connection.open_stream("slow", timeout=0.1)
        assert connection.open_streams == 0
        await wait_until(lambda: connected[0].open_streams == 0)
        await asyncio.wait_for(cancelled.wait(), 2)  # the handler's setup is abandoned too
        assert await connection.request(Double(value=1)) == Doubled(value=2)


@async_test()
async def test_data_outlives_a_handler_that_returned() -> None:
    blob = os.urandom(STREAM_WINDOW + 1000)  # more than one window: needs credit later
    returned = asyncio.Event()

    async def download(stream: Stream, _payload: Message) -> None:
        write = asyncio.create_task(stream.write(blob))
        await asyncio.sleep(0.05)
        assert not write.done()  # blocked on credit until the client reads
        await write
        await stream.end()
        returned.set()

    connected: list[Connection] = []
    handlers = {"download": download}
    async with (
        serving(stream_handlers=handlers, on_connect=connected.append) as server,
        await client(server) as connection,
    ):
        stream = await connection.open_stream("download")
        await asyncio.sleep(0.1)
        assert await stream.read_all() == blob
        await asyncio.wait_for(returned.wait(), 2)
        await asyncio.sleep(0.05)  # the handler returned and closed its side
        assert connected[0].open_streams == 1  # waiting for the client to end too
        await stream.close()
        await wait_until(lambda: connected[0].open_streams == 0)
        assert connection.open_streams == 0
        with pytest.raises(StreamClosedError, match="read after close"):
            await stream.read()


@async_test()
async def test_writing_to_a_closed_reader_resets() -> None:
    async def greet(stream: Stream, _payload: Message) -> None:
        await stream.write(b"hello")

    async with (
        serving(stream_handlers={"greet": greet}) as server,
        await client(server) as connection,
    ):
        stream = await connection.open_stream("greet")
        assert await stream.readexactly(5) == b"hello"
        assert await stream.read() == b""  # the handler returned: its side ended
        await asyncio.sleep(0.05)
        with pytest.raises(StreamResetError, match="the receiver closed the stream"):
            for _ in range(100):
                await stream.write(b"anyone there?")
                await asyncio.sleep(0.01)


@async_test()
async def test_write_after_end_is_an_error() -> None:
    async with serving() as server, await client(server) as connection:
        stream = await connection.open_stream("echo")
        await stream.write(b"abc")
        await stream.end()
        with pytest.raises(StreamClosedError, match="write after end"):
            await stream.write(b"more")
        assert await stream.read_all() == b"abc"
        assert await stream.readexactly(0) == b""
        with pytest.raises(asyncio.IncompleteReadError):
            await stream.readexactly(1)


# -- heartbeats ------------------------------------------------------------------------------


@async_test()
async def test_heartbeat_detects_a_silent_client() -> None:
    closed: asyncio.Future[ConnectionLost] = asyncio.get_running_loop().create_future()

    def on_disconnect(connection: Connection) -> None:
        assert connection.close_reason is not None
        closed.set_result(connection.close_reason)

    options = ConnectionOptions(heartbeat_interval=0.1, peer_timeout=0.5, close_timeout=0.5)
    async with serving(options=options, on_disconnect=on_disconnect) as server:
        reader, writer = await raw_handshake(server)
        started = time.monotonic()
        messages = await frames_until_eof(reader)  # never answers the pings
        elapsed = time.monotonic() - started
        writer.close()
        assert 0.5 <= elapsed < 2
        assert any(isinstance(message, Ping) for message in messages)
        assert isinstance(messages[-1], Goodbye)
        assert messages[-1].reason.startswith("no message from you for")
        reason = await asyncio.wait_for(closed, 2)
        assert isinstance(reason, PeerTimeout)
        assert "no message from the peer for" in str(reason)
        assert "dead-peer timeout 0.5 s" in str(reason)


@async_test()
async def test_heartbeats_keep_an_idle_connection_alive() -> None:
    options = ConnectionOptions(heartbeat_interval=0.05, peer_timeout=0.3, close_timeout=0.5)
    async with (
        serving(options=options) as server,
        await client(server, options=options) as connection,
    ):
        await asyncio.sleep(1.0)  # idle for > 3 peer timeouts
        assert not connection.closed
        assert len(server.connections) == 1


@async_test()
async def test_client_detects_a_dead_server() -> None:
    async def frozen_agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)
        welcome = Welcome(protocol_version=PROTOCOL_VERSION, session_id="frozen")
        writer.write(CODEC.encode_frame(welcome))
        await reader.read()  # reads everything, answers nothing
        writer.close()

    server = await asyncio.start_server(frozen_agent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    options = ConnectionOptions(heartbeat_interval=0.1, peer_timeout=0.5, close_timeout=0.3)
    connection = await open_connection(
        "127.0.0.1", port, token=TOKEN, client_name="c", options=options
    )
    started = time.monotonic()
    with pytest.raises(PeerTimeout, match="no message from the peer for"):
        await connection.request(Double(value=1))
    assert time.monotonic() - started < 2
    with pytest.raises(PeerTimeout):
        await connection.ping()
    await connection.wait_closed()
    server.close()
    await server.wait_closed()


# -- closing and connection loss -------------------------------------------------------------


@async_test()
async def test_goodbye_fails_pending_operations_with_the_reason() -> None:
    connected: list[Connection] = []
    async with serving(on_connect=connected.append) as server:
        connection = await client(server)
        request = asyncio.create_task(connection.request(Hang()))
        stream = await connection.open_stream("echo")
        read = asyncio.create_task(stream.read())
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await connected[0].close("agent shutting down")
        for task in (request, read):
            with pytest.raises(PeerClosed, match="closed by the peer: agent shutting down"):
                await task
        assert time.monotonic() - started < 1
        with pytest.raises(PeerClosed, match="agent shutting down"):
            await connection.request(Double(value=1))
        reason = await connection.wait_closed()
        assert isinstance(reason, PeerClosed)


@async_test()
async def test_local_close_fails_pending_operations() -> None:
    async with serving() as server:
        connection = await client(server)
        callbacks: list[Connection] = []
        connection.add_close_callback(callbacks.append)
        request = asyncio.create_task(connection.request(Hang()))
        await asyncio.sleep(0.05)
        await connection.close("user pressed ctrl-c")
        with pytest.raises(ConnectionClosedLocally, match="connection closed: user pressed ctrl-c"):
            await request
        assert callbacks == [connection]
        await asyncio.sleep(0.1)
        assert not server.connections


@async_test()
async def test_abrupt_loss_fails_pending_operations_quickly() -> None:
    connected: list[Connection] = []
    async with serving(on_connect=connected.append) as server:
        connection = await client(server)
        request = asyncio.create_task(connection.request(Hang()))
        stream = await connection.open_stream("echo")
        blocked_write = asyncio.create_task(stream.write(b"x" * (4 * STREAM_WINDOW)))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        connected[0]._writer.transport.abort()  # the socket dies without a goodbye
        with pytest.raises(PeerClosed, match="connection lost") as info:
            await request
        assert isinstance(info.value, ConnectionLost)
        assert isinstance(info.value, ConnectionError)
        with pytest.raises(ConnectionLost):
            await blocked_write
        assert time.monotonic() - started < 1


KILLED_SERVER = """
import asyncio, sys
from mirrord_core.protocol import ProtocolServer

async def hang(connection, payload):
    await asyncio.Event().wait()

async def main():
    server = ProtocolServer(token=sys.argv[1], request_handlers={"ok": hang})
    await server.start("127.0.0.1", 0)
    print(server.address[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@async_test(timeout=20)
async def test_killed_server_process_fails_pending_requests_within_a_second() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_SERVER, TOKEN, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), 10))
        connection = await open_connection(
            "127.0.0.1", port, token=TOKEN, client_name="c", options=FAST
        )
        request = asyncio.create_task(connection.request(Ok()))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(ConnectionLost, match="connection lost") as info:
            await request
        assert time.monotonic() - started < 1
        assert isinstance(info.value, PeerClosed)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


# -- protocol violations ---------------------------------------------------------------------


def _frame(raw: Any) -> bytes:
    return encode_frame(msgpack.packb(raw, use_bin_type=True))


VIOLATIONS: list[tuple[str, bytes, str]] = [
    ("oversized", (9 * 1024 * 1024).to_bytes(4, "big"), "exceeds the maximum frame size"),
    ("not msgpack", encode_frame(b"\xc1\xc1"), "frame is not valid msgpack"),
    ("unknown tag", _frame({"t": "launch_missiles"}), "unknown message type 'launch_missiles'"),
    (
        "wrong field type",
        _frame({"t": "ping", "nonce": "one"}),
        "invalid 'ping' message: expected an integer, got a string @ $.nonce",
    ),
    ("unknown field", _frame({"t": "ping", "nonce": 1, "x": 1}), "extra fields found (x)"),
    (
        "data for an unknown stream",
        CODEC.encode_frame(StreamData(stream_id=41, data=b"x")),
        "stream_data for stream 41, which was never opened",
    ),
    (
        "window update for an unknown stream",
        CODEC.encode_frame(WindowUpdate(stream_id=42, credit=5)),
        "window_update for stream 42, which was never opened",
    ),
    (
        "response to a request never sent",
        CODEC.encode_frame(Response(id=7, payload=Ok())),
        "response for request 7, which was never sent",
    ),
    (
        "hello after the handshake",
        CODEC.encode_frame(Hello(protocol_version=1, token=TOKEN, client_name="x")),
        "unexpected 'hello' message after the handshake",
    ),
    (
        "bare payload",
        CODEC.encode_frame(Double(value=1)),
        "unexpected 'test_connection.double' message outside a request",
    ),
    (
        "stream id of the wrong parity",
        CODEC.encode_frame(StreamOpen(stream_id=2, kind="echo", payload=Ok())),
        "the peer must use odd stream ids",
    ),
    (
        "stream id reused",
        CODEC.encode_frame(StreamOpen(stream_id=5, kind="nope", payload=Ok()))
        + CODEC.encode_frame(StreamOpen(stream_id=3, kind="nope", payload=Ok())),
        "stream ids must increase",
    ),
    (
        "duplicate request id",
        CODEC.encode_frame(Request(id=1, payload=Hang()))
        + CODEC.encode_frame(Request(id=1, payload=Hang())),
        "request id 1 is already in use",
    ),
    (
        "truncated frame",
        CODEC.encode_frame(Ping(nonce=1))[:-2],
        "stream ended inside a frame body",
    ),
]


@pytest.mark.parametrize(
    ("bad", "expected"),
    [(bad, expected) for _, bad, expected in VIOLATIONS],
    ids=[name for name, _, _ in VIOLATIONS],
)
@async_test()
async def test_protocol_violation_gets_protocol_error_and_a_closed_connection(
    bad: bytes, expected: str
) -> None:
    closed: list[Connection] = []
    async with serving(on_disconnect=closed.append) as server:
        bystander = await client(server)
        reader, writer = await raw_handshake(server)
        writer.write(bad)
        if expected.startswith("stream ended"):
            writer.write_eof()
        messages = await frames_until_eof(reader)
        writer.close()
        errors = [message for message in messages if isinstance(message, ProtocolError)]
        assert len(errors) == 1
        assert messages[-1] is errors[0]
        assert expected in errors[0].message
        await wait_until(lambda: len(closed) == 1)
        assert isinstance(closed[0].close_reason, ProtocolViolationByPeer)
        assert expected in str(closed[0].close_reason)
        # The other client never noticed.
        assert await bystander.request(Double(value=3), timeout=2) == Doubled(value=6)
        assert [connection.peer_name for connection in server.connections] == ["test client"]
        await bystander.close()


@async_test()
async def test_data_for_a_refused_stream_is_ignored() -> None:
    async with serving() as server:
        reader, writer = await raw_handshake(server)
        writer.write(CODEC.encode_frame(StreamOpen(stream_id=1, kind="nope", payload=Ok())))
        assert (await expect_message(reader)).TAG == "stream_reset"
        # Crossed the refusal in flight: dropped, not a violation.
        writer.write(CODEC.encode_frame(StreamData(stream_id=1, data=b"late")))
        writer.write(CODEC.encode_frame(StreamEnd(stream_id=1)))
        writer.write(CODEC.encode_frame(Ping(nonce=5)))
        assert await expect_message(reader) == Pong(nonce=5)
        writer.close()


@pytest.mark.parametrize(
    ("after_accept", "expected"),
    [
        (
            [
                StreamData(stream_id=1, data=b"z" * STREAM_WINDOW),
                StreamData(stream_id=1, data=b"!"),
            ],
            "stream 1: peer sent 1 bytes with only 0 bytes of flow-control credit",
        ),
        (
            [StreamEnd(stream_id=1), StreamData(stream_id=1, data=b"x")],
            "stream_data for stream 1 after its stream_end",
        ),
        ([StreamEnd(stream_id=1), StreamEnd(stream_id=1)], "duplicate stream_end for stream 1"),
        (
            [
                StreamOpen(stream_id=3, kind="hold", payload=Ok()),
                StreamData(stream_id=3, data=b"x"),
            ],
            "stream_data for stream 3 before it was accepted",
        ),
        (
            [WindowUpdate(stream_id=1, credit=2**31 - 1)],
            "stream 1: flow-control credit exceeds 2147483647 bytes",
        ),
    ],
    ids=["window overrun", "data after end", "duplicate end", "data before accept", "credit"],
)
@async_test()
async def test_stream_rule_violations(after_accept: list[Message], expected: str) -> None:
    async with serving() as server:
        reader, writer = await raw_handshake(server)
        writer.write(CODEC.encode_frame(StreamOpen(stream_id=1, kind="hold", payload=Ok())))
        assert (await expect_message(reader)).TAG == "stream_accept"
        for message in after_accept:
            writer.write(CODEC.encode_frame(message))
        messages = await frames_until_eof(reader)
        writer.close()
        assert messages == [ProtocolError(message=expected)]


@async_test(timeout=20)
async def test_huge_peer_supplied_strings_are_clipped_in_answers() -> None:
    async with serving() as server:
        reader, writer = await raw_handshake(server)
        kind = "k" * (MAX_FRAME_SIZE - 100)
        writer.write(CODEC.encode_frame(StreamOpen(stream_id=1, kind=kind, payload=Ok())))
        reset = await expect_message(reader)
        assert isinstance(reset, StreamReset)
        assert reset.reason.startswith("no handler for stream kind 'kkk")
        assert len(reset.reason) < 200
        writer.write(CODEC.encode_frame(Ping(nonce=1)))
        assert await expect_message(reader) == Pong(nonce=1)
        writer.write(_frame({"t": "x" * (MAX_FRAME_SIZE - 100)}))
        messages = await frames_until_eof(reader)
        writer.close()
        assert len(messages) == 1
        assert isinstance(messages[0], ProtocolError)
        assert messages[0].message.startswith("unknown message type 'xxx")
        assert len(messages[0].message) <= MAX_REASON_LENGTH


@async_test()
async def test_huge_handler_error_is_clipped() -> None:
    async def verbose(_connection: Connection, _payload: Message) -> None:
        raise ValueError("v" * (MAX_FRAME_SIZE + 10))

    async with serving(request_handlers={Quit: verbose}) as server, await client(server) as c:
        with pytest.raises(RequestFailed) as info:
            await c.request(Quit())
        assert info.value.code == "internal_error"
        assert info.value.message.startswith("ValueError: vvv")
        assert len(info.value.message) <= MAX_REASON_LENGTH
        assert await c.ping(timeout=1) < 1


@async_test()
async def test_client_reports_a_server_protocol_violation() -> None:
    async def garbage_agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)
        welcome = Welcome(protocol_version=PROTOCOL_VERSION, session_id="bad")
        writer.write(CODEC.encode_frame(welcome))
        await read_frame(reader)  # the client's first request
        writer.write(encode_frame(b"\x92\x01"))  # truncated msgpack
        messages = await frames_until_eof(reader)
        assert isinstance(messages[-1], ProtocolError)
        writer.close()

    server = await asyncio.start_server(garbage_agent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = await open_connection(
        "127.0.0.1", port, token=TOKEN, client_name="c", options=FAST
    )
    with pytest.raises(ProtocolViolationByPeer, match="the peer broke the protocol: frame is not"):
        await connection.request(Double(value=1))
    await connection.wait_closed()
    server.close()
    await server.wait_closed()
