"""Stream data from a socket to the connection's socket without passing through user space.

Linux ``splice(2)`` moves what a socket received into a pipe, and from the pipe into
another socket, by reference to the kernel's pages: the bytes are never copied out to
the process and back in, which is most of what relaying costs (the agent's outgoing
connections, the local relays). The frame header goes to the connection first, then the
data straight from the pipe; whatever the connection's socket cannot take at once is
read out of the pipe and queued on the transport like any other write, so frames never
interleave and the pipe is empty again before anything else is written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_SPLICE = getattr(os, "splice", None)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


class SpliceUnsupported(Exception):
    """The kernel cannot splice from this socket (or at all): use a buffer instead."""


class SplicePipe:
    """A pipe that holds one frame's data between the two splices."""

    def __init__(self, capacity: int) -> None:
        if _SPLICE is None:
            raise SpliceUnsupported("os.splice is not available")
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            # Beyond /proc/sys/fs/pipe-max-size an unprivileged process keeps the default.
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._write_fd, _F_SETPIPE_SZ, capacity)
            #: The most one fill moves.
            self.capacity: int = fcntl.fcntl(self._write_fd, _F_GETPIPE_SZ)
        except BaseException:
            self.close()
            raise
        #: Bytes in the pipe.
        self.held = 0

    def fill_from(self, sock: socket.socket, limit: int) -> int:
        """Move up to ``limit`` received bytes of ``sock`` into the (empty) pipe.

        Returns how many; ``0`` at the end of the socket's stream. Raises
        :class:`BlockingIOError` when nothing was received yet, the socket's ``OSError``
        (e.g. a reset), and :class:`SpliceUnsupported`.
        """
        assert _SPLICE is not None and not self.held
        try:
            size = _SPLICE(sock.fileno(), self._write_fd, min(limit, self.capacity), flags=_FLAGS)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise SpliceUnsupported(str(exc)) from None
            raise
        self.held = size
        return size

    def empty_into(self, fd: int) -> None:
        """Move as much of the pipe into ``fd`` as it takes without waiting.

        Raises ``OSError`` for a broken ``fd`` (what was not moved stays held).
        """
        assert _SPLICE is not None
        while self.held:
            try:
                self.held -= _SPLICE(self._read_fd, fd, self.held, flags=_FLAGS)
            except BlockingIOError:
                return

    def take(self) -> bytes:
        """Read what the pipe holds (it is empty afterwards)."""
        parts = []
        while self.held:
            data = os.read(self._read_fd, self.held)
            self.held -= len(data)
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
