"""Messages: tags, the registry, strict structuring and msgpack round trips."""

from __future__ import annotations

import enum
import re
from typing import Any, ClassVar, Literal

import attrs
import msgpack
import pytest

from mirrord_core.protocol import (
    CORE_MESSAGES,
    DEFAULT_REGISTRY,
    MAX_MESSAGE_NESTING,
    TAG_KEY,
    Ack,
    Codec,
    DuplicateMessageTag,
    EncodeError,
    ErrorResponse,
    FrameTooLarge,
    Goodbye,
    Hello,
    InvalidMessageClass,
    MalformedMessage,
    Message,
    MessageRegistry,
    Ok,
    Ping,
    Pong,
    ProtocolError,
    Refused,
    Request,
    Response,
    Resume,
    Resumed,
    ResumeTicket,
    StreamAccept,
    StreamData,
    StreamEnd,
    StreamOpen,
    StreamReset,
    UnknownMessageType,
    Welcome,
    WindowUpdate,
    register_message,
)

# -- plugin-style messages used by these tests (registered in a private registry) ---------


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen(kw_only=True)
class Point:
    x: int
    y: int


@attrs.frozen(kw_only=True)
class Everything(Message):
    TAG = "test.everything"
    flag: bool
    count: int
    ratio: float
    name: str
    blob: bytes
    maybe: int | None = None
    either: int | str = 0
    names: list[str] = attrs.Factory(list)
    pair: tuple[int, str] = (0, "")
    many: tuple[int, ...] = ()
    unique: frozenset[int] = frozenset()
    table: dict[str, int] = attrs.Factory(dict)
    colour: Colour = Colour.RED
    mode: Literal["r", "w"] = "r"
    point: Point | None = None
    anything: Any = None
    inner: Message | None = None
    ping: Ping | None = None


@attrs.frozen(kw_only=True)
class Unregistered(Message):
    TAG = "test.unregistered"
    value: int


@pytest.fixture
def registry() -> MessageRegistry:
    registry = DEFAULT_REGISTRY.copy()
    registry.register(Everything)
    return registry


@pytest.fixture
def codec(registry: MessageRegistry) -> Codec:
    return Codec(registry)


SAMPLES: list[Message] = [
    Hello(protocol_version=1, token="s3cret", client_name="mirrord test"),
    Welcome(protocol_version=1, session_id="abc123"),
    Refused(reason="invalid session token"),
    ResumeTicket(secret="s3cret", grace=30.0),
    Resume(
        protocol_version=2,
        token="t",
        client_name="mirrord",
        session_id="abc",
        secret="s3cret",
        received=12,
    ),
    Resumed(received=7),
    Ping(nonce=0),
    Pong(nonce=2**64 - 1),
    Request(id=1, payload=Ok()),
    Response(id=2**63 - 1, payload=Ping(nonce=7)),
    ErrorResponse(id=3, code="ENOENT", message="No such file or directory", errno=2),
    ErrorResponse(id=4, code="unsupported", message="no handler"),
    Ok(),
    StreamOpen(stream_id=1, kind="net.tcp_connect", payload=Ok()),
    StreamAccept(stream_id=2, payload=Ok()),
    StreamData(stream_id=3, data=b"\x00\xff" * 1000),
    StreamData(stream_id=3, data=b""),
    StreamEnd(stream_id=5),
    StreamReset(stream_id=7, reason="connection refused", errno=111),
    StreamReset(stream_id=9, reason="cancelled"),
    WindowUpdate(stream_id=11, credit=65536),
    Ack(received=42),
    Goodbye(reason="bye"),
    ProtocolError(message="bad frame"),
]


def test_samples_cover_every_core_message() -> None:
    assert {type(sample) for sample in SAMPLES} == set(CORE_MESSAGES)
    assert all(cls in DEFAULT_REGISTRY for cls in CORE_MESSAGES)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_core_message_round_trip(codec: Codec, message: Message) -> None:
    body = codec.encode(message)
    raw = msgpack.unpackb(body, raw=False)
    assert raw[TAG_KEY] == message.TAG
    assert set(raw) == {TAG_KEY} | {field.name for field in attrs.fields(type(message))}
    decoded = codec.decode(body)
    assert decoded == message
    assert type(decoded) is type(message)


