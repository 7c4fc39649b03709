"""Entering another process's namespaces with ``setns(2)``.

``setns(CLONE_NEWNET)`` changes only the calling thread (and what it creates afterwards):
the agent binds its listener first, then enters the target's network namespace, so the
listener stays reachable from where the client connects.
"""

from __future__ import annotations

import ctypes
import os

from mirrord_core.linux.syscalls import syscall

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000


def setns(fd: int, nstype: int = 0) -> None:
    """Move the calling thread into the namespace ``fd`` refers to."""
    syscall("setns", ctypes.c_int(fd), ctypes.c_int(nstype))


def enter_network_namespace(pid: int) -> None:
    """Move the calling thread into the network namespace of process ``pid``."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, CLONE_NEWNET)
    finally:
        os.close(fd)


def same_network_namespace(pid_a: int | str, pid_b: int | str) -> bool:
    """Whether two processes (or ``"self"``) share a network namespace."""
    return os.stat(f"/proc/{pid_a}/ns/net").st_ino == os.stat(f"/proc/{pid_b}/ns/net").st_ino
