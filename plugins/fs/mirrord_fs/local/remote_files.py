"""The target's file system through a session: what the FUSE mount and tests call."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from mirrord_core.protocol import ConnectionLost, StreamResetError
from mirrord_core.session import RemoteRequestError, Session, SessionError
from mirrord_fs.messages import (
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
    TimeSpec,
)


class RemoteFiles:
    """File operations on the target; failures raise the target's :class:`OSError`."""

    def __init__(self, session: Session) -> None:
        self.session = session

    async def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
        answer: FsHandle = await self.session.request(FsOpen(path=path, flags=flags, mode=mode))
        return answer.handle

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        answer: FsData = await self.session.request(FsRead(handle=handle, offset=offset, size=size))
        return answer.data

    async def write(self, handle: int, offset: int, data: bytes) -> int:
        answer: FsWritten = await self.session.request(
            FsWrite(handle=handle, offset=offset, data=data)
        )
        return answer.count

    async def close(self, handle: int) -> None:
        await self.session.request(FsClose(handle=handle))

    async def stat(self, path: str, follow_symlinks: bool = True) -> FsStatResult:
        return await self.session.request(FsStat(path=path, follow_symlinks=follow_symlinks))

    async def lstat(self, path: str) -> FsStatResult:
        return await self.stat(path, follow_symlinks=False)

    async def fstat(self, handle: int) -> FsStatResult:
        return await self.session.request(FsFstat(handle=handle))

    async def access(self, path: str, mode: int) -> None:
        await self.session.request(FsAccess(path=path, mode=mode))

    async def readlink(self, path: str) -> str:
        answer: FsLinkTarget = await self.session.request(FsReadlink(path=path))
        return answer.target

    async def readdir(self, path: str) -> list[tuple[str, int, int]]:
        """``(name, inode, S_IF* type)`` of each entry."""
        answer: FsEntries = await self.session.request(FsReaddir(path=path))
        return list(zip(answer.names, answer.inodes, answer.types, strict=True))

    async def mkdir(self, path: str, mode: int = 0o777) -> None:
        await self.session.request(FsMkdir(path=path, mode=mode))

    async def unlink(self, path: str) -> None:
        await self.session.request(FsUnlink(path=path))

    async def rmdir(self, path: str) -> None:
        await self.session.request(FsRmdir(path=path))

    async def rename(self, source: str, destination: str) -> None:
        await self.session.request(FsRename(source=source, destination=destination))

    async def truncate(self, path: str, length: int) -> None:
        await self.session.request(FsTruncate(path=path, length=length))

    async def ftruncate(self, handle: int, length: int) -> None:
        await self.session.request(FsFtruncate(handle=handle, length=length))

    async def fsync(self, handle: int, datasync: bool = False) -> None:
        await self.session.request(FsFsync(handle=handle, datasync=datasync))

    async def chmod(self, path: str, mode: int) -> None:
        """``chmod`` of exactly ``path`` (a symlink is not followed: EOPNOTSUPP)."""
        await self.session.request(FsChmod(path=path, mode=mode))

    async def utimens(self, path: str, atime: TimeSpec = "now", mtime: TimeSpec = "now") -> None:
        """Set the times of exactly ``path``: nanoseconds, ``"now"`` or ``"omit"``."""
        await self.session.request(FsUtimens(path=path, atime=atime, mtime=mtime))

    async def statfs(self, path: str) -> FsStatfsResult:
        return await self.session.request(FsStatfs(path=path))

    async def file_chunks(self, path: str) -> AsyncIterator[bytes | memoryview]:
        """The contents of ``path`` as they arrive, streamed with flow control, without
        copies: each chunk is a read-only bytes-like object (``bytes`` or a
        ``memoryview``) that stays valid and unchanged while it is referenced."""
        stream = await self.session.open_stream(READ_FILE_STREAM, FsReadFile(path=path))
        async with stream:
            chunks = stream.chunks()
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except StreamResetError as err:
                    # The agent failed reading (an I/O error): the target's errno.
                    if err.errno is not None:
                        raise OSError(err.errno, err.reason) from None
                    raise RemoteRequestError("stream_reset", str(err)) from None
                except ConnectionLost as err:
                    raise SessionError(f"lost the agent: {err}") from None
                yield chunk

    async def stream_file(self, path: str) -> AsyncIterator[bytes]:
        """The contents of ``path`` in chunks (``bytes``), streamed with flow control."""
        async for chunk in self.file_chunks(path):
            yield chunk if type(chunk) is bytes else bytes(chunk)

    async def read_file(self, path: str) -> bytes:
        """The whole contents of ``path``."""
        return b"".join([chunk async for chunk in self.stream_file(path)])
