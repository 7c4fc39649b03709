"""Moving bytes between a non-blocking stream socket and a protocol stream as they come,
without waking a task for each message.

For request/response traffic (a stolen HTTP connection) every message is small and the
cost is in the hops, not the copies: an asyncio reader or ``loop.sock_recv`` wakes a task
per message (and ``sock_recv`` registers and unregisters the socket with epoll each time),
and a task waiting on the stream is woken by the connection's read loop. Here the
socket's reader stays registered and its callback receives and writes the message to the
stream right away (:meth:`Stream.write_nowait`), and the stream's data is sent to the
socket from :meth:`Stream.set_readable_callback` as the read loop hands it over. Only
when that cannot finish at once (no flow-control credit, a full socket) does the task
take over, with the ordinary awaiting calls, so backpressure is unchanged.

The functions behave like :func:`~mirrord_network.socket_pipe.socket_to_stream` and
:func:`~mirrord_network.socket_pipe.stream_to_socket`; those splice bulk data inside the
kernel, which for a small message costs more system calls than one ``recv`` and one
``writev``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from mirrord_core.protocol import Stream

#: The most bytes received at once.
CHUNK = 256 * 1024

_Wake = asyncio.Future[int]


async def eager_socket_to_stream(
    sock: socket.socket, stream: Stream, *, discard: bool = False
) -> None:
    """Send everything ``sock`` receives on ``stream`` (or drop it with ``discard``), then
    end the stream at the socket's EOF.

    Raises the socket's ``OSError`` (e.g. a reset) and the stream's errors.
    """
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    view = memoryview(bytearray(CHUNK))
    # Set while the task waits: resolved with a received size the callback could not
    # send, 0 at EOF, or the socket's error.
    wake: _Wake | None = None
    watching = False

    def readable() -> None:
        nonlocal watching
        if wake is None:
            # The task is busy with a slow write: stop watching until it waits again
            # (a level-triggered reader would fire on every loop iteration meanwhile).
            loop.remove_reader(fd)
            watching = False
            return
        if wake.done():
            return  # the task has yet to take the last message
        try:
            size = sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            wake.set_exception(error)
            return
        if size == 0:
            wake.set_result(0)
            return
        try:
            if discard or stream.write_nowait(view[:size]):
                return
        except Exception:  # the task's write raises it again
            pass
        wake.set_result(size)

    try:
        while True:
            wake = loop.create_future()
            if not watching:
                loop.add_reader(fd, readable)
                watching = True
            try:
                size = await wake
            finally:
                wake = None
            if size == 0:
                break
            await stream.write(view[:size])
    finally:
        if watching:
            loop.remove_reader(fd)
    await stream.end()


async def eager_stream_to_socket(stream: Stream, sock: socket.socket) -> None:
    """Send everything ``stream`` receives to ``sock``, then shut its sending side down.

    Raises the stream's errors (e.g. :class:`StreamResetError`) and the socket's.
    """
    loop = asyncio.get_running_loop()
    # Set while the task waits: resolved with what the socket did not take, or None when
    # the stream ended or failed (the task learns which from the stream).
    wake: asyncio.Future[bytes | memoryview | None] | None = None

    def readable() -> None:
        if wake is None or wake.done():
            return  # the task is sending, and reads the stream itself afterwards
        try:
            while (chunk := stream.read_nowait()) is not None:
                try:
                    sent = sock.send(chunk)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                if sent < len(chunk):
                    wake.set_result(chunk[sent:])
                    return
        except Exception as error:  # raised in the task
            wake.set_exception(error)
            return
        if stream.at_eof():
            wake.set_result(None)

    stream.set_readable_callback(readable)
    try:
        while True:
            while (chunk := stream.read_nowait()) is not None:
                await loop.sock_sendall(sock, chunk)
            if stream.at_eof():
                # Empty at its end: b"" after a clean end, the error after a failure.
                if not (data := await stream.read()):
                    break
                await loop.sock_sendall(sock, data)
                continue
            wake = loop.create_future()
            try:
                rest = await wake
            finally:
                wake = None
            if rest is not None:
                await loop.sock_sendall(sock, rest)
    finally:
        stream.set_readable_callback(None)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
