"""One trapped syscall, and the ways to answer it.

A notification is answered exactly once, from any thread, at any time; until then the
tracee thread waits in the syscall. Every ``respond_*`` method returns ``False`` (and
``inject_fd`` ``None``) when the tracee no longer waits for the answer: it was killed, or
(without ``WAIT_KILLABLE_RECV``) a signal interrupted the syscall. That is normal and no
error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from typing import TYPE_CHECKING

from mirrord_core.interception import kernel
from mirrord_core.interception import seccomp_abi as abi
from mirrord_core.interception.tasks import thread_group_id

if TYPE_CHECKING:
    from mirrord_core.interception.tracee_memory import TraceeMemory


class AlreadyAnswered(RuntimeError):
    """A notification was answered twice."""


class Listener:
    """The supervisor's end of the filter: the listener fd and the tracee memory access."""

    def __init__(self, fd: int, memory: TraceeMemory) -> None:
        self.fd = fd
        self.memory = memory
        self.closed = False
        # Answers may come from any thread while the supervisor closes the listener: the
        # lock keeps an answer from reaching an fd number the kernel gave to another file.
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the listener; every syscall still waiting then fails with ENOSYS."""
        with self._lock:
            if not self.closed:
                self.closed = True
                os.close(self.fd)

    def _ioctl(self, request: int, argument: bytes) -> None:
        # fcntl.ioctl costs a fraction of a ctypes call; SEND and ID_VALID need no result.
        with self._lock:
            if self.closed:
                raise OSError(errno.EBADF, "the listener is closed")
            fcntl.ioctl(self.fd, request, argument)

    def send(self, notification_id: int, value: int, error: int, flags: int) -> bool:
        """``SECCOMP_IOCTL_NOTIF_SEND``; ``False`` when the notification is gone."""
        response = abi.RESP_FORMAT.pack(notification_id, value, error, flags)
        try:
            self._ioctl(abi.SECCOMP_IOCTL_NOTIF_SEND, response)
        except OSError as error_:
            if _gone(error_, self):
                return False
            raise
        return True

    def id_valid(self, notification_id: int) -> bool:
        """``SECCOMP_IOCTL_NOTIF_ID_VALID``: whether the tracee still waits."""
        try:
            self._ioctl(abi.SECCOMP_IOCTL_NOTIF_ID_VALID, abi.ID_FORMAT.pack(notification_id))
        except OSError as error:
            if _gone(error, self):
                return False
            raise
        return True

    def add_fd(self, notification_id: int, fd: int, flags: int, target: int, cloexec: bool) -> int:
        """``SECCOMP_IOCTL_NOTIF_ADDFD``; the fd's number in the tracee."""
        request = abi.ADDFD_FORMAT.pack(
            notification_id, flags, fd, target, os.O_CLOEXEC if cloexec else 0
        )
        # ADDFD's result (the fd number in the tracee) is lost by fcntl.ioctl: use ctypes.
        with self._lock:
            if self.closed:
                raise OSError(errno.EBADF, "the listener is closed")
            return kernel.ioctl(self.fd, abi.SECCOMP_IOCTL_NOTIF_ADDFD, request)


def _gone(error: OSError, listener: Listener) -> bool:
    """Whether ``error`` only says that the answer has nobody to go to."""
    # ENOENT: the tracee stopped waiting. EBADF after close: the supervisor closed the
    # listener, which failed every waiting syscall with ENOSYS.
    return error.errno == errno.ENOENT or (error.errno == errno.EBADF and listener.closed)


