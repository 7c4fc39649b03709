"""Outgoing unix stream connections made in the target (``outgoing.unix_streams``).

A **pathname** is resolved inside the target's root the way every file the agent touches
is: ``openat2(RESOLVE_IN_ROOT)`` on the target's root descriptor follows ``..`` and
symlinks (absolute or relative, the last component included) without ever leaving it.
The socket is then connected through ``/proc/self/fd/N`` of that ``O_PATH`` descriptor,
so the kernel connects to exactly the inode that was opened: a pod's symlink to
``/run/docker.sock`` or ``../../../../run/x.sock`` reaches the pod's own file or
nothing — never a socket of the node.

An **abstract** name is connected in the target's network namespace (abstract names
belong to network namespaces): the socket is created on the agent's event-loop thread,
which entered that namespace, and the kernel looks the name up in the socket's own
namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import struct

from mirrord_core.agent.handlers import AgentContext
from mirrord_core.linux.openat2 import open_in_root
from mirrord_core.protocol import Stream
from mirrord_network.messages import UnixConnect

#: How long a connect waits for room in a busy listener's backlog.
CONNECT_TIMEOUT = 30.0
PIPE_CHUNK = 1024 * 1024
#: sizeof(sun_path): an abstract name takes its NUL and at most 107 bytes.
MAX_ABSTRACT_NAME = 107


def _timeval(seconds: float) -> bytes:
    return struct.pack("=qq", int(seconds), int((seconds % 1) * 1_000_000))


def open_socket_file(root_fd: int, path: bytes) -> int:
    """An ``O_PATH`` descriptor of the socket file at ``path`` inside ``root_fd``.

    Raises ``OSError``: the resolution's errno (ENOENT, ENOTDIR, ELOOP …), or
    ECONNREFUSED for a file that is not a socket, as ``connect`` answers for one.
    """
    relative = os.fsdecode(path).lstrip("/") or "."
    fd = open_in_root(root_fd, relative, os.O_PATH)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _connect_blocking(sock: socket.socket, address: str | bytes) -> None:
    # A unix connect completes at once unless the listener's backlog is full; then a
    # blocking connect waits for room (bounded by SO_SNDTIMEO), where a non-blocking one
    # would fail with EAGAIN, which asyncio cannot wait for.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(CONNECT_TIMEOUT))
    try:
        sock.connect(address)
    except TimeoutError:
        raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)) from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(0))


async def connect_in_target(root_fd: int, request: UnixConnect) -> socket.socket:
    """A unix stream socket connected to ``request``'s address in the target."""
    if request.abstract:
        if not 0 < len(request.path) <= MAX_ABSTRACT_NAME:
            raise OSError(errno.EINVAL, "bad abstract socket name")
        address: str | bytes = b"\0" + request.path
        fd = None
    else:
        if not request.path or b"\0" in request.path:
            raise OSError(errno.EINVAL, "bad unix socket path")
        fd = open_socket_file(root_fd, request.path)
        address = f"/proc/self/fd/{fd}"
    try:
        # Created here, on the event-loop thread, in the target's network namespace.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await asyncio.to_thread(_connect_blocking, sock, address)
        except BaseException:
            sock.close()
            raise
    finally:
        if fd is not None:
            os.close(fd)
    sock.setblocking(False)
    return sock


async def _to_stream(loop: asyncio.AbstractEventLoop, sock: socket.socket, stream: Stream) -> None:
    try:
        while data := await loop.sock_recv(sock, PIPE_CHUNK):
            await stream.write(data)
    except OSError as error:
        stream.reset("the target's socket failed", errno=error.errno)
        return
    await stream.end()


async def _to_socket(loop: asyncio.AbstractEventLoop, sock: socket.socket, stream: Stream) -> None:
    async for chunk in stream:
        await loop.sock_sendall(sock, chunk)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


async def unix_connect(stream: Stream, request: UnixConnect) -> None:
    """Connect to a unix stream socket of the target and pipe bytes both ways."""
    sock = await connect_in_target(AgentContext.of(stream.connection).root_fd, request)
    loop = asyncio.get_running_loop()
    with sock:
        await stream.accept()
        directions = [
            asyncio.ensure_future(_to_stream(loop, sock, stream)),
            asyncio.ensure_future(_to_socket(loop, sock, stream)),
        ]
        try:
            done, _ = await asyncio.wait(directions, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            # A failure of one direction (the client reset the stream, say) ends both
            # before the socket closes.
            for direction in directions:
                direction.cancel()
            await asyncio.gather(*directions, return_exceptions=True)
        for direction in done:
            error = direction.exception()
            if error is not None:
                raise error