def test_wire_form_of_a_request_nests_the_tagged_payload(codec: Codec) -> None:
    body = codec.encode(Request(id=5, payload=Ping(nonce=9)))
    assert msgpack.unpackb(body) == {"t": "request", "id": 5, "payload": {"t": "ping", "nonce": 9}}


def test_stream_data_is_msgpack_bin(codec: Codec) -> None:
    body = codec.encode(StreamData(stream_id=1, data=b"abc"))
    assert msgpack.unpackb(body, raw=True)[b"data"] == b"abc"
    assert b"\xc4\x03abc" in body  # bin 8 with length 3


def test_messages_are_frozen_and_keyword_only() -> None:
    ping = Ping(nonce=1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ping.nonce = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Ping(1)  # type: ignore[misc]


def test_repr_hides_the_token_and_bulk_data() -> None:
    assert "s3cret" not in repr(Hello(protocol_version=1, token="s3cret", client_name="c"))
    assert (
        repr(StreamData(stream_id=1, data=b"x" * 5000))
        == "StreamData(stream_id=1, data=<5000 bytes>)"
    )


def test_field_validators_reject_impossible_values() -> None:
    with pytest.raises(ValueError):
        Request(id=0, payload=Ok())
    with pytest.raises(ValueError):
        WindowUpdate(stream_id=1, credit=0)
    with pytest.raises(ValueError):
        Ping(nonce=-1)


# -- plugin message types ---------------------------------------------------------------------


def test_plugin_message_round_trip_with_every_supported_field_type(codec: Codec) -> None:
    message = Everything(
        flag=True,
        count=-5,
        ratio=0.25,
        name="ünïcode",
        blob=b"\x00\x01",
        maybe=3,
        either="text",
        names=["a", "b"],
        pair=(1, "one"),
        many=(1, 2, 3),
        unique=frozenset({4, 5}),
        table={"k": 1},
        colour=Colour.BLUE,
        mode="w",
        point=Point(x=1, y=2),
        anything={"free": [1, "form"]},
        inner=Request(id=1, payload=Ping(nonce=1)),
        ping=Ping(nonce=2),
    )
    assert codec.decode(codec.encode(message)) == message
    assert codec.decode(codec.encode(Request(id=9, payload=message))).payload == message


def test_float_field_accepts_an_integer(codec: Codec) -> None:
    raw = codec.unstructure(Everything(flag=False, count=1, ratio=0.5, name="", blob=b""))
    raw["ratio"] = 2
    decoded = codec.structure(raw)
    assert isinstance(decoded, Everything)
    assert decoded.ratio == 2.0
    assert type(decoded.ratio) is float


def test_register_message_in_the_default_registry() -> None:
    @attrs.frozen(kw_only=True)
    class Probe(Message):
        TAG = "test.default_registry_probe"
        value: int

    try:
        assert register_message(Probe) is Probe
        assert DEFAULT_REGISTRY.get("test.default_registry_probe") is Probe
        assert register_message(Probe) is Probe  # same class again: no-op
    finally:
        DEFAULT_REGISTRY._by_tag.pop("test.default_registry_probe", None)


def test_duplicate_tag_is_an_error(registry: MessageRegistry) -> None:
    @attrs.frozen(kw_only=True)
    class Impostor(Message):
        TAG = "ping"
        nonce: int

    with pytest.raises(DuplicateMessageTag, match=r"'ping'.*already used by .*Ping"):
        registry.register(Impostor)
    assert registry.get("ping") is Ping


def test_registries_are_independent(registry: MessageRegistry) -> None:
    assert "test.everything" in registry
    assert "test.everything" not in DEFAULT_REGISTRY
    assert Everything in registry
    assert len(registry) == len(DEFAULT_REGISTRY) + 1


class NotAttrs(Message):
    TAG = "test.not_attrs"


@attrs.define(kw_only=True)
class NotFrozen(Message):
    TAG = "test.not_frozen"
    value: int


@attrs.frozen
class NotKwOnly(Message):
    TAG = "test.not_kw_only"
    value: int


@attrs.frozen(kw_only=True)
class NoTag(Message):
    value: int


@attrs.frozen(kw_only=True)
class BadTag(Message):
    TAG = "has space"


@attrs.frozen(kw_only=True)
class TagField(Message):
    TAG = "test.tag_field"
    t: int


@attrs.frozen(kw_only=True)
class NotAMessage:
    TAG: ClassVar[str] = "test.not_a_message"


@pytest.mark.parametrize(
    ("cls", "problem"),
    [
        (NotAttrs, "not an attrs class"),
        (NotFrozen, "must be @attrs.frozen"),
        (NotKwOnly, "must be kw_only"),
        (NoTag, "needs its own TAG"),
        (BadTag, "needs its own TAG"),
        (TagField, "'t' is reserved"),
        (NotAMessage, "not a subclass of Message"),
    ],
)
def test_invalid_message_classes_are_rejected(
    registry: MessageRegistry, cls: type, problem: str
) -> None:
    with pytest.raises(InvalidMessageClass, match=problem):
        registry.register(cls)


def test_encoding_an_unregistered_message_fails(codec: Codec) -> None:
    with pytest.raises(EncodeError, match="not registered"):
        codec.encode(Unregistered(value=1))
    with pytest.raises(EncodeError, match="not registered"):
        codec.encode(Request(id=1, payload=Unregistered(value=1)))
    with pytest.raises(EncodeError, match="expected a message"):
        codec.encode("ping")  # type: ignore[arg-type]


def test_encoding_a_value_msgpack_cannot_hold_fails(codec: Codec) -> None:
    message = Everything(flag=True, count=2**64, ratio=0.0, name="", blob=b"")
    with pytest.raises(EncodeError, match="Everything"):
        codec.encode(message)


def test_encode_frame_enforces_the_size_limit(codec: Codec) -> None:
    frame = codec.encode_frame(StreamData(stream_id=1, data=b"x" * 100))
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    with pytest.raises(FrameTooLarge):
        codec.encode_frame(StreamData(stream_id=1, data=b"x" * 100), max_size=50)


# -- strict decoding ---------------------------------------------------------------------------


def _everything_raw(codec: Codec, **changes: Any) -> dict[str, Any]:
    raw = codec.unstructure(Everything(flag=True, count=1, ratio=1.0, name="n", blob=b"b"))
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"flag": 1}, "expected a boolean, got an integer @ $.flag"),
        ({"count": True}, "expected an integer, got a boolean @ $.count"),
        ({"count": "1"}, "expected an integer, got a string @ $.count"),
        ({"count": 1.0}, "expected an integer, got a float @ $.count"),
        ({"ratio": "1.0"}, "expected a float, got a string @ $.ratio"),
        ({"name": b"n"}, "expected a string, got bytes @ $.name"),
        ({"blob": "b"}, "expected bytes, got a string @ $.blob"),
        ({"maybe": "3"}, "expected an integer, got a string @ $.maybe"),
        ({"either": 1.5}, "no type of the union accepts the value"),
        ({"names": "ab"}, "expected an array, got a string @ $.names"),
        ({"names": ["a", 1]}, "item 1: expected a string, got an integer"),
        ({"pair": [1]}, "expected an array of 2 items, got 1"),
        ({"pair": [1, 2]}, "item 1: expected a string, got an integer"),
        ({"many": {"a": 1}}, "expected an array, got a map"),
        ({"unique": [1, "x"]}, "item 1: expected an integer"),
        ({"table": [1]}, "expected a map, got an array"),
        ({"table": {"k": "v"}}, "value of 'k': expected an integer"),
        ({"colour": "green"}, "expected one of 'red', 'blue', got 'green'"),
        ({"mode": "x"}, "expected one of 'r', 'w', got 'x'"),
        ({"point": {"x": 1}}, "required field missing @ $.point.y"),
        ({"point": {"x": 1, "y": 2, "z": 3}}, "extra fields found (z) @ $.point"),
        ({"point": [1, 2]}, "expected a map for Point, got an array"),
        ({"inner": {"t": "nope"}}, "unknown message type 'nope' @ $.inner"),
        ({"inner": {"nonce": 1}}, "message has no type tag"),
        (
            {"inner": {"t": "ping", "nonce": "1"}},
            "expected an integer, got a string @ $.inner.nonce",
        ),
        ({"ping": {"t": "pong", "nonce": 1}}, "expected a 'ping' message, got 'pong'"),
        ({"extra": 1}, "extra fields found (extra)"),
    ],
)
def test_wrong_field_values_are_malformed(
    codec: Codec, changes: dict[str, Any], problem: str
) -> None:
    body = msgpack.packb(_everything_raw(codec, **changes), use_bin_type=True)
    with pytest.raises(MalformedMessage, match=re.escape(problem)) as info:
        codec.decode(body)
    assert str(info.value).startswith("invalid 'test.everything' message: ")


