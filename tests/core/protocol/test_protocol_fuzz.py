"""Property tests: whatever a raw socket sends, the server answers sanely and survives.

One server runs for the whole module in a background event loop, with a well-behaved client
that keeps making requests the whole time. Each example connects a raw TCP socket, sends
bytes chosen by hypothesis, and reads what comes back until the server closes. Checked every
time: the server's frames are valid messages, a violation is answered with exactly one
``ProtocolError`` as the last frame, the socket is closed, nothing was logged as an internal
error or escaped into the event loop, and the other client is still being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
import typing
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirrord_core.protocol import (
    HANDSHAKE_MAX_FRAME_SIZE,
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
    Ack,
    Codec,
    Connection,
    ConnectionOptions,
    ErrorResponse,
    Goodbye,
    Hello,
    MalformedMessage,
    Message,
    Ok,
    Ping,
    Pong,
    ProtocolError,
    ProtocolServer,
    Refused,
    Request,
    Response,
    Resume,
    Stream,
    StreamAccept,
    StreamData,
    StreamEnd,
    StreamOpen,
    StreamReset,
    Welcome,
    WindowUpdate,
    encode_frame,
    open_connection,
    register_message,
)
from mirrord_core.protocol.errors import clip
from mirrord_core.protocol.framing import decode_header
from mirrord_core.protocol.handshake import unsupported_version_reason

TOKEN = "fuzz-token-4f3c2a"
CODEC = Codec()
T = TypeVar("T")


@register_message
@attrs.frozen(kw_only=True)
class FuzzEcho(Message):
    TAG = "test_fuzz.echo"
    value: int


async def echo(_connection: Connection, payload: FuzzEcho) -> FuzzEcho:
    return payload


async def echo_stream(stream: Stream, _payload: Message) -> None:
    async for chunk in stream:
        await stream.write(chunk)
    await stream.end()


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class FuzzServer:
    """A protocol server in a background thread plus one well-behaved, busy client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.error_log = _ErrorLog()
        for name in ("mirrord.protocol", "asyncio"):
            logging.getLogger(name).addHandler(self.error_log)
        self.server: ProtocolServer = self.call(self._start_server())
        self.port = self.server.address[1]
        self.good: Connection = self.call(
            open_connection("127.0.0.1", self.port, token=TOKEN, client_name="good client")
        )
        self.good_rounds = 0
        self.good_failures: list[str] = []
        self.chatter = self.call(self._spawn(self._chatter()))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)

    async def _start_server(self) -> ProtocolServer:
        options = ConnectionOptions(
            heartbeat_interval=None, peer_timeout=None, handshake_timeout=3, close_timeout=2
        )
        server = ProtocolServer(
            token=TOKEN,
            request_handlers={FuzzEcho: echo},
            stream_handlers={"echo": echo_stream},
            options=options,
        )
        await server.start("127.0.0.1", 0)
        return server

    async def _chatter(self) -> None:
        value = 0
        while True:
            value += 1
            try:
                reply = await self.good.request(FuzzEcho(value=value), timeout=3)
                assert reply == FuzzEcho(value=value)
                await self.good.ping(timeout=3)
            except Exception as exc:
                self.good_failures.append(repr(exc))
                return
            self.good_rounds += 1
            await asyncio.sleep(0.002)

    def assert_healthy(self) -> None:
        """The good client keeps being served; nothing went wrong inside the server."""
        rounds = self.good_rounds
        deadline = time.monotonic() + 5
        while self.good_rounds <= rounds and not self.good_failures:
            assert time.monotonic() < deadline, "the well-behaved client is no longer served"
            time.sleep(0.002)
        assert not self.good_failures
        assert not self.loop_errors, self.loop_errors
        assert not self.error_log.records, [r.getMessage() for r in self.error_log.records]
        # Raw connections are gone once their socket closed; only the good client remains.
        deadline = time.monotonic() + 5
        while len(self.server.connections) != 1:
            assert time.monotonic() < deadline, self.server.connections
            time.sleep(0.002)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.chatter.cancel)
        self.call(self.good.close())
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        for name in ("mirrord.protocol", "asyncio"):
            logging.getLogger(name).removeHandler(self.error_log)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[FuzzServer]:
    server = FuzzServer()
    try:
        yield server
    finally:
        server.close()
    assert not server.loop_errors


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- a raw socket client -----------------------------------------------------------------------


