"""ctypes bindings for the kernel calls the engine makes that Python 3.11 does not wrap.

``seccomp(2)``, ``prctl(2)``, ``ioctl(2)`` with a pointer argument whose *return value*
matters (``fcntl.ioctl`` returns the buffer instead) and ``pidfd_getfd(2)``. Each raises
:class:`OSError` with the errno, like the ``os`` module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from mirrord_core.interception import seccomp_abi as abi

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

_ioctl = _libc.ioctl
_ioctl.restype = ctypes.c_int
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


def _raise_errno() -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))


def seccomp(operation: int, flags: int, args: int | None) -> int:
    """``seccomp(operation, flags, args)``; ``args`` is an address (or ``None``)."""
    result = _syscall(
        ctypes.c_long(abi.syscall_table()["seccomp"]),
        ctypes.c_uint(operation),
        ctypes.c_uint(flags),
        ctypes.c_void_p(args),
    )
    if result == -1:
        _raise_errno()
    return int(result)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(option, …)``."""
    result = _prctl(option, arg2, arg3, arg4, arg5)
    if result == -1:
        _raise_errno()
    return int(result)


def ioctl(fd: int, request: int, argument: object) -> int:
    """``ioctl(fd, request, argument)`` returning the call's result.

    ``argument`` is anything ctypes passes as a pointer (a ctypes buffer or structure,
    ``bytes``) or an ``int`` passed as the value itself.
    """
    result = _ioctl(fd, request, argument)
    if result == -1:
        _raise_errno()
    return int(result)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """A duplicate of fd ``target_fd`` of the process ``pidfd`` refers to (close-on-exec).

    The duplicate shares the open file description: for a socket, connecting it connects
    the tracee's socket.
    """
    result = _syscall(
        ctypes.c_long(abi.syscall_table()["pidfd_getfd"]),
        ctypes.c_int(pidfd),
        ctypes.c_int(target_fd),
        ctypes.c_uint(0),
    )
    if result == -1:
        _raise_errno()
    return int(result)


_sigemptyset = _libc.sigemptyset
_sigemptyset.argtypes = [ctypes.c_void_p]
_sigaddset = _libc.sigaddset
_sigaddset.argtypes = [ctypes.c_void_p, ctypes.c_int]
_signalfd = _libc.signalfd
_signalfd.restype = ctypes.c_int
_signalfd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]

SFD_CLOEXEC = os.O_CLOEXEC
SFD_NONBLOCK = os.O_NONBLOCK
#: ``struct signalfd_siginfo`` is 128 bytes; the engine reads signo, errno, code, pid.
SIGNALFD_SIGINFO_SIZE = 128


def signalfd(signals: list[int]) -> int:
    """A non-blocking, close-on-exec signalfd for ``signals`` (block them first)."""
    mask = ctypes.create_string_buffer(128)  # glibc's sigset_t
    _sigemptyset(mask)
    for signum in signals:
        _sigaddset(mask, signum)
    result = _signalfd(-1, mask, SFD_CLOEXEC | SFD_NONBLOCK)
    if result == -1:
        _raise_errno()
    return int(result)
