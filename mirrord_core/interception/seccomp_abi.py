"""The kernel's seccomp ABI: constants, structures, ioctl numbers and syscall numbers.

Everything here is data; the modules that talk to the kernel import it. Values come from
``<linux/seccomp.h>``, ``<linux/filter.h>``, ``<linux/audit.h>`` and the per-architecture
``unistd`` tables (checked against the installed kernel headers by the tests).
"""

from __future__ import annotations

import ctypes
import platform
import struct

# -- seccomp(2) operations and filter flags -------------------------------------------------

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_GET_NOTIF_SIZES = 3

SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 1 << 4
#: Linux ≥ 5.19: once the supervisor has received a notification, only fatal signals
#: interrupt the trapped syscall (Go's preemption signals would otherwise restart it forever).
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5

# -- filter return values ------------------------------------------------------------------

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_ALLOW = 0x7FFF0000

# -- user notification ---------------------------------------------------------------------

SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1 << 0
SECCOMP_ADDFD_FLAG_SETFD = 1 << 0
#: Linux ≥ 5.14: install the fd and make its number the syscall's result in one step.
SECCOMP_ADDFD_FLAG_SEND = 1 << 1
#: Linux ≥ 6.6: wake the supervisor on the tracee's CPU (a trapped syscall costs ~8 µs
#: instead of ~50 µs on this kind of machine).
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1 << 0

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

# -- architectures -------------------------------------------------------------------------

_AUDIT_ARCH_64BIT = 0x80000000
_AUDIT_ARCH_LE = 0x40000000
AUDIT_ARCH_X86_64 = 62 | _AUDIT_ARCH_64BIT | _AUDIT_ARCH_LE  # EM_X86_64
AUDIT_ARCH_AARCH64 = 183 | _AUDIT_ARCH_64BIT | _AUDIT_ARCH_LE  # EM_AARCH64

#: x86_64 syscall numbers with this bit set belong to the x32 ABI.
X32_SYSCALL_BIT = 0x40000000

# -- structures ----------------------------------------------------------------------------


class SeccompData(ctypes.Structure):
    """``struct seccomp_data``: what the BPF program (and the supervisor) sees."""

    _fields_ = [
        ("nr", ctypes.c_int),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
    ]


class SeccompNotif(ctypes.Structure):
    """``struct seccomp_notif`` (80 bytes); must be all zeros when handed to RECV."""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("data", SeccompData),
    ]


class SeccompNotifResp(ctypes.Structure):
    """``struct seccomp_notif_resp`` (24 bytes): the answer to one notification."""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("val", ctypes.c_int64),
        ("error", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


class SeccompNotifAddfd(ctypes.Structure):
    """``struct seccomp_notif_addfd`` (24 bytes): an fd to install in the tracee."""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("srcfd", ctypes.c_uint32),
        ("newfd", ctypes.c_uint32),
        ("newfd_flags", ctypes.c_uint32),
    ]


class SeccompNotifSizes(ctypes.Structure):
    """``struct seccomp_notif_sizes``: the sizes the running kernel uses."""

    _fields_ = [
        ("seccomp_notif", ctypes.c_uint16),
        ("seccomp_notif_resp", ctypes.c_uint16),
        ("seccomp_data", ctypes.c_uint16),
    ]


class SockFilter(ctypes.Structure):
    """``struct sock_filter``: one classic BPF instruction."""

    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    """``struct sock_fprog``: a BPF program as seccomp(2) takes it."""

    _fields_ = [
        ("len", ctypes.c_uint16),
        ("filter", ctypes.POINTER(SockFilter)),
    ]


#: ``struct seccomp_notif`` as the supervisor unpacks it: id, pid, flags, nr, arch,
#: instruction pointer, six arguments (native byte order, no padding: the C layout has none).
NOTIF_FORMAT = struct.Struct("=QIIiIQ6Q")
RESP_FORMAT = struct.Struct("=QqiI")
ADDFD_FORMAT = struct.Struct("=QIIII")
ID_FORMAT = struct.Struct("=Q")

# Offsets of seccomp_data fields, for BPF loads.
DATA_OFFSET_NR = SeccompData.nr.offset
DATA_OFFSET_ARCH = SeccompData.arch.offset

# -- ioctls --------------------------------------------------------------------------------

_IOC_WRITE = 1
_IOC_READ = 2
_SECCOMP_IOC_MAGIC = ord("!")


def _ioc(direction: int, number: int, size: int) -> int:
    """``_IOC()`` of the generic ioctl encoding (x86_64 and aarch64 share it)."""
    return (direction << 30) | (size << 16) | (_SECCOMP_IOC_MAGIC << 8) | number


SECCOMP_IOCTL_NOTIF_RECV = _ioc(_IOC_READ | _IOC_WRITE, 0, ctypes.sizeof(SeccompNotif))
SECCOMP_IOCTL_NOTIF_SEND = _ioc(_IOC_READ | _IOC_WRITE, 1, ctypes.sizeof(SeccompNotifResp))
SECCOMP_IOCTL_NOTIF_ID_VALID = _ioc(_IOC_WRITE, 2, 8)
SECCOMP_IOCTL_NOTIF_ADDFD = _ioc(_IOC_WRITE, 3, ctypes.sizeof(SeccompNotifAddfd))
#: Its argument is the flags value itself, not a pointer.
SECCOMP_IOCTL_NOTIF_SET_FLAGS = _ioc(_IOC_WRITE, 4, 8)

