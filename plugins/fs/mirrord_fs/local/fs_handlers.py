"""The fs plugin's syscall handler: remote paths are served from the session's mount.

``mirrord run`` traps the path syscalls of the user's process tree (DESIGN §6). For each,
the handler makes the path absolute (:mod:`mirrord_fs.local.tracee_paths`) and asks the
:class:`~mirrord_fs.local.path_policy.PathPolicy`:

- ``LOCAL``: the syscall runs natively (``CONTINUE``);
- ``READ_ONLY`` (a write in ``read`` mode): it fails with ``EROFS``, as mirrord refuses it;
- ``REMOTE``: a worker thread performs it on the per-session FUSE mount of the target's
  root and answers the notification (``DEFERRED``): ``open`` opens ``<mount>/<path>`` with
  the tracee's flags and injects the descriptor, so ``read``, ``write``, ``lseek``,
  ``mmap``, ``fstat`` and ``getdents`` then run natively against FUSE; the stat family
  writes the kernel's own ``struct stat``/``struct statx`` into the tracee's buffer;
  ``readlink`` answers the link's target as stored in the target; changes (``mkdir``,
  ``unlink``, ``rename``, ``truncate``, ``chmod``, ``utimensat`` …) are made on the mount;
  ``chdir`` moves the process into the directory on the mount (with ptrace:
  :mod:`mirrord_fs.local.tracee_chdir`), and ``getcwd`` there reports the target's path.

Every path is resolved inside the mount with ``openat2(RESOLVE_IN_ROOT)`` on a descriptor
of the mount's root, so neither ``..`` nor a symlink leaves the target's root. The mount
talks to the agent on the session's event loop; the notification thread never waits for
it (only the worker threads do).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import functools
import logging
import os
import platform
import posixpath
import struct
import threading
from collections.abc import Callable

from mirrord_core.interception import (
    CONTINUE,
    DEFERRED,
    Answer,
    Errno,
    InjectFd,
    Notification,
    TraceeMemoryError,
    Value,
)
from mirrord_core.interception.seccomp_abi import syscall_table
from mirrord_core.linux.openat2 import open_in_root
from mirrord_core.session import Session
from mirrord_fs.local.path_policy import Decision, PathPolicy
from mirrord_fs.local.remote_mount import RemoteMount
from mirrord_fs.local.tracee_chdir import change_directory
from mirrord_fs.local.tracee_paths import (
    AT_EACCESS,
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_REMOVEDIR,
    AT_STATX_SYNC_TYPE,
    AT_SYMLINK_NOFOLLOW,
    TraceePath,
    base_directory,
    normalize,
    resolve,
    signed32,
    signed64,
    tracee_umask,
)

log = logging.getLogger("mirrord.fs.handlers")

#: Syscalls that only read (trapped in every mode but ``local``).
READ_SYSCALLS = frozenset(
    {
        "open",
        "openat",
        "openat2",
        "creat",
        "stat",
        "lstat",
        "newfstatat",
        "statx",
        "access",
        "faccessat",
        "faccessat2",
        "readlink",
        "readlinkat",
        "chdir",
        "getcwd",
    }
)
#: Syscalls that change files: remote in ``write`` mode (or for ``read_write`` patterns),
#: refused with EROFS for remote paths in ``read`` mode.
WRITE_SYSCALLS = frozenset(
    {
        "mkdir",
        "mkdirat",
        "unlink",
        "unlinkat",
        "rmdir",
        "rename",
        "renameat",
        "renameat2",
        "truncate",
        "chmod",
        "fchmodat",
        "fchmodat2",
        "utimensat",
    }
)
FS_SYSCALLS = READ_SYSCALLS | WRITE_SYSCALLS

#: ``struct stat`` as the kernel writes it: 144 bytes on x86_64, 128 on aarch64 (generic).
STAT_SIZE = {"x86_64": 144, "aarch64": 128}
STATX_SIZE = 256
#: How long a worker waits for the mount to come up.
MOUNT_WAIT = 60.0
#: Decisions remembered, per kind of cache (beyond that the oldest is forgotten first).
DECISION_CACHE = 16384
_LOCAL = Decision.LOCAL
_REMOTE = Decision.REMOTE
#: Syscalls that only read, whose answer is ``CONTINUE`` whenever their absolute path is
#: local (whatever the other arguments say): the index of their path argument.
_LOCAL_READ_PATH_ARGUMENT = {
    "stat": 0,
    "lstat": 0,
    "newfstatat": 1,
    "statx": 1,
    "access": 0,
    "faccessat": 1,
    "faccessat2": 1,
    "readlink": 0,
    "readlinkat": 1,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(name: str, *args: object) -> int:
    result = _libc.syscall(ctypes.c_long(syscall_table()[name]), *args)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def _writes(flags: int) -> bool:
    """Whether an open with ``flags`` may change the file."""
    return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(
        flags & (os.O_CREAT | os.O_TRUNC | os.O_APPEND)
    )


def _relative(path: str) -> str:
    """``path`` for ``openat2`` on the mount's root (RESOLVE_IN_ROOT; never empty)."""
    return path.lstrip("/") or "."


