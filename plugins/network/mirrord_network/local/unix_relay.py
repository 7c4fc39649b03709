"""Local relays for unix stream sockets connected in the target.

The tracee's socket is an ``AF_UNIX`` socket, so its relay must be one too: a listener in
a private directory (mode 0700, so no other user can connect to it first) that accepts
exactly one connection and pipes it to a ``net.unix_connect`` stream, like
:class:`~mirrord_network.local.relays.TcpRelay` does for TCP. The listener's file is
removed as soon as the tracee's socket is connected (a connected unix socket does not
need the path any more).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import tempfile

from mirrord_core.protocol import Stream
from mirrord_network.local.relays import TcpRelay

#: sun_path is 108 bytes with its NUL; a longer temporary directory falls back to /tmp.
_MAX_PATH = 107


class RelayDirectory:
    """The private directory of one run's unix relays, created on first use."""

    def __init__(self) -> None:
        self._path: str | None = None
        self._names = itertools.count()

    def new_path(self) -> str:
        """A fresh socket path inside the directory."""
        if self._path is None:
            self._path = tempfile.mkdtemp(prefix="mirrord-unix-")
            if len(self._path) > _MAX_PATH - 16:
                os.rmdir(self._path)
                self._path = tempfile.mkdtemp(prefix="mirrord-unix-", dir="/tmp")
        return os.path.join(self._path, f"{next(self._names)}.sock")

    def remove(self) -> None:
        """Delete the directory and whatever is left in it (idempotent)."""
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


class UnixStreamRelay(TcpRelay):
    """One redirected unix stream connection: private unix listener → accepted socket ⇄
    stream."""

    def __init__(self, stream: Stream, path: str) -> None:
        # TcpRelay's piping, with a unix listener instead of a loopback TCP one.
        self.stream = stream
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.listener.bind(path)
            self.listener.listen(1)
            self.listener.setblocking(False)
        except BaseException:
            self.listener.close()
            self.unlink()
            raise

    def unlink(self) -> None:
        """Remove the listener's file (the connection, once made, does not need it)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
