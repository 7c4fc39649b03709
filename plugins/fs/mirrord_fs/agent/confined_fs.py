"""File operations on the target's file system, confined to the target's root.

Every path is resolved with ``openat2(RESOLVE_IN_ROOT)`` against an ``O_PATH`` descriptor
of ``/proc/PID/root``, so ``..``, absolute symlinks and symlink chains all stay inside the
target: a symlink in the pod pointing at ``../../../etc/shadow`` reaches the pod's own
``/etc/shadow`` (or nothing), never the node's. Operations on a path's last component use
the ``*at`` calls on a confined descriptor of its parent, so that component is never
followed outside either. Failures raise :class:`OSError` with the errno the client gets.
"""

from __future__ import annotations

import errno
import os
import stat as stat_module
import time
from collections.abc import Iterator

import attrs

from mirrord_core.linux.openat2 import open_in_root

#: Chunk size of whole-file streaming: one protocol data frame (``MAX_DATA_CHUNK``), so
#: each read of the file is one frame on the wire; the stream's flow control keeps one
#: stream from hogging the connection.
STREAM_CHUNK = 1024 * 1024


@attrs.frozen
class FileStat:
    """The fields of ``struct stat`` a client needs, as plain integers."""

    mode: int
    ino: int
    dev: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    blksize: int
    blocks: int
    rdev: int

    @classmethod
    def from_os(cls, result: os.stat_result) -> FileStat:
        return cls(
            mode=result.st_mode,
            ino=result.st_ino,
            dev=result.st_dev,
            nlink=result.st_nlink,
            uid=result.st_uid,
            gid=result.st_gid,
            size=result.st_size,
            atime_ns=result.st_atime_ns,
            mtime_ns=result.st_mtime_ns,
            ctime_ns=result.st_ctime_ns,
            blksize=result.st_blksize,
            blocks=result.st_blocks,
            rdev=result.st_rdev,
        )


@attrs.frozen
class DirEntry:
    """One directory entry: its name, inode and ``S_IF*`` type (0 when unknown)."""

    name: str
    ino: int
    file_type: int


@attrs.frozen
class FsStats:
    """``statvfs`` of the file system holding a path."""

    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namemax: int


def _split(path: str) -> tuple[str, str]:
    """The parent and last component of an absolute path inside the target."""
    if not path.startswith("/") or "\0" in path:
        raise OSError(errno.EINVAL, "expected an absolute path")
    trimmed = path.rstrip("/")
    parent, _, name = trimmed.rpartition("/")
    return parent or "/", name


def _checked_name(name: str) -> str:
    if name in ("", ".", ".."):
        # Operating on "." or ".." by name would act on a directory the caller did not name.
        raise OSError(errno.EINVAL, "invalid last path component")
    return name


