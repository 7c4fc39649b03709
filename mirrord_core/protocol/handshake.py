"""The handshake: ``Hello`` (client) → ``Welcome`` or ``Refused`` (server).

A client that can reconnect announces version 2 and gets a ``ResumeTicket`` after the
``Welcome``; on a new transport for a suspended session it sends ``Resume`` instead of
``Hello`` and gets ``Resumed`` (or ``Refused``).

Before the handshake completes the peer is unauthenticated, so the server reads at most one
small frame (:data:`HANDSHAKE_MAX_FRAME_SIZE`) within a time limit, and every failure ends
with an explanatory message (``Refused`` or ``ProtocolError``) and a closed connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Any

from mirrord_core.protocol.codec import Codec
from mirrord_core.protocol.errors import (
    HandshakeError,
    HandshakeRefused,
    ProtocolViolation,
    clip,
)
from mirrord_core.protocol.framing import HANDSHAKE_MAX_FRAME_SIZE, read_frame, write_frame
from mirrord_core.protocol.messages import (
    PROTOCOL_VERSION,
    RESUMABLE_PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
    Hello,
    ProtocolError,
    Refused,
    Resume,
    Resumed,
    ResumeTicket,
    Welcome,
)
from mirrord_core.protocol.registry import TAG_KEY, Message
from mirrord_core.protocol.transport import close_transport

log = logging.getLogger("mirrord.protocol")

#: Default time a server waits for ``Hello`` and a client waits for the answer.
HANDSHAKE_TIMEOUT = 10.0


def tokens_match(given: str, expected: str) -> bool:
    """Compare session tokens in constant time (hashed first, so the length leaks nothing)."""
    given_digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    expected_digest = hashlib.sha256(expected.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(given_digest, expected_digest)


async def _fail(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    codec: Codec,
    reply: Message | None,
    linger: float,
) -> None:
    frame = codec.encode_frame(reply) if reply is not None else None
    await close_transport(reader, writer, final_frame=frame, linger=linger)


async def _read_first_body(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """The first frame's body; ``EOFError`` on a clean close (violations propagate)."""
    async with asyncio.timeout(timeout):
        body = await read_frame(reader, HANDSHAKE_MAX_FRAME_SIZE)
    if body is None:
        raise EOFError
    return body


def _announced_version(raw: Any) -> int | None:
    """The ``protocol_version`` of a raw ``hello``/``resume`` map, if it has an integer one."""
    if type(raw) is dict and raw.get(TAG_KEY) in (Hello.TAG, Resume.TAG):
        version = raw.get("protocol_version")
        if type(version) is int:
            return version
    return None