def test_missing_field_is_malformed(codec: Codec) -> None:
    raw = _everything_raw(codec)
    del raw["count"]
    with pytest.raises(MalformedMessage, match=r"required field missing @ \$\.count"):
        codec.structure(raw)


@pytest.mark.parametrize(
    ("raw", "problem", "error"),
    [
        ({"t": "no_such_thing"}, "unknown message type 'no_such_thing'", UnknownMessageType),
        ({"nonce": 1}, "message has no type tag", MalformedMessage),
        ({"t": 5}, "type tag must be a string", MalformedMessage),
        ([1, 2], "expected a message \\(a map\\), got an array", MalformedMessage),
        ({"t": "ping", "nonce": -1}, "'nonce' must be >= 0", MalformedMessage),
        (
            {"t": "window_update", "stream_id": 1, "credit": 0},
            "'credit' must be >= 1",
            MalformedMessage,
        ),
        ({"t": "request", "id": 1}, "required field missing @ \\$.payload", MalformedMessage),
        ({"t": "request", "id": 1, "payload": 5}, "expected a message", MalformedMessage),
    ],
)
def test_invalid_messages(codec: Codec, raw: Any, problem: str, error: type[Exception]) -> None:
    with pytest.raises(error, match=problem):
        codec.decode(msgpack.packb(raw))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),
        (b"\x82\xa1t\xa4ping", "not valid msgpack"),  # map of 2 with 1 entry
        (msgpack.packb({"t": "ping", "nonce": 1}) + b"\x00", "not valid msgpack: .*extra data"),
        (b"\x81\x01\x02", "not valid msgpack: int is not allowed for map key"),
        (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),  # array of 4 G items in 5 bytes
        (b"\x91" * 5000 + b"\x00", "nested too deeply"),
        (b"\xd4\x05\x00", "extension type 5 is not allowed"),
        (b"\x82\xa1t\xa4ping\xa5nonce\xd6\xff\x00\x00\x00\x00", "expected an integer"),
    ],
)
def test_invalid_msgpack(codec: Codec, body: bytes, problem: str) -> None:
    with pytest.raises(MalformedMessage, match=problem):
        codec.decode(body)


def test_nesting_depth_is_limited(codec: Codec) -> None:
    message: Message = Ok()
    for level in range(MAX_MESSAGE_NESTING - 1):
        message = Response(id=level + 1, payload=message)
    assert codec.decode(codec.encode(message)) == message  # exactly at the limit
    too_deep = codec.encode(Response(id=1, payload=message))
    with pytest.raises(MalformedMessage, match=f"nested more than {MAX_MESSAGE_NESTING}"):
        codec.decode(too_deep)