class Notification:
    """One trapped syscall of a tracee thread.

    ``pid`` is the id of the *thread* (task) that made the syscall, as in the
    supervisor's pid namespace; :attr:`tgid` is its process. ``args`` are the six raw
    argument registers.
    """

    __slots__ = (
        "_answered",
        "_fields",
        "_last_string",
        "_listener",
        "_tgid",
        "args",
        "id",
        "nr",
        "pid",
        "syscall",
    )

    def __init__(self, listener: Listener, fields: tuple[int, ...], syscall: str) -> None:
        """``fields``: ``struct seccomp_notif`` unpacked (id, pid, flags, nr, arch,
        instruction pointer, six arguments)."""
        # One of these is made per trapped syscall: only what handlers use is copied out.
        self._listener = listener
        self._fields = fields
        self.id: int = fields[0]
        self.pid: int = fields[1]
        self.nr: int = fields[3]
        self.args = fields[6:12]
        #: The syscall's name (``"openat"``).
        self.syscall = syscall
        # list.pop() is atomic under the GIL: whoever pops the token answers.
        self._answered: list[bool] = [True]
        self._tgid: int | None = None
        # (address, string) of the last read_string (the supervisor may have made it).
        self._last_string: tuple[int, bytes] | None = None

    def __repr__(self) -> str:
        args = ", ".join(hex(a) for a in self.args)
        return f"<Notification {self.id} pid={self.pid} {self.syscall}({args})>"

    @property
    def flags(self) -> int:
        """``struct seccomp_notif``'s ``flags`` (none are defined yet)."""
        return self._fields[2]

    @property
    def arch(self) -> int:
        """The syscall's ``AUDIT_ARCH_*`` value."""
        return self._fields[4]

    @property
    def instruction_pointer(self) -> int:
        """Where the tracee made the syscall."""
        return self._fields[5]

    # -- about the tracee --------------------------------------------------------------

    @property
    def tgid(self) -> int:
        """The id of the tracee's process (its thread group); ``pidfd_open`` needs it."""
        if self._tgid is None:
            tgid = thread_group_id(self.pid)
            if tgid is None:
                raise ProcessLookupError(errno.ESRCH, f"task {self.pid} is gone")
            self._tgid = tgid
        return self._tgid

    @property
    def answered(self) -> bool:
        """Whether an answer was sent (or is being sent)."""
        return not self._answered

    def is_valid(self) -> bool:
        """Whether the tracee still waits for this answer (``SECCOMP_IOCTL_NOTIF_ID_VALID``).

        Check it after acting on data read from the tracee: if it is still waiting, the
        task id did not change hands in between.
        """
        return self._listener.id_valid(self.id)

    def read_string(self, address: int, max_length: int = 4096) -> bytes:
        """The NUL-terminated string at tracee ``address`` (a path argument, say).

        Raises :class:`~mirrord_core.interception.tracee_memory.TraceeMemoryError`.
        """
        last = self._last_string
        if last is not None and last[0] == address and len(last[1]) < max_length:
            return last[1]  # read for this syscall already (by the supervisor, say)
        memory = self._listener.memory
        opens = memory.opens
        data = memory.read_string(self.pid, address, max_length)
        if memory.opens != opens:
            self._check_fresh_fd()
        self._last_string = (address, data)
        return data

    def read_memory(self, address: int, size: int) -> bytes:
        """``size`` bytes at tracee ``address`` (a ``struct sockaddr``, say)."""
        memory = self._listener.memory
        opens = memory.opens
        data = memory.read(self.pid, address, size)
        if memory.opens != opens:
            self._check_fresh_fd()
        return data

    def write_memory(self, address: int, data: bytes) -> None:
        """Write ``data`` at tracee ``address`` (a ``struct stat`` result, say)."""
        self._listener.memory.write(self.pid, address, data)

    def pidfd_getfd(self, fd: int) -> int:
        """A duplicate of the tracee's ``fd`` (same open file description), close-on-exec.

        Used to act on a tracee's socket (connect it elsewhere) without its cooperation.
        """
        pidfd = os.pidfd_open(self.tgid)
        try:
            return kernel.pidfd_getfd(pidfd, fd)
        finally:
            os.close(pidfd)

    # -- answers -----------------------------------------------------------------------

    def respond_continue(self) -> bool:
        """Let the syscall run natively."""
        self._claim()
        return self._send(0, 0, abi.SECCOMP_USER_NOTIF_FLAG_CONTINUE)

    def respond_value(self, value: int) -> bool:
        """Make the syscall return ``value`` without running it."""
        self._claim()
        return self._send(value, 0, 0)

    def respond_errno(self, error: int) -> bool:
        """Make the syscall fail with ``error`` (a positive errno) without running it."""
        if error <= 0:
            raise ValueError(f"an errno is positive, not {error}")
        self._claim()
        return self._send(0, -error, 0)

    def inject_fd(self, fd: int, cloexec: bool = False) -> int | None:
        """Install a copy of ``fd`` in the tracee and make its number the syscall's result.

        One step (``SECCOMP_ADDFD_FLAG_SEND``): the tracee never sees a half-done state.
        Returns the fd's number in the tracee; ``None`` if the tracee stopped waiting, or
        if the kernel refused the fd (the tracee's fd table is full, say) — the syscall
        then fails with that errno. The caller still owns (and closes) ``fd``.
        """
        self._claim()
        try:
            return self._listener.add_fd(self.id, fd, abi.SECCOMP_ADDFD_FLAG_SEND, 0, cloexec)
        except OSError as error:
            if _gone(error, self._listener):
                return None
            # Not installed, and not answered: fail the syscall the way the kernel failed.
            self._listener.send(self.id, 0, -(error.errno or errno.EIO), 0)
            return None

    def add_fd(self, fd: int, cloexec: bool = False, target_fd: int | None = None) -> int:
        """Install a copy of ``fd`` in the tracee *without* answering; returns its number.

        ``target_fd`` picks the number (replacing what is there, like ``dup2``). Answer the
        notification afterwards (``recvmsg`` emulation passes fds this way).
        """
        if self.answered:
            raise AlreadyAnswered(f"notification {self.id} was already answered")
        flags = abi.SECCOMP_ADDFD_FLAG_SETFD if target_fd is not None else 0
        try:
            return self._listener.add_fd(self.id, fd, flags, target_fd or 0, cloexec)
        except OSError as error:
            if error.errno == errno.ENOENT:
                raise ProcessLookupError(errno.ESRCH, "the tracee stopped waiting") from None
            raise

    # -- internals ---------------------------------------------------------------------

    def _send(self, value: int, error: int, flags: int) -> bool:
        try:
            return self._listener.send(self.id, value, error, flags)
        except OSError:
            # The kernel refused this answer (it never refuses a plain errno): the tracee
            # must not wait forever.
            with contextlib.suppress(OSError):
                self._listener.send(self.id, 0, -errno.EIO, 0)
            raise

    def _claim(self) -> None:
        try:
            self._answered.pop()
        except IndexError:
            raise AlreadyAnswered(f"notification {self.id} was already answered") from None

    def _check_fresh_fd(self) -> None:
        # A freshly opened /proc/TID/mem could belong to a new task that got the id of a
        # tracee killed in the meantime: the read only counts if the tracee still waits.
        if not self.is_valid():
            raise ProcessLookupError(errno.ESRCH, f"task {self.pid} stopped waiting")