# -- syscall numbers -----------------------------------------------------------------------

#: The syscalls handlers may ask to trap, per architecture. aarch64 has only the ``*at``
#: forms of the path syscalls; a name missing on the running architecture is simply not
#: trapped (the program cannot call it there).
SYSCALL_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {
        "read": 0,
        "write": 1,
        "open": 2,
        "close": 3,
        "stat": 4,
        "fstat": 5,
        "lstat": 6,
        "access": 21,
        "getpid": 39,
        "socket": 41,
        "connect": 42,
        "accept": 43,
        "sendto": 44,
        "recvfrom": 45,
        "sendmsg": 46,
        "recvmsg": 47,
        "shutdown": 48,
        "bind": 49,
        "listen": 50,
        "getsockname": 51,
        "getpeername": 52,
        "setsockopt": 54,
        "getsockopt": 55,
        "execve": 59,
        "uname": 63,
        "truncate": 76,
        "ftruncate": 77,
        "getcwd": 79,
        "chdir": 80,
        "fchdir": 81,
        "rename": 82,
        "mkdir": 83,
        "rmdir": 84,
        "creat": 85,
        "link": 86,
        "unlink": 87,
        "symlink": 88,
        "readlink": 89,
        "chmod": 90,
        "fchmod": 91,
        "chown": 92,
        "fchown": 93,
        "lchown": 94,
        "utime": 132,
        "mknod": 133,
        "statfs": 137,
        "fstatfs": 138,
        "getxattr": 191,
        "lgetxattr": 192,
        "listxattr": 194,
        "llistxattr": 195,
        "getdents64": 217,
        "utimes": 235,
        "openat": 257,
        "mkdirat": 258,
        "mknodat": 259,
        "fchownat": 260,
        "futimesat": 261,
        "newfstatat": 262,
        "unlinkat": 263,
        "renameat": 264,
        "linkat": 265,
        "symlinkat": 266,
        "readlinkat": 267,
        "fchmodat": 268,
        "faccessat": 269,
        "utimensat": 280,
        "accept4": 288,
        "sendmmsg": 307,
        "renameat2": 316,
        "seccomp": 317,
        "execveat": 322,
        "statx": 332,
        "pidfd_open": 434,
        "openat2": 437,
        "pidfd_getfd": 438,
        "faccessat2": 439,
        "fchmodat2": 452,
    },
    "aarch64": {
        "getcwd": 17,
        "getxattr": 8,
        "lgetxattr": 9,
        "listxattr": 11,
        "llistxattr": 12,
        "mknodat": 33,
        "mkdirat": 34,
        "unlinkat": 35,
        "symlinkat": 36,
        "linkat": 37,
        "renameat": 38,
        "statfs": 43,
        "fstatfs": 44,
        "truncate": 45,
        "ftruncate": 46,
        "faccessat": 48,
        "chdir": 49,
        "fchdir": 50,
        "fchmod": 52,
        "fchmodat": 53,
        "fchownat": 54,
        "fchown": 55,
        "openat": 56,
        "close": 57,
        "getdents64": 61,
        "read": 63,
        "write": 64,
        "readlinkat": 78,
        "newfstatat": 79,
        "fstat": 80,
        "utimensat": 88,
        "uname": 160,
        "getpid": 172,
        "socket": 198,
        "bind": 200,
        "listen": 201,
        "accept": 202,
        "connect": 203,
        "getsockname": 204,
        "getpeername": 205,
        "sendto": 206,
        "recvfrom": 207,
        "setsockopt": 208,
        "getsockopt": 209,
        "shutdown": 210,
        "sendmsg": 211,
        "recvmsg": 212,
        "execve": 221,
        "accept4": 242,
        "sendmmsg": 269,
        "renameat2": 276,
        "seccomp": 277,
        "execveat": 281,
        "statx": 291,
        "pidfd_open": 434,
        "openat2": 437,
        "pidfd_getfd": 438,
        "faccessat2": 439,
        "fchmodat2": 452,
    },
}

AUDIT_ARCH: dict[str, int] = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}

#: Every name some architecture knows: a handler naming anything else has a typo.
KNOWN_SYSCALLS: frozenset[str] = frozenset(
    name for table in SYSCALL_NUMBERS.values() for name in table
)


class UnsupportedArchitecture(RuntimeError):
    """The interception engine has no syscall table for this machine."""


def machine() -> str:
    """The running architecture's name as the tables spell it (``x86_64``, ``aarch64``)."""
    name = platform.machine()
    return "aarch64" if name == "arm64" else name


def syscall_table(arch: str | None = None) -> dict[str, int]:
    """Syscall name → number for ``arch`` (default: the running one)."""
    arch = arch or machine()
    try:
        return SYSCALL_NUMBERS[arch]
    except KeyError:
        raise UnsupportedArchitecture(
            f"syscall interception supports {', '.join(SYSCALL_NUMBERS)}, not {arch}"
        ) from None


def syscall_names(arch: str | None = None) -> dict[int, str]:
    """Syscall number → name for ``arch`` (default: the running one)."""
    return {number: name for name, number in syscall_table(arch).items()}
