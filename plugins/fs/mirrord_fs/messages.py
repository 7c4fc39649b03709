"""Wire messages of the fs plugin (shared by its local and agent sides).

Paths are absolute paths inside the target; errors come back as the errno the operation
failed with in the target.
"""

from __future__ import annotations

from typing import Literal

import attrs

from mirrord_core.protocol import Message, register_message

#: Stream kind: the whole contents of a file, streamed in chunks (payload: FsReadFile).
READ_FILE_STREAM = "fs.read_file"
#: Largest single read; larger reads are answered short, as read(2) may be.
MAX_READ = 4 * 1024 * 1024


@register_message
@attrs.frozen(kw_only=True)
class FsOpen(Message):
    TAG = "fs.open"
    path: str
    flags: int
    mode: int = 0o666


@register_message
@attrs.frozen(kw_only=True)
class FsHandle(Message):
    TAG = "fs.handle"
    handle: int


@register_message
@attrs.frozen(kw_only=True)
class FsRead(Message):
    TAG = "fs.read"
    handle: int
    offset: int
    size: int


@register_message
@attrs.frozen(kw_only=True)
class FsData(Message):
    TAG = "fs.data"
    data: bytes


@register_message
@attrs.frozen(kw_only=True)
class FsWrite(Message):
    TAG = "fs.write"
    handle: int
    offset: int
    data: bytes


@register_message
@attrs.frozen(kw_only=True)
class FsWritten(Message):
    TAG = "fs.written"
    count: int


@register_message
@attrs.frozen(kw_only=True)
class FsClose(Message):
    TAG = "fs.close"
    handle: int


@register_message
@attrs.frozen(kw_only=True)
class FsStat(Message):
    TAG = "fs.stat"
    path: str
    follow_symlinks: bool = True


@register_message
@attrs.frozen(kw_only=True)
class FsFstat(Message):
    TAG = "fs.fstat"
    handle: int


@register_message
@attrs.frozen(kw_only=True)
class FsStatResult(Message):
    TAG = "fs.stat_result"
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


@register_message
@attrs.frozen(kw_only=True)
class FsAccess(Message):
    TAG = "fs.access"
    path: str
    mode: int


@register_message
@attrs.frozen(kw_only=True)
class FsReadlink(Message):
    TAG = "fs.readlink"
    path: str


@register_message
@attrs.frozen(kw_only=True)
class FsLinkTarget(Message):
    TAG = "fs.link_target"
    target: str


@register_message
@attrs.frozen(kw_only=True)
class FsReaddir(Message):
    TAG = "fs.readdir"
    path: str


@register_message
@attrs.frozen(kw_only=True)
class FsEntries(Message):
    """Directory entries as parallel lists (names, inode numbers, ``S_IF*`` types)."""

    TAG = "fs.entries"
    names: list[str]
    inodes: list[int]
    types: list[int]


@register_message
@attrs.frozen(kw_only=True)
class FsMkdir(Message):
    TAG = "fs.mkdir"
    path: str
    mode: int = 0o777


@register_message
@attrs.frozen(kw_only=True)
class FsUnlink(Message):
    TAG = "fs.unlink"
    path: str


@register_message
@attrs.frozen(kw_only=True)
class FsRmdir(Message):
    TAG = "fs.rmdir"
    path: str


@register_message
@attrs.frozen(kw_only=True)
class FsRename(Message):
    TAG = "fs.rename"
    source: str
    destination: str


@register_message
@attrs.frozen(kw_only=True)
class FsTruncate(Message):
    TAG = "fs.truncate"
    path: str
    length: int


@register_message
@attrs.frozen(kw_only=True)
class FsFtruncate(Message):
    """Truncate an open file (``ftruncate``): works after the file was renamed or unlinked."""

    TAG = "fs.ftruncate"
    handle: int
    length: int


@register_message
@attrs.frozen(kw_only=True)
class FsFsync(Message):
    """``fsync`` (or ``fdatasync`` with ``datasync``) of an open file."""

    TAG = "fs.fsync"
    handle: int
    datasync: bool = False


@register_message
@attrs.frozen(kw_only=True)
class FsChmod(Message):
    """``chmod`` of exactly ``path``: a symlink is not followed (and answers EOPNOTSUPP)."""

    TAG = "fs.chmod"
    path: str
    mode: int


#: A time of :class:`FsUtimens`: nanoseconds since the epoch, ``"now"`` (the target's
#: clock) or ``"omit"`` (leave it unchanged), like ``utimensat``'s UTIME_NOW/UTIME_OMIT.
TimeSpec = int | Literal["now", "omit"]


@register_message
@attrs.frozen(kw_only=True)
class FsUtimens(Message):
    """``utimensat`` of exactly ``path`` (a symlink's own times, not its target's)."""

    TAG = "fs.utimens"
    path: str
    atime: TimeSpec = "now"
    mtime: TimeSpec = "now"


@register_message
@attrs.frozen(kw_only=True)
class FsStatfs(Message):
    TAG = "fs.statfs"
    path: str


@register_message
@attrs.frozen(kw_only=True)
class FsStatfsResult(Message):
    TAG = "fs.statfs_result"
    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namemax: int


@register_message
@attrs.frozen(kw_only=True)
class FsReadFile(Message):
    """Open payload of a :data:`READ_FILE_STREAM`: stream this file's contents."""

    TAG = "fs.read_file"
    path: str