async def server_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    codec: Codec,
    *,
    token: str,
    session_id: str,
    timeout: float = HANDSHAKE_TIMEOUT,
    linger: float = 2.0,
    ticket: ResumeTicket | None = None,
) -> Hello | Resume:
    """Run the server side: read ``Hello``, check version and token, send ``Welcome``.

    A version-2 ``Hello`` gets ``ticket`` after the ``Welcome`` (a server without ``ticket``
    answers version 1: no resumption). A ``Resume`` is returned unanswered, after the version
    and token checks: the caller answers with :func:`answer_resume` or :func:`refuse`.

    On any failure the client gets ``Refused`` (wrong version or token) or ``ProtocolError``
    (anything else), the connection is closed, and :class:`HandshakeError` is raised.
    """
    try:
        raw = codec.unpack(await _read_first_body(reader, timeout))
        version = _announced_version(raw)
        # Checked on the raw map: a client of another version may send a Hello whose
        # fields this version cannot structure, and it deserves "wrong version" as answer.
        if version is None or version in SUPPORTED_PROTOCOL_VERSIONS:
            message = codec.structure(raw)
    except TimeoutError:
        reason = f"no hello within the handshake timeout of {timeout} s"
        await _fail(reader, writer, codec, ProtocolError(message=reason), linger)
        raise HandshakeError(f"handshake failed: {reason}") from None
    except EOFError:
        await _fail(reader, writer, codec, None, linger)
        raise HandshakeError("handshake failed: the client closed the connection") from None
    except ProtocolViolation as exc:
        reason = clip(str(exc))
        await _fail(reader, writer, codec, ProtocolError(message=reason), linger)
        raise HandshakeError(f"handshake failed: {reason}") from None
    except OSError as exc:
        await _fail(reader, writer, codec, None, linger)
        raise HandshakeError(f"handshake failed: {exc}") from None

    if version is not None and version not in SUPPORTED_PROTOCOL_VERSIONS:
        reason = unsupported_version_reason(version)
        await _fail(reader, writer, codec, Refused(reason=reason), linger)
        raise HandshakeError(f"refused a client: {reason}")
    if not isinstance(message, Hello | Resume):
        reason = f"expected a 'hello' message first, got {message.TAG!r}"
        await _fail(reader, writer, codec, ProtocolError(message=reason), linger)
        raise HandshakeError(f"handshake failed: {reason}")
    if not tokens_match(message.token, token):
        reason = "invalid session token"
        await _fail(reader, writer, codec, Refused(reason=reason), linger)
        raise HandshakeError(f"refused client {clip(repr(message.client_name), 100)}: {reason}")
    if isinstance(message, Resume):
        if message.protocol_version != RESUMABLE_PROTOCOL_VERSION:
            reason = f"resume needs protocol version {RESUMABLE_PROTOCOL_VERSION}"
            await _fail(reader, writer, codec, Refused(reason=reason), linger)
            raise HandshakeError(f"refused a client: {reason}")
        return message
    resumable = ticket is not None and message.protocol_version == RESUMABLE_PROTOCOL_VERSION
    version = RESUMABLE_PROTOCOL_VERSION if resumable else PROTOCOL_VERSION
    welcome = Welcome(protocol_version=version, session_id=session_id)
    try:
        answer = codec.encode_frame(welcome)
        if resumable:
            assert ticket is not None
            answer += codec.encode_frame(ticket)
        writer.write(answer)
        await writer.drain()
    except OSError as exc:
        await _fail(reader, writer, codec, None, linger)
        raise HandshakeError(f"handshake failed: {exc}") from None
    return message


def unsupported_version_reason(version: int) -> str:
    """The ``Refused`` reason for a ``Hello`` of a version this side does not speak."""
    return (
        f"unsupported protocol version {version} (this side speaks version {PROTOCOL_VERSION}, "
        f"or {RESUMABLE_PROTOCOL_VERSION} with session resumption)"
    )


async def refuse(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    codec: Codec,
    reason: str,
    *,
    linger: float = 2.0,
) -> None:
    """Answer a ``Resume`` with ``Refused(reason)`` and close the transport."""
    await _fail(reader, writer, codec, Refused(reason=reason), linger)


def answer_resume(writer: asyncio.StreamWriter, codec: Codec, received: int) -> None:
    """Accept a ``Resume``: queue ``Resumed(received)`` (the retransmission follows it)."""
    writer.write(codec.encode_frame(Resumed(received=received)))


async def client_resume(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    codec: Codec,
    resume: Resume,
    *,
    timeout: float = HANDSHAKE_TIMEOUT,
    linger: float = 2.0,
) -> int:
    """Send ``resume`` on a new transport; returns how many of our frames the server got.

    Raises :class:`HandshakeRefused` when the server will not resume the session and
    :class:`HandshakeError` otherwise; the transport is closed in every failure case.
    """
    message = await _exchange_first(reader, writer, codec, resume, timeout, linger)
    if isinstance(message, Resumed):
        return message.received
    reason = f"expected 'resumed' or 'refused', got {message.TAG!r}"
    await _fail(reader, writer, codec, ProtocolError(message=reason), linger)
    raise HandshakeError(f"resumption failed: {reason}")