class ConfinedFileSystem:
    """The target's file system as seen from the agent, confined to ``root_fd``."""

    def __init__(self, root_fd: int) -> None:
        self._root = root_fd

    @classmethod
    def for_pid(cls, pid: int) -> ConfinedFileSystem:
        """The file system of process ``pid`` (its root, as ``/proc/PID/root`` shows it)."""
        return cls(os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))

    def close(self) -> None:
        os.close(self._root)

    # -- descriptors --------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        """Open ``path`` with open(2) ``flags``; returns the agent-side descriptor.

        The open itself never blocks: a FIFO (or a device) in the target would otherwise
        hold the agent's only thread until some writer appears, stalling every client. So
        the file is opened with ``O_NONBLOCK``, which is cleared again for regular files
        and directories (where it means nothing) unless the caller asked for it; a FIFO
        or device keeps it, so reading it answers ``EAGAIN`` instead of waiting.
        """
        _split(path)
        flags &= ~os.O_CLOEXEC
        if flags & os.O_PATH:
            return open_in_root(self._root, path, flags, mode)
        fd = open_in_root(self._root, path, flags | os.O_NONBLOCK, mode)
        if not flags & os.O_NONBLOCK:
            try:
                kind = stat_module.S_IFMT(os.fstat(fd).st_mode)
                if kind in (stat_module.S_IFREG, stat_module.S_IFDIR):
                    os.set_blocking(fd, True)
            except OSError:
                os.close(fd)
                raise
        return fd

    def _open_parent(self, path: str) -> tuple[int, str]:
        parent, name = _split(path)
        return open_in_root(self._root, parent, os.O_PATH | os.O_DIRECTORY), name

    # -- metadata -------------------------------------------------------------------------

    def stat(self, path: str, follow_symlinks: bool = True) -> FileStat:
        """``stat`` (following the last symlink) or ``lstat`` of ``path``."""
        if follow_symlinks or _split(path)[1] == "":
            fd = self.open(path, os.O_PATH)
            try:
                return FileStat.from_os(os.fstat(fd))
            finally:
                os.close(fd)
        parent, name = self._open_parent(path)
        try:
            return FileStat.from_os(
                os.stat(_checked_name(name), dir_fd=parent, follow_symlinks=False)
            )
        finally:
            os.close(parent)

    def access(self, path: str, mode: int) -> None:
        """``access(2)``: raises ``EACCES``/``ENOENT`` … when ``mode`` is not allowed."""
        if mode & ~(os.R_OK | os.W_OK | os.X_OK):
            # access(2) itself says EINVAL; os.access would only answer False (EACCES).
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        fd = self.open(path, os.O_PATH)
        try:
            # The agent's own /proc/self/fd link to a descriptor it already holds: this
            # follows nothing in the target.
            if not os.access(f"/proc/self/fd/{fd}", mode):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str:
        """The target of the symlink ``path`` (as stored, not resolved)."""
        parent, name = self._open_parent(path)
        try:
            return os.readlink(_checked_name(name), dir_fd=parent)
        finally:
            os.close(parent)

    def readdir(self, path: str) -> list[DirEntry]:
        """The entries of directory ``path`` (without ``.`` and ``..``)."""
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            entries = []
            with os.scandir(fd) as listing:
                for entry in listing:
                    entries.append(DirEntry(entry.name, entry.inode(), _entry_type(entry)))
            return entries
        finally:
            os.close(fd)

    def statfs(self, path: str) -> FsStats:
        """``statvfs`` of the file system holding ``path``."""
        fd = self.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            result = os.fstatvfs(fd)
        finally:
            os.close(fd)
        return FsStats(
            bsize=result.f_bsize,
            frsize=result.f_frsize,
            blocks=result.f_blocks,
            bfree=result.f_bfree,
            bavail=result.f_bavail,
            files=result.f_files,
            ffree=result.f_ffree,
            namemax=result.f_namemax,
        )

    # -- changes ---------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        parent, name = self._open_parent(path)
        try:
            os.mkdir(_checked_name(name), mode, dir_fd=parent)
        finally:
            os.close(parent)

    def unlink(self, path: str) -> None:
        parent, name = self._open_parent(path)
        try:
            os.unlink(_checked_name(name), dir_fd=parent)
        finally:
            os.close(parent)

    def rmdir(self, path: str) -> None:
        parent, name = self._open_parent(path)
        try:
            os.rmdir(_checked_name(name), dir_fd=parent)
        finally:
            os.close(parent)

    def rename(self, source: str, destination: str) -> None:
        source_parent, source_name = self._open_parent(source)
        try:
            destination_parent, destination_name = self._open_parent(destination)
            try:
                os.rename(
                    _checked_name(source_name),
                    _checked_name(destination_name),
                    src_dir_fd=source_parent,
                    dst_dir_fd=destination_parent,
                )
            finally:
                os.close(destination_parent)
        finally:
            os.close(source_parent)

    def truncate(self, path: str, length: int) -> None:
        fd = self.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, length)
        finally:
            os.close(fd)

    def chmod(self, path: str, mode: int) -> None:
        """``chmod`` of exactly ``path``; a symlink is not followed (EOPNOTSUPP, as lchmod)."""
        fd = self.open(path, os.O_PATH | os.O_NOFOLLOW)
        try:
            if stat_module.S_ISLNK(os.fstat(fd).st_mode):
                raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
            # fchmod refuses O_PATH descriptors; the agent's own /proc/self/fd link to the
            # inode it already holds follows nothing in the target.
            os.chmod(f"/proc/self/fd/{fd}", mode)
        finally:
            os.close(fd)

    def utimens(self, path: str, atime: int | str, mtime: int | str) -> None:
        """Set the times of exactly ``path`` (a symlink's own); each time is nanoseconds,
        ``"now"`` or ``"omit"``."""
        if _split(path)[1] == "":
            # The root has no parent to name it from; it is a directory, so following is fine.
            fd = self.open("/", os.O_PATH)
            try:
                current = os.fstat(fd)
                os.utime(f"/proc/self/fd/{fd}", ns=_times(current, atime, mtime))
            finally:
                os.close(fd)
            return
        parent, name = self._open_parent(path)
        try:
            current = os.stat(_checked_name(name), dir_fd=parent, follow_symlinks=False)
            os.utime(name, ns=_times(current, atime, mtime), dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)

    # -- whole files -------------------------------------------------------------------------

    def stream(self, path: str, chunk: int = STREAM_CHUNK) -> Iterator[bytes]:
        """The contents of ``path`` in chunks (opened once, read sequentially)."""
        fd = self.open(path, os.O_RDONLY)
        try:
            while data := os.read(fd, chunk):
                yield data
        finally:
            os.close(fd)


def _times(current: os.stat_result, atime: int | str, mtime: int | str) -> tuple[int, int]:
    """``(atime_ns, mtime_ns)`` for ``os.utime``: "omit" keeps the current value, "now" is
    the target's clock (os.utime cannot pass UTIME_NOW/UTIME_OMIT themselves)."""
    now = time.time_ns()

    def pick(value: int | str, existing: int) -> int:
        if value == "now":
            return now
        if value == "omit":
            return existing
        assert isinstance(value, int)
        return value

    return pick(atime, current.st_atime_ns), pick(mtime, current.st_mtime_ns)


def _entry_type(entry: os.DirEntry[str]) -> int:
    try:
        if entry.is_symlink():
            return stat_module.S_IFLNK
        if entry.is_dir(follow_symlinks=False):
            return stat_module.S_IFDIR
        if entry.is_file(follow_symlinks=False):
            return stat_module.S_IFREG
        # FIFOs, sockets and devices: fstatat(dir fd, name, AT_SYMLINK_NOFOLLOW), which
        # follows nothing.
        return stat_module.S_IFMT(entry.stat(follow_symlinks=False).st_mode)
    except OSError:
        return 0
