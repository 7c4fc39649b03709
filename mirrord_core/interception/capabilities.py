"""What the running kernel offers for seccomp user notification.

The engine needs Linux ≥ 5.14 (user notification with ``SECCOMP_ADDFD_FLAG_SEND``). Two
later additions make it faster or more robust and are used when present:
``SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`` (5.19) and
``SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`` (6.6).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import re

import attrs

from mirrord_core.interception import kernel
from mirrord_core.interception import seccomp_abi as abi
from mirrord_core.user_errors import UserError

log = logging.getLogger(__name__)

MINIMUM_KERNEL = (5, 14)
WAIT_KILLABLE_RECV_KERNEL = (5, 19)
SYNC_WAKE_UP_KERNEL = (6, 6)


class InterceptionUnsupported(UserError):
    """This machine cannot run the interception engine; the message says why."""


@attrs.frozen
class KernelCapabilities:
    """The seccomp features of the running kernel."""

    #: ``uname -r``.
    release: str
    #: ``(major, minor)`` parsed from the release.
    version: tuple[int, int]
    #: ``SECCOMP_RET_USER_NOTIF`` is available (seccomp filters enabled, kernel ≥ 5.0).
    user_notif: bool
    #: ``SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`` is accepted (probed, not guessed).
    wait_killable_recv: bool
    #: ``SECCOMP_IOCTL_NOTIF_SET_FLAGS`` is expected to work (≥ 6.6; the supervisor
    #: confirms on its listener and says so at debug level when it does not).
    sync_wake_up: bool
    #: ``SECCOMP_ADDFD_FLAG_SEND`` is available (≥ 5.14).
    addfd_send: bool
    #: Sizes of ``seccomp_notif``, ``seccomp_notif_resp``, ``seccomp_data`` in this kernel.
    notif_sizes: tuple[int, int, int]

    @property
    def recv_ends_with_tracees(self) -> bool:
        """Whether a waiting ``SECCOMP_IOCTL_NOTIF_RECV`` returns (ENOENT) once no task
        uses the filter: Linux ≥ 6.6, which reworked the wait along with SYNC_WAKE_UP.
        Earlier, the supervisor must wait in ``poll`` to learn that."""
        return self.version >= SYNC_WAKE_UP_KERNEL

    @property
    def filter_flags(self) -> int:
        """The ``seccomp(SECCOMP_SET_MODE_FILTER)`` flags to install the filter with."""
        flags = abi.SECCOMP_FILTER_FLAG_NEW_LISTENER
        if self.wait_killable_recv:
            flags |= abi.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
        return flags

    def problems(self) -> list[str]:
        """Why the engine cannot run here (empty when it can)."""
        found = []
        if self.version < MINIMUM_KERNEL:
            found.append(
                f"Linux {'.'.join(map(str, MINIMUM_KERNEL))} or newer is needed "
                f"(this is {self.release})"
            )
        if not self.user_notif:
            found.append(
                "the kernel has no seccomp user notification (CONFIG_SECCOMP_FILTER), "
                "or a seccomp policy around mirrord forbids it"
            )
        ours = (
            ctypes.sizeof(abi.SeccompNotif),
            ctypes.sizeof(abi.SeccompNotifResp),
            ctypes.sizeof(abi.SeccompData),
        )
        if self.user_notif and any(k < o for k, o in zip(self.notif_sizes, ours, strict=True)):
            found.append(f"unexpected seccomp structure sizes {self.notif_sizes}")
        return found

    def require(self) -> None:
        """Raise :class:`InterceptionUnsupported` unless the engine can run here."""
        problems = self.problems()
        if problems:
            raise InterceptionUnsupported(
                "mirrord cannot intercept the command's system calls: " + "; ".join(problems)
            )


def parse_version(release: str) -> tuple[int, int]:
    """``(major, minor)`` of a kernel release such as ``6.18.44-fc-v657``."""
    match = re.match(r"(\d+)\.(\d+)", release)
    if not match:
        return (0, 0)
    return (int(match.group(1)), int(match.group(2)))


def _user_notif_available() -> bool:
    action = ctypes.c_uint32(abi.SECCOMP_RET_USER_NOTIF)
    try:
        kernel.seccomp(abi.SECCOMP_GET_ACTION_AVAIL, 0, ctypes.addressof(action))
    except OSError as error:
        log.debug("SECCOMP_RET_USER_NOTIF unavailable: %s", error)
        return False
    return True


def _filter_flags_accepted(flags: int) -> bool:
    # With a NULL program seccomp() validates the flags first (EINVAL when unknown), then
    # fails copying the program (EFAULT): nothing is installed either way.
    try:
        kernel.seccomp(abi.SECCOMP_SET_MODE_FILTER, flags, None)
    except OSError as error:
        return error.errno == errno.EFAULT
    raise AssertionError("seccomp() accepted a NULL filter")  # pragma: no cover


def _notif_sizes() -> tuple[int, int, int]:
    sizes = abi.SeccompNotifSizes()
    try:
        kernel.seccomp(abi.SECCOMP_GET_NOTIF_SIZES, 0, ctypes.addressof(sizes))
    except OSError:
        return (0, 0, 0)
    return (sizes.seccomp_notif, sizes.seccomp_notif_resp, sizes.seccomp_data)


@functools.cache
def probe() -> KernelCapabilities:
    """Probe the running kernel (once per process)."""
    release = os.uname().release
    version = parse_version(release)
    user_notif = _user_notif_available()
    killable = user_notif and _filter_flags_accepted(
        abi.SECCOMP_FILTER_FLAG_NEW_LISTENER | abi.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    )
    capabilities = KernelCapabilities(
        release=release,
        version=version,
        user_notif=user_notif,
        wait_killable_recv=killable,
        sync_wake_up=version >= SYNC_WAKE_UP_KERNEL,
        addfd_send=version >= MINIMUM_KERNEL,
        notif_sizes=_notif_sizes() if user_notif else (0, 0, 0),
    )
    if not killable:
        log.debug(
            "kernel %s lacks SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (Linux ≥ 5.19): signals "
            "may interrupt and restart trapped syscalls",
            release,
        )
    return capabilities
