"""The core messages: handshake, heartbeats, requests, streams and connection control.

All are registered in :data:`~mirrord_core.protocol.registry.DEFAULT_REGISTRY` on import.
Plugins define their payload messages (the ``payload`` of ``Request``, ``Response`` and
``StreamOpen``/``StreamAccept``) the same way, with tags of the form ``"<plugin>.<name>"``.
"""

from __future__ import annotations

import attrs
from attrs.validators import ge, le

from mirrord_core.protocol.registry import Message, register_message

#: Version of the message set and its rules without session resumption.
PROTOCOL_VERSION = 1
#: Version 1 plus session resumption (``ResumeTicket``, ``Resume``, ``Resumed``, ``Ack``).
#: A client announces it only when it can reconnect; the handshake refuses other versions.
RESUMABLE_PROTOCOL_VERSION = 2
#: Every version a server accepts in ``Hello``.
SUPPORTED_PROTOCOL_VERSIONS = (PROTOCOL_VERSION, RESUMABLE_PROTOCOL_VERSION)

MAX_ID = 2**63 - 1
_MAX_NONCE = 2**64 - 1
#: Largest single window grant (as in HTTP/2, a window never exceeds 2**31 - 1 bytes).
MAX_WINDOW = 2**31 - 1

_ID = [ge(1), le(MAX_ID)]
#: A number of frames (session resumption).
_FRAMES = [ge(0), le(MAX_ID)]


def _bytes_repr(data: bytes) -> str:
    return f"<{len(data)} bytes>"


# -- handshake -----------------------------------------------------------------------------


@register_message
@attrs.frozen(kw_only=True)
class Hello(Message):
    """Client → server, the first frame of every connection."""

    TAG = "hello"
    protocol_version: int = attrs.field(validator=ge(0))
    #: The session token the agent was started with; compared in constant time.
    token: str = attrs.field(repr=False)
    #: Free-form name of the client for the agent's logs (e.g. ``"mirrord 0.1.0 pid 4242"``).
    client_name: str


@register_message
@attrs.frozen(kw_only=True)
class Welcome(Message):
    """Server → client: the handshake succeeded."""

    TAG = "welcome"
    protocol_version: int = attrs.field(validator=ge(0))
    session_id: str


@register_message
@attrs.frozen(kw_only=True)
class Refused(Message):
    """Server → client: the handshake failed (wrong token or version); the server closes."""

    TAG = "refused"
    reason: str


@register_message
@attrs.frozen(kw_only=True)
class ResumeTicket(Message):
    """Server → client, right after a version-2 ``Welcome``: how to resume this session.

    ``secret`` is random per session and proves on reconnection that the client is the one
    that started it (never logged); the server keeps a dropped connection ``grace`` seconds.
    """

    TAG = "resume_ticket"
    secret: str = attrs.field(repr=False)
    grace: float = attrs.field(validator=ge(0))


@register_message
@attrs.frozen(kw_only=True)
class Resume(Message):
    """Client → server, the first frame of a new transport for a suspended session.

    ``received`` counts the frames the client received from the server after the handshake
    (``Ack`` frames not counted); the server retransmits the ones after it.
    """

    TAG = "resume"
    protocol_version: int = attrs.field(validator=ge(0))
    token: str = attrs.field(repr=False)
    client_name: str
    session_id: str
    secret: str = attrs.field(repr=False)
    received: int = attrs.field(validator=_FRAMES)


@register_message
@attrs.frozen(kw_only=True)
class Resumed(Message):
    """Server → client: the session continues; ``received`` frames of the client arrived."""

    TAG = "resumed"
    received: int = attrs.field(validator=_FRAMES)


# -- heartbeats ----------------------------------------------------------------------------


@register_message
@attrs.frozen(kw_only=True)
class Ping(Message):
    """Either direction; the receiver answers with a ``Pong`` carrying the same nonce."""

    TAG = "ping"
    nonce: int = attrs.field(validator=[ge(0), le(_MAX_NONCE)])


@register_message
@attrs.frozen(kw_only=True)
class Pong(Message):
    """Answer to a ``Ping``."""

    TAG = "pong"
    nonce: int = attrs.field(validator=[ge(0), le(_MAX_NONCE)])


# -- requests ------------------------------------------------------------------------------


@register_message
@attrs.frozen(kw_only=True)
class Request(Message):
    """Ask the peer to handle ``payload``; answered by a ``Response`` or ``ErrorResponse``.

    ``id`` is chosen by the sender and unique among its requests still in flight.
    """

    TAG = "request"
    id: int = attrs.field(validator=_ID)
    payload: Message


