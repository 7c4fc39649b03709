"""Changing a tracee's working directory to a directory of the session's mount.

No system call changes *another* process's working directory, and a seccomp notification
can only answer a trapped ``chdir`` or let it run with the arguments it has. So to move a
process into a remote directory, the supervisor has the tracee's thread call ``fchdir``
itself, with ptrace, while it is still inside its trapped ``chdir``:

1. ``PTRACE_SEIZE`` the thread (it waits for the notification's answer) and install a
   descriptor of the directory on the mount in it (``SECCOMP_IOCTL_NOTIF_ADDFD``, without
   answering).
2. ``PTRACE_INTERRUPT``, then answer the notification: the thread leaves the syscall and
   stops before it returns to user space (``PTRACE_EVENT_STOP``). The interrupt cannot
   abort the killable wait of a received notification (Linux ≥ 5.19); on older kernels it
   aborts it, and the thread stops the same way with the syscall to be restarted.
3. At that stop, its registers are saved and it is made to execute its own ``syscall``
   instruction (the two bytes before the saved instruction pointer) twice:
   ``fchdir(fd)``, then ``close(fd)`` — each observed with ``PTRACE_SYSCALL`` entry and
   exit stops.
4. The saved registers are restored with ``fchdir``'s result as the ``chdir``'s result
   (and no syscall restart), and the thread is detached. Signals that arrived meanwhile
   were held back at their delivery stops; they are sent again (``tgkill``) just before
   the detach, so they reach the thread before its program runs on (a signal's
   ``siginfo`` is then the supervisor's).

The working directory then really is the directory on the mount: children inherit it,
relative paths and ``*at(AT_FDCWD)`` calls resolve there natively (or through the fs
handler, which sees a base on the mount), and the kernel's ``getcwd`` reports the mount's
path, which the fs handler translates back to the target's. x86_64 only.

Waiting uses ``waitid`` on the one thread with ``WNOWAIT`` first, so that an exit is never
reaped here when the supervisor's own wait for its command needs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import signal

from mirrord_core.interception import Notification

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_SYS_PTRACE = 101
_SYS_TGKILL = 234
_SYS_FCHDIR = 81
_SYS_CLOSE = 3
_SYSCALL_INSTRUCTION = b"\x0f\x05"

PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_CONT = 7
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_O_TRACESYSGOOD = 1
#: A supervisor dying half-way kills the thread rather than leave it with our registers.
PTRACE_O_EXITKILL = 0x100000
PTRACE_EVENT_STOP = 128
#: ``si_status`` of a syscall stop with ``PTRACE_O_TRACESYSGOOD``.
_SYSCALL_STOP = signal.SIGTRAP | 0x80
_WALL = 0x40000000
_EXITS = {os.CLD_EXITED, os.CLD_KILLED, os.CLD_DUMPED}
_U64 = (1 << 64) - 1


class TraceeGone(Exception):
    """The thread exited (or was killed) during the change."""


def supported() -> bool:
    """Whether this machine's architecture is supported (x86_64)."""
    return platform.machine() == "x86_64"


class _Registers(ctypes.Structure):
    """``struct user_regs_struct`` of x86_64."""

    _fields_ = [
        (name, ctypes.c_ulonglong)
        for name in [
            "r15",
            "r14",
            "r13",
            "r12",
            "rbp",
            "rbx",
            "r11",
            "r10",
            "r9",
            "r8",
            "rax",
            "rcx",
            "rdx",
            "rsi",
            "rdi",
            "orig_rax",
            "rip",
            "cs",
            "eflags",
            "rsp",
            "ss",
            "fs_base",
            "gs_base",
            "ds",
            "es",
            "fs",
            "gs",
        ]
    ]