async def _exchange_first(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    codec: Codec,
    first: Message,
    timeout: float,
    linger: float,
) -> Message:
    """Send the client's first frame and return the server's answer (``Refused`` and
    ``ProtocolError`` raised as :class:`HandshakeRefused` / :class:`HandshakeError`)."""
    try:
        await write_frame(writer, codec.encode(first))
        message = codec.decode(await _read_first_body(reader, timeout))
    except TimeoutError:
        await _fail(reader, writer, codec, None, linger)
        raise HandshakeError(
            f"handshake failed: no answer from the server within {timeout} s"
        ) from None
    except EOFError:
        await _fail(reader, writer, codec, None, linger)
        raise HandshakeError(
            "handshake failed: the server closed the connection without answering"
        ) from None
    except ProtocolViolation as exc:
        reason = clip(str(exc))
        await _fail(reader, writer, codec, ProtocolError(message=reason), linger)
        raise HandshakeError(
            f"handshake failed: invalid answer from the server: {reason}"
        ) from None
    except OSError as exc:
        await _fail(reader, writer, codec, None, linger)
        raise HandshakeError(f"handshake failed: {exc}") from None

    if isinstance(message, Refused):
        await _fail(reader, writer, codec, None, linger)
        raise HandshakeRefused(clip(message.reason))
    if isinstance(message, ProtocolError):
        await _fail(reader, writer, codec, None, linger)
        raise HandshakeError(f"handshake failed: the server reported: {clip(message.message)}")
    return message


async def client_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    codec: Codec,
    *,
    token: str,
    client_name: str,
    timeout: float = HANDSHAKE_TIMEOUT,
    linger: float = 2.0,
    resumable: bool = False,
) -> tuple[Welcome, ResumeTicket | None]:
    """Run the client side: send ``Hello``, wait for ``Welcome``.

    ``resumable`` announces version 2; the answer then includes the server's
    ``ResumeTicket``, or is a version-1 ``Welcome`` from a server that keeps no sessions.

    Raises :class:`HandshakeRefused` when the server refuses (wrong token or version) and
    :class:`HandshakeError` for a timeout, a closed connection or an invalid answer; the
    connection is closed in every failure case.
    """
    announced = RESUMABLE_PROTOCOL_VERSION if resumable else PROTOCOL_VERSION
    hello = Hello(protocol_version=announced, token=token, client_name=client_name)
    message = await _exchange_first(reader, writer, codec, hello, timeout, linger)
    if not isinstance(message, Welcome):
        reason = f"expected 'welcome' or 'refused', got {message.TAG!r}"
        await _fail(reader, writer, codec, ProtocolError(message=reason), linger)
        raise HandshakeError(f"handshake failed: {reason}")
    if message.protocol_version not in (PROTOCOL_VERSION, announced):
        reason = (
            f"server answered with protocol version {message.protocol_version}, "
            f"expected {announced}"
        )
        await _fail(reader, writer, codec, ProtocolError(message=reason), linger)
        raise HandshakeError(f"handshake failed: {reason}")
    ticket: ResumeTicket | None = None
    if message.protocol_version == RESUMABLE_PROTOCOL_VERSION:
        try:
            ticket_message = codec.decode(await _read_first_body(reader, timeout))
        except (TimeoutError, EOFError, ProtocolViolation, OSError) as exc:
            await _fail(reader, writer, codec, None, linger)
            raise HandshakeError(f"handshake failed: no resume ticket: {exc!r}") from None
        if not isinstance(ticket_message, ResumeTicket):
            reason = f"expected 'resume_ticket', got {ticket_message.TAG!r}"
            await _fail(reader, writer, codec, ProtocolError(message=reason), linger)
            raise HandshakeError(f"handshake failed: {reason}")
        ticket = ticket_message
    log.debug("handshake done, session %s", message.session_id)
    return message, ticket
