"""Locating the external programs the sandbox drives, and checking privileges.

Everything the sandbox does outside the standard library goes through these
binaries; finding them up front turns a confusing failure halfway through a
build into one message that names the Debian package to install.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import SandboxError

# Root's PATH does not always contain the sbin directories (e.g. under `su`
# without `-`), yet that is where `ip`, `chroot` and `dnsmasq` live.
_EXTRA_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

BUSYBOX_ENV = "MIRRORD_SANDBOX_BUSYBOX"
DNSMASQ_ENV = "MIRRORD_SANDBOX_DNSMASQ"

_PT_INTERP = 3


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the programs a sandbox needs, plus busybox's applets."""

    ip: str
    unshare: str
    chroot: str
    busybox: str
    dnsmasq: str
    applets: frozenset[str]


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "")
    search = os.pathsep.join([path, *_EXTRA_DIRS]) if path else os.pathsep.join(_EXTRA_DIRS)
    return shutil.which(name, path=search)


def _require(name: str, package: str) -> str:
    found = _which(name)
    if found is None:
        raise SandboxError(
            f"`{name}` was not found; install the Debian package {package} "
            f"(apt-get install {package})"
        )
    return found


def is_static_elf(path: str) -> bool:
    """Whether `path` is an ELF executable without a program interpreter.

    A dynamically linked busybox would need the host's shared libraries inside
    every pod root, so only a static one can be copied in on its own.
    """
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF":
            return False
        is64 = header[4] == 2
        endian = "<" if header[5] == 1 else ">"
        if is64:
            (phoff,) = struct.unpack_from(endian + "Q", header, 0x20)
            phentsize, phnum = struct.unpack_from(endian + "HH", header, 0x36)
        else:
            (phoff,) = struct.unpack_from(endian + "I", header, 0x1C)
            phentsize, phnum = struct.unpack_from(endian + "HH", header, 0x2A)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (p_type,) = struct.unpack_from(endian + "I", table, i * phentsize)
        if p_type == _PT_INTERP:
            return False
    return True


def _find_busybox() -> str:
    override = os.environ.get(BUSYBOX_ENV)
    candidates = [override] if override else ["/usr/bin/busybox", "/bin/busybox"]
    if not override and (found := _which("busybox")):
        candidates.append(found)
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            if is_static_elf(candidate):
                return candidate
            raise SandboxError(
                f"{candidate} is dynamically linked and cannot run inside a pod root; "
                "install the Debian package busybox-static (apt-get install busybox-static)"
                + (f" or point {BUSYBOX_ENV} at a static busybox" if not override else "")
            )
    raise SandboxError(
        "busybox was not found; install the Debian package busybox-static "
        "(apt-get install busybox-static)"
    )


def _find_dnsmasq() -> str:
    override = os.environ.get(DNSMASQ_ENV)
    for candidate in [override] if override else ["/usr/sbin/dnsmasq", _which("dnsmasq")]:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SandboxError(
        "dnsmasq was not found; install the Debian package dnsmasq-base "
        "(apt-get install dnsmasq-base)"
    )


def busybox_applets(busybox: str) -> frozenset[str]:
    """The applet names compiled into `busybox` (its `--list` output)."""
    proc = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=False, timeout=10
    )
    if proc.returncode != 0:
        raise SandboxError(f"`{busybox} --list` failed: {proc.stderr.strip()}")
    return frozenset(proc.stdout.split())


def require_root() -> None:
    """Raise SandboxError unless running with effective uid 0."""
    if os.geteuid() != 0:
        raise SandboxError(
            "sandbox pods need root (network namespaces, veth pairs, chroot, a host "
            "route): run as root, e.g. with sudo"
        )


def find_ip() -> str:
    """Path of iproute2's `ip`, the only tool teardown needs."""
    return _require("ip", "iproute2")


def check_prerequisites() -> Tools:
    """Check privileges and locate every tool, or raise one actionable SandboxError."""
    require_root()
    if not Path("/proc/self/ns/net").exists():
        raise SandboxError("this kernel has no network namespaces (/proc/self/ns/net missing)")
    ip = find_ip()
    unshare = _require("unshare", "util-linux")
    chroot = _require("chroot", "coreutils")
    busybox = _find_busybox()
    dnsmasq = _find_dnsmasq()
    return Tools(
        ip=ip,
        unshare=unshare,
        chroot=chroot,
        busybox=busybox,
        dnsmasq=dnsmasq,
        applets=busybox_applets(busybox),
    )