def _ptrace(request: int, tid: int, address: int = 0, data: int = 0) -> None:
    result = _libc.syscall(
        ctypes.c_long(_SYS_PTRACE),
        ctypes.c_long(request),
        ctypes.c_long(tid),
        ctypes.c_void_p(address),
        ctypes.c_void_p(data),
    )
    if result == -1:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def _signed(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The command name (field 2) may hold spaces and parentheses: split after it.
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class _Tracer:
    """One seized thread; every call must come from the thread that seized it."""

    def __init__(self, tid: int, tgid: int) -> None:
        self.tid = tid
        self.tgid = tgid
        #: A process leader whose parent is this process is reaped by the supervisor's
        #: wait for its command, never here.
        self.leave_exit = tid == tgid and _parent_of(tgid) == os.getpid()
        #: Signals held back at their delivery stops, to be sent again.
        self.held_signals: list[int] = []
        self.attached = False

    def seize(self) -> None:
        _ptrace(PTRACE_SEIZE, self.tid, 0, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)
        self.attached = True

    def interrupt(self) -> None:
        _ptrace(PTRACE_INTERRUPT, self.tid)

    def registers(self) -> _Registers:
        registers = _Registers()
        _ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(registers))
        return registers

    def set_registers(self, registers: _Registers) -> None:
        _ptrace(PTRACE_SETREGS, self.tid, 0, ctypes.addressof(registers))

    def detach(self) -> None:
        if self.attached:
            self.attached = False
            with contextlib.suppress(ProcessLookupError):
                _ptrace(PTRACE_DETACH, self.tid)

    def wait_stop(self, resume: int) -> int:
        """The next stop's ``si_status`` (a syscall stop, or an event stop's
        ``signal | event << 8``). Signal-delivery stops on the way are held back and the
        thread resumed with ``resume``. Raises :class:`TraceeGone`."""
        while True:
            try:
                info = os.waitid(os.P_PID, self.tid, os.WEXITED | os.WSTOPPED | os.WNOWAIT | _WALL)
            except ChildProcessError:
                self.attached = False
                raise TraceeGone(f"task {self.tid} is gone") from None
            if info is None:
                continue
            if info.si_code in _EXITS:
                self.attached = False
                if not self.leave_exit:
                    with contextlib.suppress(ChildProcessError):
                        os.waitid(os.P_PID, self.tid, os.WEXITED | os.WNOHANG | _WALL)
                raise TraceeGone(f"task {self.tid} exited")
            # Consume the stop (without WEXITED: this can never reap an exit).
            os.waitid(os.P_PID, self.tid, os.WSTOPPED | os.WNOHANG | _WALL)
            status = info.si_status
            if status == _SYSCALL_STOP or status >> 8 == PTRACE_EVENT_STOP:
                return status
            # A signal-delivery stop: deliver nothing now, send it again afterwards.
            self.held_signals.append(status & 0x7F)
            _ptrace(resume, self.tid)

    def run_syscall(self, at: int, number: int, argument: int) -> int:
        """Make the stopped thread execute syscall ``number(argument)`` with the
        ``syscall`` instruction at ``at``; its result (``-errno`` on failure)."""
        registers = self.registers()
        registers.rip = at
        registers.rax = number
        registers.rdi = argument
        registers.orig_rax = _U64  # -1: not in a syscall, nothing to restart
        self.set_registers(registers)
        for _ in range(2):  # the entry stop, then the exit stop
            _ptrace(PTRACE_SYSCALL, self.tid)
            while self.wait_stop(PTRACE_SYSCALL) != _SYSCALL_STOP:
                _ptrace(PTRACE_SYSCALL, self.tid)
        return _signed(self.registers().rax)

    def send_held_signals(self) -> None:
        for signum in self.held_signals:
            _libc.syscall(
                ctypes.c_long(_SYS_TGKILL),
                ctypes.c_long(self.tgid),
                ctypes.c_long(self.tid),
                ctypes.c_long(signum),
            )
        self.held_signals.clear()


def _read_tracee(tid: int, address: int, size: int) -> bytes:
    fd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, address)
    finally:
        os.close(fd)


def change_directory(notification: Notification, directory: int) -> bool:
    """Move the tracee thread of ``notification`` (waiting in a trapped ``chdir``) into
    ``directory`` (a descriptor of the supervisor, not ``O_PATH``: the kernel does not
    pass those to a tracee) and answer the ``chdir`` with
    ``fchdir``'s result. Returns ``False`` when the tracee went away meanwhile.

    Raises ``OSError`` before anything happened when the thread cannot be traced (EPERM:
    another tracer, Yama) or the architecture is not supported (ENOSYS); the caller then
    answers the notification.
    """
    if not supported():
        raise OSError(errno.ENOSYS, f"chdir emulation is not supported on {platform.machine()}")
    tracer = _Tracer(notification.pid, notification.tgid)
    tracer.seize()
    stopped = False
    saved: _Registers | None = None
    try:
        try:
            number = notification.add_fd(directory, cloexec=True)
        except ProcessLookupError:
            return False
        except OSError as error:  # a full descriptor table, say
            notification.respond_errno(error.errno or errno.EMFILE)
            return True
        tracer.interrupt()
        notification.respond_value(0)  # False on old kernels (the wait was interrupted)
        tracer.wait_stop(PTRACE_CONT)
        stopped = True
        saved = tracer.registers()
        at = saved.rip - len(_SYSCALL_INSTRUCTION)
        result = -errno.EIO
        if _read_tracee(tracer.tid, at, 2) == _SYSCALL_INSTRUCTION:
            result = tracer.run_syscall(at, _SYS_FCHDIR, number)
            tracer.run_syscall(at, _SYS_CLOSE, number)
        saved.rax = result & _U64
        saved.orig_rax = _U64  # no restart of the chdir
        tracer.set_registers(saved)
        saved = None
        return True
    except TraceeGone:
        return False
    finally:
        _finish(notification, tracer, stopped, saved)


def _finish(
    notification: Notification, tracer: _Tracer, stopped: bool, saved: _Registers | None
) -> None:
    """Leave the thread as it was (a failed ``chdir`` if the change failed half-way),
    untraced, with its held-back signals."""
    if not tracer.attached:
        tracer.send_held_signals()
        return
    if not notification.answered:
        with contextlib.suppress(OSError):
            notification.respond_errno(errno.EIO)
    with contextlib.suppress(OSError, TraceeGone):
        if not stopped:
            # Only a stopped thread can be detached.
            tracer.interrupt()
            tracer.wait_stop(PTRACE_CONT)
        if saved is not None:
            saved.rax = -errno.EIO & _U64
            saved.orig_rax = _U64
            tracer.set_registers(saved)
    # Sent while the thread is still stopped, they are pending when it resumes and reach
    # it before it returns to its program, as they would have.
    tracer.send_held_signals()
    tracer.detach()
