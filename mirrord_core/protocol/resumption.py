"""Session resumption: what a resumable connection keeps to survive a transport swap.

Every frame after the handshake, except ``Ack``, is numbered implicitly: the n-th frame a
side sends is the n-th frame the peer receives. Each side counts what it received and tells
the peer (``Ack``, and the ``Resume``/``Resumed`` handshake after a reconnection); the
sender keeps every frame the peer has not acknowledged in a :class:`ReplayBuffer` and sends
the unacknowledged ones again on the new transport. So each frame is handled exactly once,
in order, whatever the old transport lost.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

import attrs

from mirrord_core.protocol.errors import ConnectionLost, ProtocolViolation
from mirrord_core.protocol.framing import HEADER_SIZE

#: ``async def reconnect() -> (reader, writer)``: a new transport to the same server.
Reconnect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]

#: A receiver acknowledges after this many frames or :data:`ACK_EVERY_BYTES` bytes (and on
#: every heartbeat), so a sender's replay buffer empties while data flows.
ACK_EVERY_FRAMES = 64
ACK_EVERY_BYTES = 1024 * 1024


class ResumeRefused(ConnectionLost):
    """The transport dropped and the session could not be resumed (refused or too late)."""


class ResumeImpossible(Exception):
    """The peer asks for frames this side no longer has (or never sent)."""


@attrs.define(kw_only=True)
class ResumeState:
    """What a resumable connection needs besides its replay buffer."""

    #: The server's per-session secret (from ``ResumeTicket``).
    secret: str = attrs.field(repr=False)
    #: Seconds the server keeps the suspended session.
    grace: float
    #: Client side: how to open a new transport; ``None`` on the server.
    reconnect: Reconnect | None = None
    #: Client side: the session token and name the ``Resume`` repeats.
    token: str = attrs.field(default="", repr=False)
    client_name: str = ""


class ReplayBuffer:
    """The frames sent but not yet acknowledged by the peer, oldest first.

    ``limit`` is the byte size above which the connection stops sending (waits for
    acknowledgements); one write may exceed it, the next one waits.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._frames: collections.deque[bytes | memoryview] = collections.deque()
        #: Number of frames sent so far (acknowledged or not).
        self.sent = 0
        #: Bytes of the frames held.
        self.size = 0

    @property
    def acknowledged(self) -> int:
        """Frames the peer has acknowledged (the first ``acknowledged`` frames sent)."""
        return self.sent - len(self._frames)

    @property
    def full(self) -> bool:
        """True while the unacknowledged frames exceed the limit."""
        return self.size > self.limit

    def record(self, data: bytes) -> None:
        """Keep the complete frames in ``data`` (one or more, as written to the transport)."""
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            size = int.from_bytes(view[offset : offset + HEADER_SIZE], "big")
            end = offset + HEADER_SIZE + size
            if end > len(view):
                raise ValueError("a write to a resumable connection ended inside a frame")
            self._frames.append(view[offset:end] if offset or end < len(view) else data)
            self.size += end - offset
            self.sent += 1
            offset = end

    def acknowledge(self, received: int) -> None:
        """The peer has received the first ``received`` frames: forget them."""
        if received > self.sent:
            raise ProtocolViolation(
                f"acknowledgement of {received} frames, but only {self.sent} were sent"
            )
        while self.acknowledged < received:
            self.size -= len(self._frames.popleft())

    def unacknowledged_after(self, received: int) -> list[bytes | memoryview]:
        """The frames after the first ``received``, to send again on a new transport."""
        if received > self.sent:
            raise ResumeImpossible(
                f"the peer claims {received} frames, but only {self.sent} were sent"
            )
        if received < self.acknowledged:
            raise ResumeImpossible(
                f"the peer has {received} frames, but it acknowledged {self.acknowledged}"
            )
        return list(self._frames)[received - self.acknowledged :]