@attrs.define
class Exchange:
    messages: list[Message]
    #: True when the server closed the connection before we half-closed ours.
    closed_by_server: bool


def _frames(data: bytes) -> list[Message]:
    """Every frame the server sent must be a complete, valid message."""
    messages = []
    while data:
        assert len(data) >= 4, f"server sent a truncated header: {data!r}"
        size = decode_header(data[:4])
        assert len(data) >= 4 + size, "server sent a truncated frame"
        messages.append(CODEC.decode(data[4 : 4 + size]))
        data = data[4 + size :]
    return messages


def _hello(version: int = PROTOCOL_VERSION, token: str = TOKEN) -> bytes:
    return CODEC.encode_frame(Hello(protocol_version=version, token=token, client_name="raw"))


def _recv_frame(sock: socket.socket) -> Message:
    header = _recv_exactly(sock, 4)
    return CODEC.decode(_recv_exactly(sock, decode_header(header)))


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def _complete_frames(data: bytes) -> list[Message]:
    messages = []
    while len(data) >= 4 and len(data) >= 4 + (size := decode_header(data[:4])):
        messages.append(CODEC.decode(data[4 : 4 + size]))
        data = data[4 + size :]
    return messages


def exchange(
    port: int,
    data: bytes,
    *,
    handshake: bool,
    half_close: bool = True,
    until: Callable[[list[Message]], bool] | None = None,
) -> Exchange:
    """Send ``data`` (after a handshake if asked) and read everything until the server closes.

    With ``half_close`` the client signals EOF after sending; without it, the server must
    close on its own. With ``until`` the client first reads until the messages received so
    far satisfy it.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if handshake:
            sock.sendall(_hello())
            assert isinstance(_recv_frame(sock), Welcome)
        # The server may close before taking all of it; what it sent is still read.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        received = b""
        if until is not None:
            while not until(_complete_frames(received)):
                chunk = sock.recv(65536)
                assert chunk, "server closed before answering"
                received += chunk
        closed_by_server = False
        if not half_close:
            # The server must close by itself: no EOF from us, only the socket timeout.
            while chunk := sock.recv(65536):
                received += chunk
            closed_by_server = True
        else:
            sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            received += chunk
    return Exchange(_frames(received), closed_by_server)


def _assert_protocol_error_last(messages: list[Message], fragment: str = "") -> ProtocolError:
    errors = [message for message in messages if isinstance(message, ProtocolError)]
    assert len(errors) == 1, messages
    assert messages[-1] is errors[0]
    assert fragment in errors[0].message
    return errors[0]


def _first_violation(data: bytes, max_size: int) -> str | None:
    """What a correct server must complain about in ``data``, or None if it is all valid."""
    while data:
        if len(data) < 4:
            return "stream ended inside a frame header"
        size = struct.unpack(">I", data[:4])[0]
        if size > max_size:
            return "exceeds the maximum frame size"
        if len(data) < 4 + size:
            return "stream ended inside a frame body"
        try:
            CODEC.decode(data[4 : 4 + size])
        except MalformedMessage:
            return ""
        return None  # a valid message from random bytes: its effect is not modelled
    return None


# -- garbage -------------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_before_the_handshake(fuzz_server: FuzzServer, data: bytes) -> None:
    result = exchange(fuzz_server.port, data, handshake=False)
    expected = _first_violation(data, HANDSHAKE_MAX_FRAME_SIZE)
    if not data:
        assert result.messages == []
    elif expected is not None:
        _assert_protocol_error_last(result.messages, expected)
        assert len(result.messages) == 1
    else:
        assert len(result.messages) == 1
        assert isinstance(result.messages[0], ProtocolError | Refused)
    fuzz_server.assert_healthy()


@FUZZ
@given(data=st.binary(min_size=1, max_size=4096))
def test_random_bytes_after_the_handshake(fuzz_server: FuzzServer, data: bytes) -> None:
    result = exchange(fuzz_server.port, data, handshake=True)
    expected = _first_violation(data, MAX_FRAME_SIZE)
    if expected is not None:
        _assert_protocol_error_last(result.messages, expected)
    fuzz_server.assert_healthy()


@FUZZ
@given(
    nonces=st.lists(st.integers(0, 2**64 - 1), max_size=5),
    last=st.integers(0, 2**64 - 1),
    cut=st.integers(1, 100),
)
def test_truncated_valid_frames(
    fuzz_server: FuzzServer, nonces: list[int], last: int, cut: int
) -> None:
    complete = b"".join(CODEC.encode_frame(Ping(nonce=nonce)) for nonce in nonces)
    final = CODEC.encode_frame(Ping(nonce=last))
    truncated = final[: len(final) - 1 - cut % (len(final) - 1)]
    result = exchange(fuzz_server.port, complete + truncated, handshake=True)
    where = "header" if len(truncated) < 4 else "body"
    assert result.messages[:-1] == [Pong(nonce=nonce) for nonce in nonces]
    _assert_protocol_error_last(result.messages, f"stream ended inside a frame {where}")
    fuzz_server.assert_healthy()


@FUZZ
@given(cut=st.integers(1, 200))
def test_truncated_hello(fuzz_server: FuzzServer, cut: int) -> None:
    hello = _hello()
    result = exchange(fuzz_server.port, hello[: 1 + cut % (len(hello) - 1)], handshake=False)
    _assert_protocol_error_last(result.messages, "stream ended inside a frame")
    fuzz_server.assert_healthy()


@FUZZ
@given(
    size=st.integers(MAX_FRAME_SIZE + 1, 2**32 - 1),
    trailing=st.binary(max_size=512),
    handshake=st.booleans(),
)
def test_oversized_length_prefix_is_rejected_before_the_body(
    fuzz_server: FuzzServer, size: int, trailing: bytes, handshake: bool
) -> None:
    # No EOF from the client: the server must decide from the 4-byte prefix alone.
    data = struct.pack(">I", size) + trailing
    result = exchange(fuzz_server.port, data, handshake=handshake, half_close=False)
    assert result.closed_by_server
    error = _assert_protocol_error_last(result.messages, "exceeds the maximum frame size")
    limit = MAX_FRAME_SIZE if handshake else HANDSHAKE_MAX_FRAME_SIZE
    assert f"frame of {size} bytes exceeds the maximum frame size of {limit} bytes" in error.message
    fuzz_server.assert_healthy()


# -- valid frames with mutated fields ------------------------------------------------------------

_ids = st.integers(1, 2**63 - 1)
_payloads = st.sampled_from([Ok(), Ping(nonce=3), FuzzEcho(value=-4)])
_text = st.text(max_size=20)

MESSAGES: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, protocol_version=st.integers(0, 5), token=_text, client_name=_text),
    st.builds(Welcome, protocol_version=st.integers(0, 5), session_id=_text),
    st.builds(Refused, reason=_text),
    st.builds(Ping, nonce=st.integers(0, 2**64 - 1)),
    st.builds(Pong, nonce=st.integers(0, 2**64 - 1)),
    st.builds(Request, id=_ids, payload=_payloads),
    st.builds(Response, id=_ids, payload=_payloads),
    st.builds(
        ErrorResponse,
        id=_ids,
        code=_text,
        message=_text,
        errno=st.none() | st.integers(0, 200),
    ),
    st.builds(StreamOpen, stream_id=_ids, kind=_text, payload=_payloads),
    st.builds(StreamAccept, stream_id=_ids, payload=_payloads),
    st.builds(StreamData, stream_id=_ids, data=st.binary(max_size=64)),
    st.builds(StreamEnd, stream_id=_ids),
    st.builds(StreamReset, stream_id=_ids, reason=_text, errno=st.none() | st.integers(0, 200)),
    st.builds(WindowUpdate, stream_id=_ids, credit=st.integers(1, 2**31 - 1)),
    st.builds(Goodbye, reason=_text),
    st.builds(ProtocolError, message=_text),
    st.builds(FuzzEcho, value=st.integers(-(2**63), 2**63 - 1)),
)

# Values of every msgpack kind; a replacement is drawn from the kinds a field does not accept.
_KIND_SAMPLES: dict[str, object] = {
    "nil": None,
    "bool": True,
    "int": 7,
    "float": 1.5,
    "str": "text",
    "bin": b"bin",
    "array": [1, 2],
    "map": {"k": 1},
}


def _accepted_kinds(annotation: Any) -> set[str]:
    kinds = set()
    arms = typing.get_args(annotation) if typing.get_origin(annotation) else (annotation,)
    for arm in arms:
        if arm is int:
            kinds.add("int")
        elif arm is str:
            kinds.add("str")
        elif arm is bytes:
            kinds.add("bin")
        elif arm is type(None):
            kinds.add("nil")
        elif isinstance(arm, type) and issubclass(arm, Message):
            kinds.add("map")
        else:
            raise AssertionError(f"unmodelled field type {annotation!r}")
    return kinds


@st.composite
def mutated_frames(draw: st.DrawFn) -> tuple[bytes, dict[str, Any], str]:
    message = draw(MESSAGES)
    raw = CODEC.unstructure(message)
    fields = attrs.fields(type(message))
    tag = message.TAG
    choices = ["extra key", "unknown tag"]
    if fields:
        choices.append("wrong type")
    if any(field.default is attrs.NOTHING for field in fields):
        choices.append("missing key")
    mutation = draw(st.sampled_from(choices))
    if mutation == "wrong type":
        field = draw(st.sampled_from(fields))
        allowed = _accepted_kinds(field.type)
        kind = draw(st.sampled_from(sorted(set(_KIND_SAMPLES) - allowed)))
        raw[field.name] = _KIND_SAMPLES[kind]
        expected = f"invalid {tag!r} message"
    elif mutation == "missing key":
        required = [field for field in fields if field.default is attrs.NOTHING]
        del raw[draw(st.sampled_from(required)).name]
        expected = f"invalid {tag!r} message: required field missing"
    elif mutation == "extra key":
        names = {field.name for field in fields} | {"t"}
        key = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in names))
        raw[key] = draw(st.sampled_from(list(_KIND_SAMPLES.values())))
        expected = f"invalid {tag!r} message: extra fields found"
    else:
        unknown = draw(st.text(max_size=20).filter(lambda t: CODEC.registry.get(t) is None))
        raw["t"] = unknown
        # The peer's tag is clipped in the error, exactly as the codec clips it.
        expected = f"unknown message type {clip(repr(unknown), 100)}"
    return encode_frame(msgpack.packb(raw, use_bin_type=True)), raw, expected


@FUZZ
@given(mutated=mutated_frames(), handshake=st.booleans())
def test_valid_frames_with_mutated_fields(
    fuzz_server: FuzzServer, mutated: tuple[bytes, dict[str, Any], str], handshake: bool
) -> None:
    frame, raw, problem = mutated
    result = exchange(fuzz_server.port, frame, handshake=handshake, half_close=False)
    assert result.closed_by_server
    assert len(result.messages) == 1
    version = raw.get("protocol_version")
    if (
        not handshake
        and raw["t"] == "hello"
        and type(version) is int
        and version not in SUPPORTED_PROTOCOL_VERSIONS
    ):
        # A hello of another version is refused for its version before its fields are read.
        assert isinstance(result.messages[0], Refused)
        assert f"unsupported protocol version {version}" in result.messages[0].reason
    else:
        _assert_protocol_error_last(result.messages, problem)
    fuzz_server.assert_healthy()


@FUZZ
@given(message=MESSAGES)
def test_any_message_before_the_handshake(fuzz_server: FuzzServer, message: Message) -> None:
    result = exchange(
        fuzz_server.port, CODEC.encode_frame(message), handshake=False, half_close=False
    )
    assert result.closed_by_server
    assert len(result.messages) == 1
    if isinstance(message, Hello | Resume):
        if message.protocol_version not in SUPPORTED_PROTOCOL_VERSIONS:
            assert result.messages[0] == Refused(
                reason=unsupported_version_reason(message.protocol_version)
            )
        else:
            assert result.messages == [Refused(reason="invalid session token")]
    else:
        assert result.messages == [
            ProtocolError(message=f"expected a 'hello' message first, got {message.TAG!r}")
        ]
    fuzz_server.assert_healthy()


# -- random message sequences after the handshake, checked against a model ---------------------


@attrs.define
class Model:
    """What the server must do for a sequence of messages from a raw client."""

    next_stream_id: int = 1
    last_opened: int = 0
    next_request_id: int = 1
    refused: list[int] = attrs.Factory(list)
    #: Frames the server answers synchronously, in order.
    replies: list[Message] = attrs.Factory(list)
    echoes: dict[int, int] = attrs.Factory(dict)
    #: "violation" / "goodbye" / "protocol_error", and the ProtocolError text for a violation.
    ending: str | None = None
    problem: str = ""


def _violations(model: Model) -> st.SearchStrategy[tuple[Message, str]]:
    unopened = st.integers(model.next_stream_id, 10**6).map(lambda n: n | 1)
    even = st.integers(1, 10**6).map(lambda n: n * 2)
    stream_ids = unopened | even
    options: list[st.SearchStrategy[tuple[Message, str]]] = [
        stream_ids.map(
            lambda i: (StreamData(stream_id=i, data=b"x"), f"stream_data for stream {i}, which")
        ),
        stream_ids.map(lambda i: (StreamEnd(stream_id=i), f"stream_end for stream {i}, which")),
        stream_ids.map(
            lambda i: (WindowUpdate(stream_id=i, credit=1), f"window_update for stream {i}")
        ),
        stream_ids.map(
            lambda i: (StreamAccept(stream_id=i, payload=Ok()), f"stream_accept for stream {i}")
        ),
        stream_ids.map(
            lambda i: (StreamReset(stream_id=i, reason="r"), f"stream_reset for stream {i}")
        ),
        _ids.map(lambda i: (Response(id=i, payload=Ok()), f"response for request {i}, which")),
        _ids.map(
            lambda i: (
                ErrorResponse(id=i, code="c", message="m"),
                f"error_response for request {i}, which",
            )
        ),
        even.map(
            lambda i: (
                StreamOpen(stream_id=i, kind="echo", payload=Ok()),
                "the peer must use odd stream ids",
            )
        ),
        st.just((Ok(), "unexpected 'ok' message outside")),
        st.just(
            (
                Hello(protocol_version=PROTOCOL_VERSION, token=TOKEN, client_name="again"),
                "unexpected 'hello' message after the handshake",
            )
        ),
        st.just((Refused(reason="no"), "unexpected 'refused' message after the handshake")),
        st.just((Ack(received=0), "'ack' on a connection without session resumption")),
    ]
    if model.last_opened:
        reused = st.integers(0, model.last_opened // 2).map(lambda n: 2 * n + 1)
        options.append(
            reused.map(
                lambda i: (
                    StreamOpen(stream_id=i, kind="nope", payload=Ok()),
                    "stream ids must increase",
                )
            )
        )
    return st.one_of(options)


@st.composite
def message_sequences(draw: st.DrawFn) -> tuple[list[Message], Model]:
    model = Model()
    messages: list[Message] = []
    for _ in range(draw(st.integers(0, 12))):
        action = draw(
            st.sampled_from(
                ["ping", "ping", "unsupported", "echo", "open refused", "late data", "end"]
            )
        )
        if action == "ping":
            nonce = draw(st.integers(0, 2**64 - 1))
            messages.append(Ping(nonce=nonce))
            model.replies.append(Pong(nonce=nonce))
        elif action == "unsupported":
            request_id = model.next_request_id
            model.next_request_id += 1
            messages.append(Request(id=request_id, payload=Ok()))
            model.replies.append(
                ErrorResponse(
                    id=request_id, code="unsupported", message="no handler for request type 'ok'"
                )
            )
        elif action == "echo":
            request_id = model.next_request_id
            model.next_request_id += 1
            value = draw(st.integers(-(2**63), 2**63 - 1))
            messages.append(Request(id=request_id, payload=FuzzEcho(value=value)))
            model.echoes[request_id] = value
        elif action == "open refused":
            stream_id = model.next_stream_id
            model.last_opened = stream_id
            model.next_stream_id += 2 * draw(st.integers(1, 3))  # ids may skip, never repeat
            messages.append(StreamOpen(stream_id=stream_id, kind="nope", payload=Ok()))
            model.refused.append(stream_id)
            model.replies.append(
                StreamReset(stream_id=stream_id, reason="no handler for stream kind 'nope'")
            )
        elif action == "late data" and model.refused:
            # Data crossing a refusal: ignored without a reply.
            stream_id = draw(st.sampled_from(model.refused))
            messages.append(StreamData(stream_id=stream_id, data=b"late"))
        elif action == "end":
            ending = draw(st.sampled_from(["violation", "goodbye", "protocol_error"]))
            if ending == "violation":
                message, problem = draw(_violations(model))
                model.problem = problem
            elif ending == "goodbye":
                message = Goodbye(reason=draw(_text))
            else:
                message = ProtocolError(message=draw(_text))
            messages.append(message)
            model.ending = ending
            break
    return messages, model


@settings(FUZZ, max_examples=100)
@given(sequence=message_sequences())
def test_random_message_sequences_follow_the_model(
    fuzz_server: FuzzServer, sequence: tuple[list[Message], Model]
) -> None:
    messages, model = sequence
    data = b"".join(CODEC.encode_frame(message) for message in messages)
    sentinel = Pong(nonce=424242)
    if model.ending is None:
        # Everything is legal: wait for every answer (echoes come from handler tasks, in any
        # order), then close politely.
        data += CODEC.encode_frame(Ping(nonce=sentinel.nonce))

        def answered(received: list[Message]) -> bool:
            echoed = sum(isinstance(m, Response) for m in received)
            return sentinel in received and echoed == len(model.echoes)

        result = exchange(fuzz_server.port, data, handshake=True, until=answered)
    else:
        result = exchange(fuzz_server.port, data, handshake=True, half_close=False)
        assert result.closed_by_server
    synchronous = [m for m in result.messages if not isinstance(m, Response | ProtocolError)]
    responses = {m.id: m.payload for m in result.messages if isinstance(m, Response)}
    if model.ending is None:
        assert synchronous == [*model.replies, sentinel]
        assert responses == {rid: FuzzEcho(value=value) for rid, value in model.echoes.items()}
        assert not any(isinstance(m, ProtocolError) for m in result.messages)
    elif model.ending == "violation":
        assert synchronous == model.replies
        _assert_protocol_error_last(result.messages, model.problem)
    else:
        # Goodbye / ProtocolError from the client: the server just closes.
        assert synchronous == model.replies
        assert not any(isinstance(m, ProtocolError) for m in result.messages)
    for request_id, payload in responses.items():
        assert payload == FuzzEcho(value=model.echoes[request_id])
    fuzz_server.assert_healthy()
