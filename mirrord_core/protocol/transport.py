"""Closing an asyncio stream pair so that the last frame sent actually arrives.

Closing a TCP socket while unread bytes sit in its receive buffer makes the kernel send a
RST instead of a FIN, and a RST can destroy the peer's copy of the frame sent just before
it — exactly the ``ProtocolError`` or ``Refused`` explaining why the connection is closed.
So a close half-closes first, discards whatever the peer still sends until it closes too
(or a time limit passes: a "lingering close"), and only then closes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib

_DISCARD_CHUNK = 64 * 1024


async def close_transport(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    final_frame: bytes | None = None,
    linger: float = 2.0,
) -> None:
    """Send ``final_frame`` (if any), half-close, drain the peer for up to ``linger`` s, close.

    Never raises (besides cancellation): a connection that is already broken is simply
    aborted. The caller must make sure no other task is reading from ``reader``.
    """
    try:
        if not writer.is_closing():
            if final_frame:
                writer.write(final_frame)
            if writer.can_write_eof():
                writer.write_eof()
    except Exception:
        # Broken pipe / reset: nothing more can be delivered, go straight to closing.
        writer.transport.abort()
    try:
        async with asyncio.timeout(linger):
            while await reader.read(_DISCARD_CHUNK):
                pass
    except Exception:
        pass
    writer.close()
    try:
        async with asyncio.timeout(linger):
            await writer.wait_closed()
    except Exception:
        # A peer that stopped reading keeps our unsent bytes in the buffer forever.
        with contextlib.suppress(Exception):
            writer.transport.abort()
