"""The wire protocol between the mirrord client session and the agent (DESIGN §9).

Frames are a ``u32`` big-endian length plus a msgpack body; every message is an attrs class
with a type tag; one TCP connection carries requests, multiplexed flow-controlled streams
and heartbeats. See ``docs/protocol.md`` for the wire format.

Typical use::

    # agent
    server = ProtocolServer(token=token, request_handlers={ReadFile: read_file})
    await server.start("0.0.0.0", 0)

    # client
    connection = await open_connection(host, port, token=token, client_name="mirrord")
    reply = await connection.request(ReadFile(path="/etc/hostname"))
    stream = await connection.open_stream("net.tcp_connect", Connect(host=..., port=...))
"""

from mirrord_core.protocol.codec import MAX_MESSAGE_NESTING, Codec, default_codec, make_converter
from mirrord_core.protocol.connection import (
    Connection,
    ConnectionOptions,
    RequestHandler,
    StreamHandler,
    accept,
    connect,
    open_connection,
)
from mirrord_core.protocol.errors import (
    ConnectFailed,
    ConnectionClosedLocally,
    ConnectionLost,
    DuplicateMessageTag,
    EncodeError,
    FrameTooLarge,
    HandshakeError,
    HandshakeRefused,
    InvalidMessageClass,
    MalformedMessage,
    PeerClosed,
    PeerProtocolError,
    PeerTimeout,
    ProtocolException,
    ProtocolViolation,
    ProtocolViolationByPeer,
    RequestFailed,
    StreamClosedError,
    StreamRefused,
    StreamResetError,
    TruncatedFrame,
    UnknownMessageType,
)
from mirrord_core.protocol.framing import (
    HANDSHAKE_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    encode_frame,
    read_frame,
    write_frame,
)
from mirrord_core.protocol.handshake import HANDSHAKE_TIMEOUT, tokens_match
from mirrord_core.protocol.messages import (
    CORE_MESSAGES,
    PROTOCOL_VERSION,
    RESUMABLE_PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
    Ack,
    ErrorResponse,
    Goodbye,
    Hello,
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
    Welcome,
    WindowUpdate,
)
from mirrord_core.protocol.registry import (
    DEFAULT_REGISTRY,
    TAG_KEY,
    Message,
    MessageRegistry,
    register_message,
)
from mirrord_core.protocol.resumption import ResumeRefused
from mirrord_core.protocol.server import ProtocolServer
from mirrord_core.protocol.streams import MAX_DATA_CHUNK, STREAM_WINDOW, Stream

__all__ = [
    "CORE_MESSAGES",
    "DEFAULT_REGISTRY",
    "HANDSHAKE_MAX_FRAME_SIZE",
    "HANDSHAKE_TIMEOUT",
    "HEADER_SIZE",
    "MAX_DATA_CHUNK",
    "MAX_FRAME_SIZE",
    "MAX_MESSAGE_NESTING",
    "PROTOCOL_VERSION",
    "RESUMABLE_PROTOCOL_VERSION",
    "STREAM_WINDOW",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "TAG_KEY",
    "Ack",
    "Codec",
    "ConnectFailed",
    "Connection",
    "ConnectionClosedLocally",
    "ConnectionLost",
    "ConnectionOptions",
    "DuplicateMessageTag",
    "EncodeError",
    "ErrorResponse",
    "FrameTooLarge",
    "Goodbye",
    "HandshakeError",
    "HandshakeRefused",
    "Hello",
    "InvalidMessageClass",
    "MalformedMessage",
    "Message",
    "MessageRegistry",
    "Ok",
    "PeerClosed",
    "PeerProtocolError",
    "PeerTimeout",
    "Ping",
    "Pong",
    "ProtocolError",
    "ProtocolException",
    "ProtocolServer",
    "ProtocolViolation",
    "ProtocolViolationByPeer",
    "Refused",
    "Request",
    "RequestFailed",
    "RequestHandler",
    "Response",
    "Resume",
    "ResumeRefused",
    "ResumeTicket",
    "Resumed",
    "Stream",
    "StreamAccept",
    "StreamClosedError",
    "StreamData",
    "StreamEnd",
    "StreamHandler",
    "StreamOpen",
    "StreamRefused",
    "StreamReset",
    "StreamResetError",
    "TruncatedFrame",
    "UnknownMessageType",
    "Welcome",
    "WindowUpdate",
    "accept",
    "connect",
    "default_codec",
    "encode_frame",
    "make_converter",
    "open_connection",
    "read_frame",
    "register_message",
    "tokens_match",
    "write_frame",
]
