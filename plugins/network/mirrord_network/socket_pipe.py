"""Moving bytes between a non-blocking stream socket and a protocol stream, without copies.

The two directions of an outgoing connection (agent: target socket ⇄ stream) or of a
relay (local: tracee socket ⇄ stream). What the socket receives goes to the connection
with ``Stream.send_from_socket`` (spliced inside the kernel where possible, else through
one reused buffer), and the stream's data is written to the socket as it arrived
(``Stream.chunks``), never joined into new ``bytes``. asyncio's stream reader and writer
would copy every byte into and out of their own buffers, and allocate fresh ones as they
go.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Coroutine
from typing import Any

from mirrord_core.protocol import Stream


async def socket_to_stream(sock: socket.socket, stream: Stream) -> None:
    """Send everything ``sock`` receives on ``stream``, then end the stream (at EOF).

    Raises the socket's ``OSError`` (e.g. a reset) and the stream's errors.
    """
    while await stream.send_from_socket(sock):
        pass
    await stream.end()


async def stream_to_socket(stream: Stream, sock: socket.socket) -> None:
    """Send everything ``stream`` receives to ``sock``, then shut its sending side down.

    Raises the stream's errors (e.g. :class:`StreamResetError`) and the socket's.
    """
    loop = asyncio.get_running_loop()
    async for data in stream.chunks():
        await loop.sock_sendall(sock, data)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


async def run_both(first: Coroutine[Any, Any, None], second: Coroutine[Any, Any, None]) -> None:
    """Run both until both finished; the first to fail cancels the other and is raised.

    Unlike ``asyncio.gather``, nothing is left running once this returns or raises (the
    caller then closes the socket the two were using).
    """
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        # Retrieve every outcome (nothing "never retrieved"), without raising a second one.
        await asyncio.gather(*tasks, return_exceptions=True)
