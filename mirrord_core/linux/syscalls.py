"""Raw ``syscall(2)`` access with a per-architecture number table.

Python 3.11 has no ``os.setns``, ``os.pidfd_getfd`` or ``openat2``; these go through
libc's ``syscall()`` with the numbers of the running architecture.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {
        "setns": 308,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "memfd_create": 319,
        "pidfd_open": 434,
        "openat2": 437,
        "pidfd_getfd": 438,
    },
    "aarch64": {
        "setns": 268,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "memfd_create": 279,
        "pidfd_open": 434,
        "openat2": 437,
        "pidfd_getfd": 438,
    },
}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class UnsupportedArchitecture(OSError):
    """The running architecture is not in the syscall table."""


def syscall_number(name: str) -> int:
    """The number of syscall ``name`` on this machine's architecture."""
    machine = platform.machine()
    try:
        return _NUMBERS[machine][name]
    except KeyError:
        raise UnsupportedArchitecture(f"no syscall number for {name} on {machine}") from None


def syscall(name: str, *args: int | ctypes._SimpleCData | ctypes.Array | ctypes._Pointer) -> int:  # type: ignore[type-arg]
    """Call syscall ``name``; returns its result or raises :class:`OSError` with its errno."""
    result = _libc.syscall(ctypes.c_long(syscall_number(name)), *args)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result