@register_message
@attrs.frozen(kw_only=True)
class Response(Message):
    """Successful answer to the ``Request`` with the same ``id``."""

    TAG = "response"
    id: int = attrs.field(validator=_ID)
    payload: Message


@register_message
@attrs.frozen(kw_only=True)
class ErrorResponse(Message):
    """Failed answer to the ``Request`` with the same ``id``.

    ``code`` is an errno name (``"ENOENT"``) when ``errno`` is set, otherwise one of
    ``"unsupported"``, ``"overloaded"``, ``"internal_error"``, ``"response_too_large"`` or a
    handler-defined code.
    """

    TAG = "error_response"
    id: int = attrs.field(validator=_ID)
    code: str
    message: str
    errno: int | None = None


@register_message
@attrs.frozen(kw_only=True)
class Ok(Message):
    """An empty payload: the answer of a request handler that returns nothing."""

    TAG = "ok"


# -- streams -------------------------------------------------------------------------------


@register_message
@attrs.frozen(kw_only=True)
class StreamOpen(Message):
    """Open a stream of ``kind`` (handled by the peer's stream handler for that kind).

    Streams opened by the client have odd ids, by the server even ids, each side's ids
    strictly increasing.
    """

    TAG = "stream_open"
    stream_id: int = attrs.field(validator=_ID)
    kind: str
    payload: Message


@register_message
@attrs.frozen(kw_only=True)
class StreamAccept(Message):
    """The peer's handler accepted the stream; ``payload`` is its reply (``Ok`` if none)."""

    TAG = "stream_accept"
    stream_id: int = attrs.field(validator=_ID)
    payload: Message


@register_message
@attrs.frozen(kw_only=True)
class StreamData(Message):
    """Bytes on a stream; the sender must hold as much credit as ``len(data)``."""

    TAG = "stream_data"
    stream_id: int = attrs.field(validator=_ID)
    data: bytes = attrs.field(repr=_bytes_repr)


@register_message
@attrs.frozen(kw_only=True)
class StreamEnd(Message):
    """The sender will send no more data on the stream (half-close)."""

    TAG = "stream_end"
    stream_id: int = attrs.field(validator=_ID)


@register_message
@attrs.frozen(kw_only=True)
class StreamReset(Message):
    """Abort the stream in both directions (or refuse to open it); data in flight is dropped."""

    TAG = "stream_reset"
    stream_id: int = attrs.field(validator=_ID)
    reason: str
    errno: int | None = None


@register_message
@attrs.frozen(kw_only=True)
class WindowUpdate(Message):
    """The receiver consumed data: the sender may send ``credit`` more bytes on the stream."""

    TAG = "window_update"
    stream_id: int = attrs.field(validator=_ID)
    credit: int = attrs.field(validator=[ge(1), le(MAX_WINDOW)])


@register_message
@attrs.frozen(kw_only=True)
class Ack(Message):
    """Either direction, resumable sessions only: ``received`` frames arrived from the peer.

    The peer drops those frames from its replay buffer. ``Ack`` frames are neither counted
    nor kept for replay.
    """

    TAG = "ack"
    received: int = attrs.field(validator=_FRAMES)


# -- connection control --------------------------------------------------------------------


@register_message
@attrs.frozen(kw_only=True)
class Goodbye(Message):
    """The sender is closing the connection; no message follows."""

    TAG = "goodbye"
    reason: str


@register_message
@attrs.frozen(kw_only=True)
class ProtocolError(Message):
    """The receiver of this message broke the protocol; the sender closes the connection."""

    TAG = "protocol_error"
    message: str


#: Every core message class, in the order of docs/protocol.md.
CORE_MESSAGES: tuple[type[Message], ...] = (
    Hello,
    Welcome,
    Refused,
    ResumeTicket,
    Resume,
    Resumed,
    Ping,
    Pong,
    Request,
    Response,
    ErrorResponse,
    Ok,
    StreamOpen,
    StreamAccept,
    StreamData,
    StreamEnd,
    StreamReset,
    WindowUpdate,
    Ack,
    Goodbye,
    ProtocolError,
)

#: Messages that may only appear as the first frames of a connection.
HANDSHAKE_MESSAGES: tuple[type[Message], ...] = (
    Hello,
    Welcome,
    Refused,
    ResumeTicket,
    Resume,
    Resumed,
)
