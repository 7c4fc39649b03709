"""``openat2(2)`` with ``RESOLVE_IN_ROOT``: opening paths confined to a directory.

Every path component, ``..`` and symlink (absolute or relative) is resolved as if the
directory were ``/``, so nothing outside it can be reached — the kernel enforces it,
races included.
"""

from __future__ import annotations

import ctypes
import os

from mirrord_core.linux.syscalls import syscall

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """Open ``path`` relative to ``dirfd`` with ``resolve`` flags; returns a new fd."""
    how = _OpenHow(
        flags=flags | os.O_CLOEXEC, mode=mode if flags & os.O_CREAT else 0, resolve=resolve
    )
    encoded = os.fsencode(path)
    return syscall(
        "openat2",
        ctypes.c_int(dirfd),
        ctypes.c_char_p(encoded),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )


#: How often an open is retried when the kernel reports a ``..`` race (EAGAIN).
OPEN_ATTEMPTS = 64


def open_in_root(root_fd: int, path: str, flags: int, mode: int = 0o666) -> int:
    """Open ``path`` inside the directory ``root_fd`` as if it were ``/``.

    Magic links (``/proc/self/root``, ``/proc/PID/fd/N``) are refused too: inside the
    target they would point at objects of the agent, not of the target.

    With ``RESOLVE_IN_ROOT`` the kernel answers EAGAIN when a rename anywhere on the system
    races the resolution of a ``..`` component (it cannot prove the ``..`` stayed inside);
    the man page says to retry, so a pod renaming files in a loop cannot make opens fail
    spuriously.
    """
    resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
    for _ in range(OPEN_ATTEMPTS - 1):
        try:
            return openat2(root_fd, path, flags, mode, resolve)
        except BlockingIOError:
            continue
    return openat2(root_fd, path, flags, mode, resolve)
