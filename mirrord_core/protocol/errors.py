"""Exceptions raised by the wire protocol layer.

Three families, so callers can tell whose fault a failure is:

* :class:`ProtocolViolation` — bytes or messages that break the protocol. The connection
  that sees one answers with a ``ProtocolError`` message and closes; these never escape
  the read loop into application code except as the cause of a :class:`ConnectionLost`.
* :class:`ConnectionLost` — the connection is gone (closed, refused, timed out, killed by a
  violation). Every pending request, ping and stream fails with one, and its message says
  why, e.g. ``"connection lost: peer closed the connection (EOF)"``.
* :class:`RequestFailed` / :class:`StreamResetError` — one operation failed while the
  connection itself is fine.
"""

from __future__ import annotations

import errno as errno_module
import os

#: Longest reason/message text put into an error message on the wire; the rest is cut off.
MAX_REASON_LENGTH = 1024


def clip(text: str, limit: int = MAX_REASON_LENGTH) -> str:
    """Shorten ``text`` for an error message: peers control parts of it (tags, field names)."""
    if len(text) <= limit:
        return text
    suffix = f"… ({len(text)} chars)"
    return text[: max(0, limit - len(suffix))] + suffix


class ProtocolException(Exception):
    """Base class of every exception raised by :mod:`mirrord_core.protocol`."""


# -- violations: the peer (or a caller) sent something the protocol does not allow --------


class ProtocolViolation(ProtocolException):
    """Bytes or messages that break the protocol; the connection is closed because of it."""


class FrameTooLarge(ProtocolViolation):
    """A frame's length prefix (or a message to send) exceeds the maximum frame size."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the maximum frame size of {limit} bytes")
        self.size = size
        self.limit = limit


class TruncatedFrame(ProtocolViolation):
    """The stream ended in the middle of a frame."""


class MalformedMessage(ProtocolViolation):
    """A frame body is not a valid message: bad msgpack, unknown tag, wrong field types."""


class UnknownMessageType(MalformedMessage):
    """A frame carries a type tag that is not registered."""

    def __init__(self, tag: str) -> None:
        super().__init__(f"unknown message type {clip(repr(tag), 100)}")
        self.tag = tag


class EncodeError(ProtocolException):
    """A message could not be encoded (a field value msgpack cannot represent)."""


class DuplicateMessageTag(ProtocolException, ValueError):
    """A message class was registered under a tag that another class already uses."""


class InvalidMessageClass(ProtocolException, TypeError):
    """A class passed to ``register_message`` does not meet the requirements of a message."""


# -- the connection is gone ---------------------------------------------------------------


class ConnectionLost(ProtocolException, ConnectionError):
    """The connection is closed; pending and later operations on it fail with this.

    Subclasses say why; ``str(exc)`` is always a complete sentence for a user.
    """


class ConnectionClosedLocally(ConnectionLost):
    """This side closed the connection (``Connection.close``)."""


class PeerClosed(ConnectionLost):
    """The peer closed the connection, with a ``Goodbye`` or by closing the socket."""


class PeerTimeout(ConnectionLost):
    """No message arrived from the peer within the dead-peer timeout."""


class PeerProtocolError(ConnectionLost):
    """The peer reported that this side broke the protocol (a ``ProtocolError`` message)."""


class ProtocolViolationByPeer(ConnectionLost):
    """The peer broke the protocol; this side sent ``ProtocolError`` and closed."""


class ConnectFailed(ConnectionLost):
    """No TCP connection could be made to the server (refused, unreachable, timed out)."""


class HandshakeError(ConnectionLost):
    """The handshake did not complete (timeout, wrong first message, bad reply)."""


class HandshakeRefused(HandshakeError):
    """The server refused the handshake (wrong token or protocol version)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the server refused the connection: {reason}")
        self.reason = reason


# -- one operation failed ------------------------------------------------------------------


class RequestFailed(ProtocolException):
    """A request was answered with an ``ErrorResponse``.

    Handlers raise it to send a specific error; requesters receive it. ``code`` is a short
    machine-readable name (``"ENOENT"``, ``"unsupported"``, ``"internal_error"`` …), and
    ``errno`` is set when the failure is an OS error on the serving side.
    """

    def __init__(self, code: str, message: str, errno: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.errno = errno

    @classmethod
    def from_os_error(cls, exc: OSError) -> RequestFailed:
        """Describe an ``OSError`` so the peer can rebuild it with :meth:`to_os_error`."""
        number = exc.errno
        if number is None:
            return cls("EIO", str(exc), errno_module.EIO)
        code = errno_module.errorcode.get(number, "EIO")
        return cls(code, exc.strerror or os.strerror(number), number)

    def to_os_error(self) -> OSError:
        """An ``OSError`` carrying this error's errno (``EIO`` when it has none)."""
        number = self.errno if self.errno is not None else errno_module.EIO
        return OSError(number, self.message)


class StreamResetError(ProtocolException):
    """A stream was reset (by either side) or could not be opened.

    ``errno`` is set when the serving side failed with an OS error (e.g. a refused
    outgoing connection), so the caller can report the same error to its application.
    """

    def __init__(self, message: str, *, reason: str = "", errno: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message
        self.errno = errno


class StreamRefused(StreamResetError):
    """The peer refused to open a stream (no handler for its kind, or the handler failed)."""


class StreamClosedError(ProtocolException):
    """An operation on a stream direction that this side already ended or closed."""
