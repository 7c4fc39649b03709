"""The fs plugin's agent handlers: each request runs against the confined file system.

Descriptors opened for a client live in that client's handle table and are closed when
it disconnects, whatever it forgot to close.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from mirrord_core.agent.handlers import AgentContext, AgentHandlers
from mirrord_core.protocol import Connection, Stream
from mirrord_fs.agent.confined_fs import ConfinedFileSystem, FileStat
from mirrord_fs.messages import (
    MAX_READ,
    READ_FILE_STREAM,
    FsAccess,
    FsChmod,
    FsClose,
    FsData,
    FsEntries,
    FsFstat,
    FsFsync,
    FsFtruncate,
    FsHandle,
    FsLinkTarget,
    FsMkdir,
    FsOpen,
    FsRead,
    FsReaddir,
    FsReadFile,
    FsReadlink,
    FsRename,
    FsRmdir,
    FsStat,
    FsStatfs,
    FsStatfsResult,
    FsStatResult,
    FsTruncate,
    FsUnlink,
    FsUtimens,
    FsWrite,
    FsWritten,
)

_STATE_KEY = "mirrord.fs"
#: Open descriptors one client may hold; more is EMFILE, as for a process.
MAX_HANDLES = 4096


class _ClientFiles:
    """One client's view: the confined file system and its open descriptors."""

    def __init__(self, connection: Connection) -> None:
        self.fs = ConfinedFileSystem(AgentContext.of(connection).root_fd)
        self.handles: dict[int, int] = {}
        self._next = 1
        connection.add_close_callback(lambda *_: self.close_all())

    def add(self, fd: int) -> int:
        if len(self.handles) >= MAX_HANDLES:
            os.close(fd)
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        handle, self._next = self._next, self._next + 1
        self.handles[handle] = fd
        return handle

    def fd(self, handle: int) -> int:
        try:
            return self.handles[handle]
        except KeyError:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None

    def close_all(self) -> None:
        for fd in self.handles.values():
            os.close(fd)
        self.handles.clear()


def _files(connection: Connection) -> _ClientFiles:
    files = connection.state.get(_STATE_KEY)
    if files is None:
        files = connection.state[_STATE_KEY] = _ClientFiles(connection)
    return files


def _wire_text(name: str) -> str:
    """A file name as wire text: bytes that are not UTF-8 (kept by ``os`` as surrogate
    escapes, which msgpack cannot carry) become U+FFFD instead of failing the answer."""
    return os.fsencode(name).decode("utf-8", "replace")


_Handler = Callable[[Connection, Any], Awaitable[Any]]


def _invalid_numbers_are_einval(handler: _Handler) -> _Handler:
    """Numbers the system call cannot take (an offset beyond ``off_t``, a mode beyond
    ``int``) fail with EINVAL, as the call itself would, not as an internal error."""

    @functools.wraps(handler)
    async def checked(connection: Connection, request: Any) -> Any:
        try:
            return await handler(connection, request)
        except (OverflowError, ValueError) as err:
            raise OSError(errno.EINVAL, f"{os.strerror(errno.EINVAL)}: {err}") from None

    return checked


def _stat_message(result: object) -> FsStatResult:
    return FsStatResult(**attrs.asdict(result))  # type: ignore[arg-type]


async def fs_open(connection: Connection, request: FsOpen) -> FsHandle:
    files = _files(connection)
    return FsHandle(handle=files.add(files.fs.open(request.path, request.flags, request.mode)))


async def fs_read(connection: Connection, request: FsRead) -> FsData:
    if request.size < 0 or request.offset < 0:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    fd = _files(connection).fd(request.handle)
    return FsData(data=os.pread(fd, min(request.size, MAX_READ), request.offset))


async def fs_write(connection: Connection, request: FsWrite) -> FsWritten:
    if request.offset < 0:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    fd = _files(connection).fd(request.handle)
    return FsWritten(count=os.pwrite(fd, request.data, request.offset))


async def fs_close(connection: Connection, request: FsClose) -> None:
    files = _files(connection)
    os.close(files.fd(request.handle))
    del files.handles[request.handle]


async def fs_stat(connection: Connection, request: FsStat) -> FsStatResult:
    return _stat_message(_files(connection).fs.stat(request.path, request.follow_symlinks))