Job = Callable[[int], Answer]


class RemoteFsHandler:
    """Handles the path syscalls of one ``mirrord run``; see the module's description.

    ``mount`` is the session's mount or a future of it (it starts while the command
    does). ``close()`` stops the workers and unmounts.
    """

    syscalls = FS_SYSCALLS

    def __init__(
        self,
        policy: PathPolicy,
        mount: RemoteMount | concurrent.futures.Future[RemoteMount],
        *,
        writable: bool,
        workers: int = 8,
    ) -> None:
        self.policy = policy
        self.writable = writable
        # The policy is fixed for the run and programs ask about the same paths again and
        # again (a stat loop, every import's directories): its regexes run once per path.
        self._policy_decide = functools.lru_cache(maxsize=DECISION_CACHE)(policy.decide)
        # An absolute path means the same whoever asks and wherever they are: its final
        # decision is kept by the bytes read from the tracee (one dict per write flag), so
        # a local path costs one read of tracee memory and one lookup — no decoding, no
        # resolving, no objects. Only the notification thread uses them.
        self._read_decisions: dict[bytes, Decision] = {}
        self._write_decisions: dict[bytes, Decision] = {}
        # The absolute paths whose reads are local, as the engine's fast path wants them
        # (docs/interception.md): it answers those syscalls without calling handle().
        self._local_reads: set[bytes] = set()
        self.continue_paths = {
            name: (argument, self._local_reads)
            for name, argument in _LOCAL_READ_PATH_ARGUMENT.items()
        }
        if isinstance(mount, RemoteMount):
            future: concurrent.futures.Future[RemoteMount] = concurrent.futures.Future()
            future.set_result(mount)
            mount = future
        self._mount_future = mount
        self._mount_prefix: str | None = None
        self._root_fd: int | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "mirrord-fs")
        self._closed = False
        self._lock = threading.Condition()
        #: Jobs using the mount's root descriptor right now (closing waits for them).
        self._active = 0
        self._stat_size = STAT_SIZE.get(platform.machine(), 144)
        self._handlers: dict[str, Callable[[Notification], Answer]] = {
            "open": self._open,
            "openat": self._open,
            "openat2": self._open,
            "creat": self._open,
            "stat": self._stat,
            "lstat": self._stat,
            "newfstatat": self._stat,
            "statx": self._statx,
            "access": self._access,
            "faccessat": self._access,
            "faccessat2": self._access,
            "readlink": self._readlink,
            "readlinkat": self._readlink,
            "chdir": self._chdir,
            "getcwd": self._getcwd,
            "mkdir": self._mkdir,
            "mkdirat": self._mkdir,
            "unlink": self._unlink,
            "unlinkat": self._unlink,
            "rmdir": self._unlink,
            "rename": self._rename,
            "renameat": self._rename,
            "renameat2": self._rename,
            "truncate": self._truncate,
            "chmod": self._chmod,
            "fchmodat": self._chmod,
            "fchmodat2": self._chmod,
            "utimensat": self._utimensat,
        }

    # -- the mount ---------------------------------------------------------------------------

    def _root(self) -> int:
        """The mount's root directory (``O_PATH``), once the mount is up (workers only)."""
        mount = self._mount()
        with self._lock:
            if self._closed or mount.closed:
                raise OSError(errno.EIO, "the remote file system is closed")
            if self._root_fd is None:
                self._root_fd = os.open(mount.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                # From now on descriptors of the mount can reach the tracee.
                self._mount_prefix = str(mount.path)
            self._active += 1
            return self._root_fd

    def _release_root(self) -> None:
        with self._lock:
            self._active -= 1
            self._lock.notify_all()

    def _mount(self) -> RemoteMount:
        try:
            return self._mount_future.result(MOUNT_WAIT)
        except concurrent.futures.TimeoutError:
            raise OSError(errno.ETIMEDOUT, "the remote file system did not come up") from None
        except OSError:
            raise
        except Exception as err:
            raise OSError(errno.EIO, f"the remote file system is unavailable: {err}") from None

    def close(self) -> None:
        """Stop the workers, unmount and forget the mount's root. Idempotent.

        Call it off the session's event-loop thread: a mount still starting needs that
        loop. (On the loop thread, a mount that is not up yet is closed once it is.)
        """
        if self._closed:
            return
        self._closed = True
        # Queued jobs still run (and answer EIO): no tracee is left waiting.
        self._pool.shutdown(wait=False)
        future = self._mount_future
        if not future.done() and _on_event_loop():
            future.add_done_callback(lambda _: self._close_mount())
            return
        try:
            future.result(MOUNT_WAIT)
        except Exception as err:
            log.debug("the remote file system never came up: %s", err)
        self._close_mount()

    def _close_mount(self) -> None:
        with self._lock:
            # A job still running (its tracee gone, say) must not see the number reused.
            self._lock.wait_for(lambda: self._active == 0, timeout=MOUNT_WAIT / 12)
            if self._root_fd is not None:
                os.close(self._root_fd)
                self._root_fd = None
        future = self._mount_future
        if future.done() and not future.cancelled() and future.exception() is None:
            future.result().close()

    # -- dispatch ----------------------------------------------------------------------------

    def handle(self, notification: Notification) -> Answer | None:
        handler = self._handlers.get(notification.syscall)
        if handler is None:
            return None
        try:
            return handler(notification)
        except (TraceeMemoryError, ProcessLookupError):
            # An unreadable argument (EFAULT) or a tracee that is gone: the kernel answers.
            return CONTINUE

    def _locate(
        self, notification: Notification, dirfd: int, address: int, write: bool
    ) -> tuple[Decision | None, TraceePath | None]:
        """The decision for one path argument, with the resolved path unless it is
        ``LOCAL``. ``(None, None)`` when there is nothing to decide (a ``NULL`` or empty
        path, an unknown base directory): the syscall should run, the kernel answers it."""
        if address == 0:
            return None, None
        raw = notification.read_string(address)
        if raw[:1] == b"/":
            # The hot path (every local stat and open of a program): one dict lookup.
            decision = (self._write_decisions if write else self._read_decisions).get(raw)
            if decision is None:
                decision = self._remember_absolute(raw, write)
            if decision is _LOCAL:
                return decision, None
            text = os.fsdecode(raw)
            return decision, TraceePath(normalize(text), exact=text)
        target = resolve(notification.pid, signed32(dirfd), raw, self._mount_prefix)
        if target is None:
            return None, None
        return self._decide(target, write), target

    def _remember_absolute(self, raw: bytes, write: bool) -> Decision:
        """Decide for the absolute path ``raw`` and keep the decision (bounded)."""
        decision = self._decide(TraceePath(normalize(os.fsdecode(raw))), write)
        cache = self._write_decisions if write else self._read_decisions
        if len(cache) >= DECISION_CACHE:
            oldest = next(iter(cache))
            del cache[oldest]
            if not write:
                self._local_reads.discard(oldest)
        cache[raw] = decision
        if not write and decision is _LOCAL:
            self._local_reads.add(raw)
        return decision

    def _remote_read_target(
        self, notification: Notification, dirfd: int, address: int
    ) -> TraceePath | None:
        """The path argument if a read-only operation on it is served remotely."""
        decision, target = self._locate(notification, dirfd, address, False)
        return target if decision is _REMOTE else None

    def _decide(self, target: TraceePath, write: bool) -> Decision:
        decision = self._policy_decide(target.path, write)
        if target.on_mount and decision is Decision.LOCAL:
            # Relative to a directory of the target: the file is the target's whatever
            # the patterns say of the path.
            decision = Decision.REMOTE
        if decision is Decision.REMOTE and write and not self.writable:
            decision = Decision.READ_ONLY
        return decision

    def _defer(self, notification: Notification, job: Job) -> Answer:
        """Run ``job(mount root fd)`` on a worker; it answers the notification."""

        def run() -> None:
            try:
                root = self._root()
                try:
                    answer = job(root)
                finally:
                    self._release_root()
            except OSError as err:
                answer = Errno(err.errno if isinstance(err.errno, int) and err.errno > 0 else 5)
            except Exception:
                log.exception("serving %s remotely failed", notification)
                answer = Errno(errno.EIO)
            try:
                answer.deliver(notification)
            except Exception as err:  # the tracee may be gone
                log.debug("answering %s: %s", notification, err)

        if self._closed:
            return Errno(errno.EIO)
        try:
            self._pool.submit(run)
        except RuntimeError:  # shut down meanwhile
            return Errno(errno.EIO)
        return DEFERRED

    # -- open --------------------------------------------------------------------------------

    def _open(self, notification: Notification) -> Answer:
        args = notification.args
        name = notification.syscall
        if name == "open":
            dirfd, address, flags, mode = AT_FDCWD, args[0], args[1], args[2]
        elif name == "creat":
            dirfd, address = AT_FDCWD, args[0]
            flags, mode = os.O_CREAT | os.O_WRONLY | os.O_TRUNC, args[1]
        elif name == "openat":
            dirfd, address, flags, mode = signed32(args[0]), args[1], args[2], args[3]
        else:
            if args[3] < 24:
                return CONTINUE  # the kernel rejects a short open_how
            how = notification.read_memory(args[2], 24)
            flags, mode, _resolve = struct.unpack("=QQQ", how)
            dirfd, address = signed32(args[0]), args[1]
        flags &= 0xFFFFFFFF
        decision, target = self._locate(notification, dirfd, address, _writes(flags))
        if target is None or decision is Decision.LOCAL:
            return CONTINUE
        if decision is Decision.READ_ONLY:
            return Errno(errno.EROFS)
        creates = bool(flags & os.O_CREAT) or (flags & os.O_TMPFILE) == os.O_TMPFILE
        mode = (mode & 0o7777 & ~tracee_umask(notification.pid)) if creates else 0
        cloexec = bool(flags & os.O_CLOEXEC)
        open_flags = flags & ~os.O_CLOEXEC

        def job(root: int) -> Answer:
            fd = open_in_root(root, _relative(target.in_target), open_flags, mode)
            return InjectFd(fd, cloexec=cloexec)

        return self._defer(notification, job)

    # -- stat family ---------------------------------------------------------------------------

    def _stat(self, notification: Notification) -> Answer:
        args = notification.args
        name = notification.syscall
        if name in ("stat", "lstat"):
            dirfd, address, buffer, flags = AT_FDCWD, args[0], args[1], 0
            if name == "lstat":
                flags = AT_SYMLINK_NOFOLLOW
        else:
            # The dirfd register as it is: it only matters for a relative path (_locate).
            dirfd, address, buffer, flags = args[0], args[1], args[2], args[3]
        decision, target = self._locate(notification, dirfd, address, False)
        if decision is not _REMOTE or target is None:
            return CONTINUE
        size = self._stat_size

        def job(root: int) -> Answer:
            result = ctypes.create_string_buffer(size)
            _on_path(
                root,
                target,
                flags,
                lambda fd: _syscall("newfstatat", ctypes.c_int(fd), b"", result, AT_EMPTY_PATH),
            )
            notification.write_memory(buffer, result.raw)
            return Value(0)

        return self._defer(notification, job)

    def _statx(self, notification: Notification) -> Answer:
        args = notification.args
        dirfd, address, flags, mask, buffer = args[0], args[1], args[2], args[3], args[4]
        target = self._remote_read_target(notification, dirfd, address)
        if target is None:
            return CONTINUE

        def job(root: int) -> Answer:
            result = ctypes.create_string_buffer(STATX_SIZE)
            sync = ctypes.c_int(AT_EMPTY_PATH | (flags & AT_STATX_SYNC_TYPE))
            wanted = ctypes.c_uint(mask & 0xFFFFFFFF)
            _on_path(
                root,
                target,
                flags,
                lambda fd: _syscall("statx", ctypes.c_int(fd), b"", sync, wanted, result),
            )
            notification.write_memory(buffer, result.raw)
            return Value(0)

        return self._defer(notification, job)

    def _access(self, notification: Notification) -> Answer:
        args = notification.args
        name = notification.syscall
        if name == "access":
            dirfd, address, mode, flags = AT_FDCWD, args[0], args[1], 0
        else:
            dirfd, address, mode = args[0], args[1], args[2]
            flags = args[3] if name == "faccessat2" else 0
        target = self._remote_read_target(notification, dirfd, address)
        if target is None:
            return CONTINUE

        def job(root: int) -> Answer:
            how = ctypes.c_int(AT_EMPTY_PATH | (flags & AT_EACCESS))
            _on_path(
                root,
                target,
                flags,
                lambda fd: _syscall(
                    "faccessat2", ctypes.c_int(fd), b"", ctypes.c_int(mode & 7), how
                ),
            )
            return Value(0)

        return self._defer(notification, job)

    def _readlink(self, notification: Notification) -> Answer:
        args = notification.args
        if notification.syscall == "readlink":
            dirfd, address, buffer, size = AT_FDCWD, args[0], args[1], signed32(args[2])
        else:
            dirfd, address, buffer, size = args[0], args[1], args[2], signed32(args[3])
        target = self._remote_read_target(notification, dirfd, address)
        if target is None:
            return CONTINUE

        def job(root: int) -> Answer:
            if size <= 0:
                raise OSError(errno.EINVAL, "bad buffer size")
            # The target as stored in the target, not the mount's confined rewrite.
            link = os.fsencode(self._mount().readlink(target.in_target))[:size]
            notification.write_memory(buffer, link)
            return Value(len(link))

        return self._defer(notification, job)

    # -- working directory ---------------------------------------------------------------------

    def _chdir(self, notification: Notification) -> Answer:
        """A remote directory becomes the working directory as its directory on the mount:
        the tracee itself calls ``fchdir`` on a confined descriptor of it (ptrace)."""
        target = self._remote_read_target(notification, AT_FDCWD, notification.args[0])
        if target is None:
            return CONTINUE

        def job(root: int) -> Answer:
            # Not O_PATH: SECCOMP_IOCTL_NOTIF_ADDFD refuses those (EBADF).
            directory = open_in_root(
                root, _relative(target.in_target), os.O_RDONLY | os.O_DIRECTORY
            )
            return _ChangeDirectory(directory)

        return self._defer(notification, job)

    def _getcwd(self, notification: Notification) -> Answer:
        """A working directory on the mount reads as the target's path."""
        prefix = self._mount_prefix
        if prefix is None:
            return CONTINUE
        cwd = base_directory(notification.pid, AT_FDCWD)
        if cwd is None or not (cwd == prefix or cwd.startswith(prefix + "/")):
            return CONTINUE  # local, or removed (the kernel answers ENOENT)
        path = os.fsencode(cwd[len(prefix) :] or "/") + b"\0"
        buffer, size = notification.args[0], notification.args[1]
        if size < len(path):
            return Errno(errno.ERANGE)
        notification.write_memory(buffer, path)
        return Value(len(path))

    # -- changes -----------------------------------------------------------------------------

    def _remote_write(
        self,
        notification: Notification,
        targets: list[tuple[int, int]],
        job: Callable[[list[TraceePath]], Job],
    ) -> Answer:
        """Decide for the ``(dirfd, path address)`` arguments of a changing syscall."""
        resolved = []
        decisions = set()
        for dirfd, address in targets:
            decision, target = self._locate(notification, dirfd, address, True)
            if decision is None:
                return CONTINUE
            decisions.add(decision)
            if target is not None:
                resolved.append(target)
        if decisions == {Decision.LOCAL}:
            return CONTINUE
        if Decision.READ_ONLY in decisions:
            return Errno(errno.EROFS)
        if len(decisions) > 1:
            return Errno(errno.EXDEV)  # a rename between this machine and the target
        return self._defer(notification, job(resolved))

    def _mkdir(self, notification: Notification) -> Answer:
        args = notification.args
        if notification.syscall == "mkdir":
            dirfd, address, mode = AT_FDCWD, args[0], args[1]
        else:
            dirfd, address, mode = signed32(args[0]), args[1], args[2]
        mode = mode & 0o7777 & ~tracee_umask(notification.pid)

        def job(targets: list[TraceePath]) -> Job:
            def run(root: int) -> Answer:
                with _Parent(root, targets[0]) as (parent, name):
                    os.mkdir(name, mode, dir_fd=parent)
                return Value(0)

            return run

        return self._remote_write(notification, [(dirfd, address)], job)

    def _unlink(self, notification: Notification) -> Answer:
        args = notification.args
        name = notification.syscall
        if name == "unlinkat":
            dirfd, address, remove_dir = signed32(args[0]), args[1], bool(args[2] & AT_REMOVEDIR)
        else:
            dirfd, address, remove_dir = AT_FDCWD, args[0], name == "rmdir"

        def job(targets: list[TraceePath]) -> Job:
            def run(root: int) -> Answer:
                with _Parent(root, targets[0]) as (parent, entry):
                    if remove_dir:
                        os.rmdir(entry, dir_fd=parent)
                    else:
                        os.unlink(entry, dir_fd=parent)
                return Value(0)

            return run

        return self._remote_write(notification, [(dirfd, address)], job)

    def _rename(self, notification: Notification) -> Answer:
        args = notification.args
        name = notification.syscall
        if name == "rename":
            pairs, flags = [(AT_FDCWD, args[0]), (AT_FDCWD, args[1])], 0
        else:
            pairs = [(signed32(args[0]), args[1]), (signed32(args[2]), args[3])]
            flags = args[4] & 0xFFFFFFFF if name == "renameat2" else 0

        def job(targets: list[TraceePath]) -> Job:
            def run(root: int) -> Answer:
                with (
                    _Parent(root, targets[0]) as (source_dir, source),
                    _Parent(root, targets[1]) as (destination_dir, destination),
                ):
                    if flags:
                        _syscall(
                            "renameat2",
                            ctypes.c_int(source_dir),
                            os.fsencode(source),
                            ctypes.c_int(destination_dir),
                            os.fsencode(destination),
                            ctypes.c_uint(flags),
                        )
                    else:
                        os.rename(
                            source,
                            destination,
                            src_dir_fd=source_dir,
                            dst_dir_fd=destination_dir,
                        )
                return Value(0)

            return run

        return self._remote_write(notification, pairs, job)

    def _truncate(self, notification: Notification) -> Answer:
        args = notification.args
        length = signed64(args[1])

        def job(targets: list[TraceePath]) -> Job:
            def run(root: int) -> Answer:
                if length < 0:
                    raise OSError(errno.EINVAL, "negative length")
                fd = _open_path(root, targets[0], nofollow=False)
                try:
                    os.truncate(f"/proc/self/fd/{fd}", length)
                finally:
                    os.close(fd)
                return Value(0)

            return run

        return self._remote_write(notification, [(AT_FDCWD, args[0])], job)

    def _chmod(self, notification: Notification) -> Answer:
        args = notification.args
        name = notification.syscall
        if name == "chmod":
            dirfd, address, mode, flags = AT_FDCWD, args[0], args[1], 0
        else:
            dirfd, address, mode = signed32(args[0]), args[1], args[2]
            flags = args[3] if name == "fchmodat2" else 0

        def job(targets: list[TraceePath]) -> Job:
            def run(root: int) -> Answer:
                with _Parent(root, targets[0]) as (parent, entry):
                    os.chmod(
                        entry,
                        mode & 0o7777,
                        dir_fd=parent,
                        follow_symlinks=not flags & AT_SYMLINK_NOFOLLOW,
                    )
                return Value(0)

            return run

        return self._remote_write(notification, [(dirfd, address)], job)

    def _utimensat(self, notification: Notification) -> Answer:
        args = notification.args
        dirfd, address, times_address, flags = signed32(args[0]), args[1], args[2], args[3]
        if address == 0:
            return CONTINUE  # futimens(fd): acts on the descriptor
        times = notification.read_memory(times_address, 32) if times_address else None

        def job(targets: list[TraceePath]) -> Job:
            def run(root: int) -> Answer:
                with _Parent(root, targets[0]) as (parent, entry):
                    _syscall(
                        "utimensat",
                        ctypes.c_int(parent),
                        os.fsencode(entry),
                        ctypes.c_char_p(times),
                        ctypes.c_int(flags & AT_SYMLINK_NOFOLLOW),
                    )
                return Value(0)

            return run

        return self._remote_write(notification, [(dirfd, address)], job)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def start_remote_fs(
    policy: PathPolicy, session: Session, loop: asyncio.AbstractEventLoop, *, writable: bool
) -> RemoteFsHandler:
    """The handler for one ``mirrord run``, its mount of the target's root starting.

    The mount starts on a thread of its own while the command starts (it needs
    ``loop``, the session's running loop, to answer the kernel's first requests).
    """
    future: concurrent.futures.Future[RemoteMount] = concurrent.futures.Future()

    def start() -> None:
        try:
            mount = RemoteMount.start(session, loop=loop, writable=writable)
        except BaseException as err:
            log.error("cannot mount the target's files: %s (remote file operations fail)", err)
            future.set_exception(err)
        else:
            future.set_result(mount)

    threading.Thread(target=start, name="mirrord-fs-mount", daemon=True).start()
    return RemoteFsHandler(policy, future, writable=writable)


def _open_path(root: int, target: TraceePath, *, nofollow: bool) -> int:
    """An ``O_PATH`` descriptor of ``target`` inside the mount's root."""
    flags = os.O_PATH | (os.O_NOFOLLOW if nofollow else 0)
    return open_in_root(root, _relative(target.in_target), flags)


def _on_path(root: int, target: TraceePath, flags: int, use: Callable[[int], object]) -> None:
    """``use(fd)`` with an ``O_PATH`` descriptor of ``target`` (``AT_SYMLINK_NOFOLLOW`` in
    the syscall's ``flags``: a final symlink is not followed), closed afterwards."""
    fd = _open_path(root, target, nofollow=bool(flags & AT_SYMLINK_NOFOLLOW))
    try:
        use(fd)
    finally:
        os.close(fd)


class _ChangeDirectory(Answer):
    """Answers a ``chdir`` by moving the tracee into ``directory`` (then closed)."""

    def __init__(self, directory: int) -> None:
        self.directory = directory

    def deliver(self, notification: Notification) -> bool:
        try:
            return change_directory(notification, self.directory)
        except OSError as error:
            _warn_no_chdir(error.strerror or str(error))
            return notification.respond_errno(error.errno or errno.EPERM)
        finally:
            os.close(self.directory)


@functools.cache
def _warn_no_chdir(reason: str) -> None:
    """Once per reason: why ``chdir`` into the target's files fails."""
    log.warning(
        "cannot change the working directory into the target's files: %s "
        "(it needs ptrace access to the process: no other debugger, Yama ptrace_scope ≤ 1)",
        reason,
    )


class _Parent:
    """``with _Parent(root, target) as (parent_fd, name)``: the confined parent directory
    of ``target`` (normalized) and its last component, for the ``*at`` calls."""

    def __init__(self, root: int, target: TraceePath) -> None:
        parent, name = posixpath.split(target.path)
        self._parent = parent
        self._name = name or "."
        self._root = root
        self._fd: int | None = None

    def __enter__(self) -> tuple[int, str]:
        self._fd = open_in_root(self._root, _relative(self._parent), os.O_PATH | os.O_DIRECTORY)
        return self._fd, self._name

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
