"""The FUSE operations of a remote mount: each one answered through the agent session.

libfuse calls these from its worker threads. Each remote call is a coroutine scheduled on
the session's event loop (:class:`AsyncBridge`); the worker waits for its answer, the loop
never waits for a worker. Answers are cached briefly (:class:`AttrCache`) and files opened
read-only are read ahead whole (:mod:`mirrord_fs.local.read_cache`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import itertools
import logging
import os
import posixpath
import stat
import threading
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import attrs
import mfusepy

from mirrord_fs.local.fuse_driver import reply_from_bytes, reply_from_fd
from mirrord_fs.local.read_cache import CacheEntry, ReadCache, fill_entry
from mirrord_fs.local.remote_files import RemoteFiles
from mirrord_fs.messages import FsStatResult, TimeSpec

log = logging.getLogger("mirrord.fs.fuse")

T = TypeVar("T")

#: The largest read the kernel asks for: 1 MiB less 16 KiB, so that an answer (its data,
#: header and the pages libfuse adds to its estimate) fits in a 1 MiB pipe — the largest
#: a process without CAP_SYS_RESOURCE may make one — and libfuse splices it from the
#: cache file into /dev/fuse instead of reading it into a buffer and writing that.
#: (Measured on the first read of a 64 MiB file: ~1.5x with 1008 KiB reads spliced,
#: against 1 MiB reads copied.)
FUSE_MAX_READ = 1024 * 1024 - 16 * 1024
# fuse_common.h: libfuse splices answers only when the file system asks for it.
_FUSE_CAP_SPLICE_WRITE = 1 << 7
_FUSE_CAP_SPLICE_MOVE = 1 << 8

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
# utimensat's special nanosecond values (linux/stat.h).
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2


def _requesting_thread() -> int | None:
    """The kernel thread id that made the FUSE request being answered on this thread."""
    context = mfusepy._libfuse.fuse_get_context()
    # NULL outside libfuse's worker threads (an API call from the caller's thread).
    return context.contents.pid if context else None


class AsyncBridge:
    """Runs coroutines on the session's event loop from FUSE threads and waits for them.

    Failures become :class:`OSError`: the target's errno as it is, anything else (the
    agent went away, a protocol error) EIO, no answer within ``timeout`` ETIMEDOUT.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        #: The loop thread's kernel thread id, once known (see :meth:`learn_loop_thread`).
        self.loop_tid: int | None = None

    def learn_loop_thread(self) -> None:
        """Record which kernel thread runs the loop, so that requests made *by* that thread
        (a blocking call on the mount from the loop) fail fast instead of hanging."""

        def record() -> None:
            self.loop_tid = threading.get_native_id()

        self.loop.call_soon_threadsafe(record)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop without waiting."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """``coro``'s result; never call this on the loop's own thread (EDEADLK)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop or (
            self.loop_tid is not None and _requesting_thread() == self.loop_tid
        ):
            coro.close()
            # The loop would wait for itself: its own thread made this request (FUSE gives
            # the requesting thread's id), and is blocked until it is answered.
            raise OSError(errno.EDEADLK, "the mount was used from its session's event loop")
        if self.loop.is_closed():
            coro.close()
            raise OSError(errno.ENOTCONN, "the session is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise OSError(errno.ETIMEDOUT, "the agent did not answer in time") from None
        except OSError as err:
            if isinstance(err.errno, int) and err.errno > 0:
                raise
            raise OSError(errno.EIO, str(err)) from None
        except concurrent.futures.CancelledError:
            raise OSError(errno.EINTR, "cancelled") from None
        except Exception as err:
            log.debug("remote call failed: %s", err)
            raise OSError(errno.EIO, str(err)) from None


class AttrCache:
    """``lstat`` answers by path for ``ttl`` seconds, ENOENT for ``negative_ttl`` seconds.

    Every change made through the mount invalidates what it touched, so only changes made
    on the target by others are seen late, by at most the TTL.
    """

    def __init__(self, ttl: float, negative_ttl: float) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._entries: dict[str, tuple[float, FsStatResult | None]] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> tuple[bool, FsStatResult | None]:
        """``(found, result)``; a found ``None`` result is a cached ENOENT."""
        with self._lock:
            item = self._entries.get(path)
            if item is None:
                return False, None
            if item[0] < time.monotonic():
                del self._entries[path]
                return False, None
            return True, item[1]

    def put(self, path: str, result: FsStatResult | None) -> None:
        ttl = self.ttl if result is not None else self.negative_ttl
        if ttl <= 0:
            return
        with self._lock:
            self._entries[path] = (time.monotonic() + ttl, result)

    def invalidate(self, path: str, *, tree: bool = False) -> None:
        """Forget ``path`` and its parent (whose mtime and link count change with it), and
        with ``tree`` everything below ``path`` as well (a renamed or removed directory)."""
        parent = posixpath.dirname(path.rstrip("/")) or "/"
        prefix = path.rstrip("/") + "/"
        with self._lock:
            self._entries.pop(path, None)
            self._entries.pop(parent, None)
            if tree:
                for key in [k for k in self._entries if k.startswith(prefix)]:
                    del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def confine_link(link: str, target: str) -> str:
    """The target of symlink ``link`` as the mount shows it: resolving inside the target.

    The kernel follows a symlink on the mount itself; an absolute target, or ``..`` steps
    above the target's root, would leave the mount and reach the node's own files. So such
    targets are rewritten to the relative path that reaches, from the link's directory,
    what the target means inside the target's root (``..`` at the root stays at the root,
    as in the target). Relative targets without ``..`` are shown as they are.
    """
    parts = target.split("/")
    if not target or (not target.startswith("/") and ".." not in parts):
        return target
    directory = [p for p in posixpath.dirname(link).split("/") if p]
    resolved = [] if target.startswith("/") else list(directory)
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
        else:
            resolved.append(part)
    common = 0
    while common < min(len(directory), len(resolved)) and directory[common] == resolved[common]:
        common += 1
    relative = [".."] * (len(directory) - common) + resolved[common:]
    result = "/".join(relative) or "."
    if target.endswith("/") and resolved:
        result += "/"
    return result


def _stat_dict(result: FsStatResult) -> dict[str, int]:
    return {
        "st_mode": result.mode,
        "st_ino": result.ino,
        "st_nlink": result.nlink,
        "st_uid": result.uid,
        "st_gid": result.gid,
        "st_size": result.size,
        "st_atime": result.atime_ns,
        "st_mtime": result.mtime_ns,
        "st_ctime": result.ctime_ns,
        "st_blksize": result.blksize,
        "st_blocks": result.blocks,
        "st_rdev": result.rdev,
    }


def _time_spec(seconds: int, nanoseconds: int) -> TimeSpec:
    if nanoseconds == _UTIME_NOW:
        return "now"
    if nanoseconds == _UTIME_OMIT:
        return "omit"
    return seconds * 1_000_000_000 + nanoseconds


def _erofs() -> OSError:
    return OSError(errno.EROFS, os.strerror(errno.EROFS))


# -- handles -------------------------------------------------------------------------------------


@attrs.define
class CachedReadHandle:
    """A read-only open served from a whole-file cache entry (shared by every open of the
    same version; its fetch starts at the first read through any of them)."""

    path: str
    entry: CacheEntry
    stat: FsStatResult


@attrs.define
class RemoteHandle:
    """An open file on the agent (writes, and reads of files not read ahead)."""

    path: str
    remote: int
    writable: bool
    written: bool = False


@attrs.define
class DirHandle:
    path: str


_Handle = CachedReadHandle | RemoteHandle | DirHandle


@attrs.define
class MountStats:
    """What the mount asked the agent, for tests and benchmarks (approximate under races)."""

    #: Remote requests by operation name (``stat``, ``read``, ``open`` …).
    requests: dict[str, int] = attrs.field(factory=dict)
    #: Whole files fetched (read-ahead started) and opens served by a complete cached copy.
    fetches: int = 0
    cache_hits: int = 0
    #: Bytes FUSE reads got from read-ahead copies (what the kernel did not have cached).
    cached_bytes_served: int = 0

    def count(self, operation: str) -> None:
        self.requests[operation] = self.requests.get(operation, 0) + 1


class RemoteOperations(mfusepy.Operations):
    """mfusepy operations backed by :class:`RemoteFiles` (paths are the target's paths).

    ``writable=False`` answers every change with EROFS. Files opened read-only, regular and
    at most ``readahead_limit`` bytes, are read ahead whole into ``cache``; others are read
    through agent-side handles.
    """

    use_ns = True

    def __init__(
        self,
        files: RemoteFiles,
        bridge: AsyncBridge,
        cache: ReadCache,
        *,
        writable: bool,
        attr_ttl: float = 1.0,
        negative_ttl: float = 1.0,
        readahead_limit: int = 1024 * 1024 * 1024,
    ) -> None:
        self.files = files
        self.bridge = bridge
        self.cache = cache
        self.writable = writable
        self.attrs = AttrCache(attr_ttl, negative_ttl)
        self.readahead_limit = readahead_limit
        self.stats = MountStats()
        self._handles: dict[int, _Handle] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------------

    def _call(self, operation: str, coro: Coroutine[Any, Any, T]) -> T:
        self.stats.count(operation)
        return self.bridge.call(coro)

    def _add(self, handle: _Handle) -> int:
        with self._lock:
            number = next(self._numbers)
            self._handles[number] = handle
            return number

    def _handle(self, fi: Any) -> _Handle:
        number = fi if isinstance(fi, int) else fi.fh
        with self._lock:
            handle = self._handles.get(number)
        if handle is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return handle

    def _pop(self, fi: Any) -> _Handle | None:
        number = fi if isinstance(fi, int) else fi.fh
        with self._lock:
            return self._handles.pop(number, None)

    def open_handles(self) -> int:
        """Files and directories currently open on the mount."""
        with self._lock:
            return len(self._handles)

    def _require_writable(self) -> None:
        if not self.writable:
            raise _erofs()

    def _changed(self, path: str, *, tree: bool = False) -> None:
        self.attrs.invalidate(path, tree=tree)
        self.cache.invalidate(path)

    def lstat(self, path: str) -> FsStatResult:
        """``lstat`` of ``path`` in the target, through the attribute cache."""
        found, result = self.attrs.get(path)
        if found:
            if result is None:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            return result
        try:
            result = self._call("stat", self.files.lstat(path))
        except OSError as err:
            if err.errno == errno.ENOENT:
                self.attrs.put(path, None)
            raise
        self.attrs.put(path, result)
        return result

    # -- lifecycle -----------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            # Must match the mount's max_read option (libfuse refuses to start otherwise).
            conn.max_read = FUSE_MAX_READ
            conn.want |= conn.capable & (_FUSE_CAP_SPLICE_WRITE | _FUSE_CAP_SPLICE_MOVE)
        if config is not None:
            # A file unlinked while open is removed at once: libfuse would otherwise rename
            # it to .fuse_hidden* in the target's file system.
            config.hard_remove = 1
            # Operations on open files then get no path (NULL): such a file has none, and
            # our handles do not need one.
            config.nullpath_ok = 1

    def destroy(self, path: str) -> None:
        pass

    # -- metadata ------------------------------------------------------------------------------

    def getattr(self, path: str | None, fh: Any = None) -> dict[str, int]:
        if fh is not None:
            handle = self._handle(fh)
            if isinstance(handle, CachedReadHandle):
                # The version being read: its size is what the cached bytes hold.
                return _stat_dict(handle.stat)
            if isinstance(handle, RemoteHandle):
                return _stat_dict(self._call("fstat", self.files.fstat(handle.remote)))
            path = handle.path
        assert path is not None
        return _stat_dict(self.lstat(path))

    def readlink(self, path: str) -> str:
        return confine_link(path, self._call("readlink", self.files.readlink(path)))

    def access(self, path: str, amode: int) -> int:
        if amode & os.W_OK and not self.writable:
            raise _erofs()
        if amode == os.F_OK:
            self.lstat(path)
            return 0
        self._call("access", self.files.access(path, amode))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        result = self._call("statfs", self.files.statfs(path))
        return {
            "f_bsize": result.bsize,
            "f_frsize": result.frsize,
            "f_blocks": result.blocks,
            "f_bfree": result.bfree,
            "f_bavail": result.bavail,
            "f_files": result.files,
            "f_ffree": result.ffree,
            "f_favail": result.ffree,
            "f_namemax": result.namemax,
        }

    # -- directories ---------------------------------------------------------------------------

    def opendir(self, path: str) -> int:
        if not stat.S_ISDIR(self.lstat(path).mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        return self._add(DirHandle(path))

    def readdir(self, path: str | None, fh: int) -> Iterable[Any]:
        handle = self._handle(fh)
        entries = self._call("readdir", self.files.readdir(handle.path))
        listing: list[Any] = [".", ".."]
        listing.extend((name, {"st_mode": kind, "st_ino": ino}, 0) for name, ino, kind in entries)
        return listing

    def releasedir(self, path: str | None, fh: int) -> int:
        self._pop(fh)
        return 0

    # -- files ---------------------------------------------------------------------------------

    def open(self, path: str, fi: Any) -> int:
        flags = fi.flags
        if flags & _WRITE_FLAGS:
            self._require_writable()
            remote = self._call("open", self.files.open(path, flags & ~os.O_CREAT))
            fi.fh = self._add(RemoteHandle(path, remote, writable=True))
            if flags & os.O_TRUNC:
                self._changed(path)
            return 0
        result = self.lstat(path)
        if stat.S_ISREG(result.mode) and 0 < result.size <= self.readahead_limit:
            entry, fetch = self.cache.acquire((path, result.mtime_ns, result.size))
            if not fetch and entry.complete:
                self.stats.cache_hits += 1
                # The kernel's pages are of this very version: keep them.
                fi.keep_cache = 1
            fi.fh = self._add(CachedReadHandle(path, entry, result))
            return 0
        remote = self._call("open", self.files.open(path, flags))
        # Not read ahead: size 0 may be a generated file (procfs-like) whose reads the
        # kernel must not cut at the reported size.
        fi.direct_io = int(result.size == 0)
        fi.fh = self._add(RemoteHandle(path, remote, writable=False))
        return 0

    def create(self, path: str, mode: int, fi: Any) -> int:
        self._require_writable()
        # Permission bits only: the kernel passes S_IFREG too, which openat2 refuses.
        mode = stat.S_IMODE(mode)
        remote = self._call("open", self.files.open(path, fi.flags | os.O_CREAT, mode))
        self._changed(path)
        fi.fh = self._add(RemoteHandle(path, remote, writable=True, written=True))
        return 0

    def read_buf(self, path: str | None, bufpp: Any, size: int, offset: int, fh: Any) -> int:
        """libfuse's ``read_buf``: a read of a file on disk in the cache is answered with
        the cache file's descriptor (the kernel gets the bytes straight from it); any other
        read with the bytes :meth:`read` returns."""
        handle = self._handle(fh)
        if isinstance(handle, CachedReadHandle):
            if handle.entry.fill is None:
                self._start_fill(handle.entry)
            fd, length = handle.entry.read_location(offset, size, self.bridge.timeout)
            if fd is not None:
                self.stats.cached_bytes_served += length
                reply_from_fd(bufpp, fd, offset, length)
                return 0
        reply_from_bytes(bufpp, self.read(path, size, offset, fh))
        return 0

    def read(self, path: str | None, size: int, offset: int, fh: Any) -> bytes:
        handle = self._handle(fh)
        if isinstance(handle, CachedReadHandle):
            if handle.entry.fill is None:
                self._start_fill(handle.entry)
            data = handle.entry.read(offset, size, self.bridge.timeout)
            self.stats.cached_bytes_served += len(data)
            return data
        if not isinstance(handle, RemoteHandle):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        pieces = []
        while size:
            data = self._call("read", self.files.read(handle.remote, offset, size))
            if not data:
                break
            pieces.append(data)
            offset += len(data)
            size -= len(data)
        return b"".join(pieces)

    def _start_fill(self, entry: CacheEntry) -> None:
        """Start fetching ``entry`` unless that is done: on the first read through *any*
        open of it, not only the open that created it. The kernel's page cache belongs to
        the inode, so when several opens read at once, the read for a page reaches us
        through whichever open asked first, and the others wait in the kernel on that
        page's lock: a fetch left to the creating open would never start (until the
        timeout) while its reader waits for the page the other read waits on."""
        with self._lock:
            if entry.fill is not None:
                return
            entry.begin_fill()
            self.stats.fetches += 1
            entry.fill = self.bridge.submit(fill_entry(entry, self.files))

    def write(self, path: str | None, data: bytes, offset: int, fh: Any) -> int:
        self._require_writable()
        handle = self._handle(fh)
        if not isinstance(handle, RemoteHandle) or not handle.writable:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        written = 0
        view = memoryview(data)
        while written < len(data):
            count = self._call(
                "write", self.files.write(handle.remote, offset + written, bytes(view[written:]))
            )
            if count <= 0:
                break
            written += count
        handle.written = True
        self._changed(handle.path)
        return written

    def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
        self._require_writable()
        handle = self._handle(fh) if fh is not None else None
        if isinstance(handle, RemoteHandle) and handle.writable:
            self._call("ftruncate", self.files.ftruncate(handle.remote, length))
            handle.written = True
            self._changed(handle.path)
            return 0
        target = path if path is not None else getattr(handle, "path", None)
        if target is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        self._call("truncate", self.files.truncate(target, length))
        self._changed(target)
        return 0

    def flush(self, path: str | None, fh: Any) -> int:
        # Writes go to the agent as they happen: nothing is buffered here.
        return 0

    def fsync(self, path: str | None, datasync: int, fh: Any) -> int:
        handle = self._handle(fh)
        if isinstance(handle, RemoteHandle) and handle.writable:
            self._call("fsync", self.files.fsync(handle.remote, bool(datasync)))
        return 0

    def release(self, path: str | None, fh: Any) -> int:
        handle = self._pop(fh)
        if isinstance(handle, CachedReadHandle):
            self.cache.release(handle.entry)
        elif isinstance(handle, RemoteHandle):
            try:
                self._call("close", self.files.close(handle.remote))
            except OSError as err:
                # Nothing to tell anyone: close(2) has already returned.
                log.debug("closing remote handle of %s: %s", handle.path, err)
            if handle.written:
                self._changed(handle.path)
        return 0

    # -- changes -------------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int) -> int:
        self._require_writable()
        try:
            self._call("mkdir", self.files.mkdir(path, stat.S_IMODE(mode)))
        finally:
            self._changed(path)
        return 0

    def unlink(self, path: str) -> int:
        self._require_writable()
        try:
            self._call("unlink", self.files.unlink(path))
        finally:
            self._changed(path)
        return 0

    def rmdir(self, path: str) -> int:
        self._require_writable()
        try:
            self._call("rmdir", self.files.rmdir(path))
        finally:
            self._changed(path, tree=True)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._require_writable()
        if flags:
            # RENAME_NOREPLACE / EXCHANGE / WHITEOUT have no wire form yet: refusing makes
            # callers (mv -n) fall back to checking first, instead of overwriting.
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        try:
            self._call("rename", self.files.rename(old, new))
        finally:
            self._changed(old, tree=True)
            self._changed(new, tree=True)
        return 0

    def chmod(self, path: str | None, mode: int, fh: Any = None) -> int:
        self._require_writable()
        target = path if path is not None else self._handle(fh).path
        try:
            self._call("chmod", self.files.chmod(target, stat.S_IMODE(mode)))
        finally:
            self._changed(target)
        return 0

    def utimens(self, path: str | None, times: Any = None, fh: Any = None) -> int:
        self._require_writable()
        target = path if path is not None else self._handle(fh).path
        atime: TimeSpec = "now"
        mtime: TimeSpec = "now"
        if times is not None:
            atime, mtime = _time_spec(*times[0]), _time_spec(*times[1])
        try:
            self._call("utimens", self.files.utimens(target, atime, mtime))
        finally:
            self._changed(target)
        return 0