async def fs_fstat(connection: Connection, request: FsFstat) -> FsStatResult:
    return _stat_message(FileStat.from_os(os.fstat(_files(connection).fd(request.handle))))


async def fs_access(connection: Connection, request: FsAccess) -> None:
    _files(connection).fs.access(request.path, request.mode)


async def fs_readlink(connection: Connection, request: FsReadlink) -> FsLinkTarget:
    return FsLinkTarget(target=_wire_text(_files(connection).fs.readlink(request.path)))


async def fs_readdir(connection: Connection, request: FsReaddir) -> FsEntries:
    entries = _files(connection).fs.readdir(request.path)
    return FsEntries(
        names=[_wire_text(e.name) for e in entries],
        inodes=[e.ino for e in entries],
        types=[e.file_type for e in entries],
    )


async def fs_mkdir(connection: Connection, request: FsMkdir) -> None:
    _files(connection).fs.mkdir(request.path, request.mode)


async def fs_unlink(connection: Connection, request: FsUnlink) -> None:
    _files(connection).fs.unlink(request.path)


async def fs_rmdir(connection: Connection, request: FsRmdir) -> None:
    _files(connection).fs.rmdir(request.path)


async def fs_rename(connection: Connection, request: FsRename) -> None:
    _files(connection).fs.rename(request.source, request.destination)


async def fs_truncate(connection: Connection, request: FsTruncate) -> None:
    if request.length < 0:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    _files(connection).fs.truncate(request.path, request.length)


async def fs_ftruncate(connection: Connection, request: FsFtruncate) -> None:
    if request.length < 0:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    os.ftruncate(_files(connection).fd(request.handle), request.length)


async def fs_fsync(connection: Connection, request: FsFsync) -> None:
    fd = _files(connection).fd(request.handle)
    if request.datasync:
        os.fdatasync(fd)
    else:
        os.fsync(fd)


async def fs_chmod(connection: Connection, request: FsChmod) -> None:
    _files(connection).fs.chmod(request.path, request.mode)


async def fs_utimens(connection: Connection, request: FsUtimens) -> None:
    _files(connection).fs.utimens(request.path, request.atime, request.mtime)


async def fs_statfs(connection: Connection, request: FsStatfs) -> FsStatfsResult:
    return FsStatfsResult(**attrs.asdict(_files(connection).fs.statfs(request.path)))


class _FileSource:
    """An open regular file as the source ``Stream.send_from_socket`` reads from: it takes
    the descriptor for ``splice`` (which reads regular files as it does sockets, from the
    current position) and calls ``recv_into`` where it cannot splice. A file always has
    data or its end, so the wait for a socket to become readable never happens."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        view = memoryview(buffer)
        return os.readv(self._fd, [view[:nbytes] if nbytes else view])


async def read_file_stream(stream: Stream, request: FsReadFile) -> None:
    fs = _files(stream.connection).fs
    fd = fs.open(request.path, os.O_RDONLY)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            # Refused before accepting, so the opener gets EISDIR as the open's error.
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        await stream.accept()
        # The protocol splices the file's pages into the connection where it can (no copy
        # through the agent), at most a frame (1 MiB) at a time, as flow control allows.
        source = _FileSource(fd)
        while await stream.send_from_socket(source):  # type: ignore[arg-type]
            pass
        await stream.end()
    finally:
        os.close(fd)


AGENT_HANDLERS = AgentHandlers(
    requests={
        message: _invalid_numbers_are_einval(handler)
        for message, handler in {
            FsOpen: fs_open,
            FsRead: fs_read,
            FsWrite: fs_write,
            FsClose: fs_close,
            FsStat: fs_stat,
            FsFstat: fs_fstat,
            FsAccess: fs_access,
            FsReadlink: fs_readlink,
            FsReaddir: fs_readdir,
            FsMkdir: fs_mkdir,
            FsUnlink: fs_unlink,
            FsRmdir: fs_rmdir,
            FsRename: fs_rename,
            FsTruncate: fs_truncate,
            FsFtruncate: fs_ftruncate,
            FsFsync: fs_fsync,
            FsChmod: fs_chmod,
            FsUtimens: fs_utimens,
            FsStatfs: fs_statfs,
        }.items()
    },
    streams={READ_FILE_STREAM: read_file_stream},
)
