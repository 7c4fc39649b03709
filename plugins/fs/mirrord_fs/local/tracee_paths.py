"""The path arguments of a trapped file syscall, made absolute as the tracee means them.

A path syscall names a file by a string that is absolute, or relative to the tracee's
working directory (``AT_FDCWD``) or to a directory descriptor. The fs plugin decides per
*absolute* path, so relative paths are joined to ``/proc/TID/cwd`` or ``/proc/TID/fd/N``.
A base directory that lies on the session's mount (a directory the tracee opened remotely,
then used with ``openat``) is a directory *of the target*: the path is the target's.
"""

from __future__ import annotations

import os
import posixpath

import attrs

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_EACCESS = 0x200
AT_EMPTY_PATH = 0x1000
AT_STATX_SYNC_TYPE = 0x6000

_DELETED = " (deleted)"


def signed32(value: int) -> int:
    """A raw register as the C ``int`` it carries (a dirfd, ``AT_FDCWD``)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def signed64(value: int) -> int:
    """A raw register as a C ``long`` / ``off_t``."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value & (1 << 63) else value


def normalize(path: str) -> str:
    """``path`` (absolute) with ``.``/``..`` and repeated slashes resolved lexically;
    ``..`` stops at ``/``."""
    if "/." not in path and "//" not in path and not path.endswith("/"):
        return path  # the common case, already normal (and cheap to tell)
    return "/" + posixpath.normpath("/" + path).lstrip("/")


@attrs.define(slots=True, eq=True)
class TraceePath:
    """One path argument, resolved.

    ``path`` is the normalized absolute path the policy decides on. ``on_mount``: the
    base directory is on the session's mount, so ``path`` is already a path of the target.
    ``exact`` is the path to open inside the target with ``RESOLVE_IN_ROOT`` (``..`` then
    follows the target's symlinks as the kernel would); ``None`` when the base is a local
    directory, whose own components mean nothing in the target (``path`` is used).
    """

    path: str
    on_mount: bool = False
    exact: str | None = None

    @property
    def in_target(self) -> str:
        """What to resolve inside the target's root."""
        return self.exact if self.exact is not None else self.path


def base_directory(tid: int, dirfd: int) -> str | None:
    """The directory a relative path of task ``tid`` starts from; ``None`` if unknown
    (a bad descriptor: the kernel answers the syscall itself)."""
    link = f"/proc/{tid}/cwd" if dirfd == AT_FDCWD else f"/proc/{tid}/fd/{dirfd}"
    try:
        target = os.readlink(link)
    except OSError:
        return None
    if not target.startswith("/") or target.endswith(_DELETED):
        return None  # a socket, a pipe, an anonymous inode or a removed directory
    return target


def resolve(tid: int, dirfd: int, raw: bytes, mount_prefix: str | None) -> TraceePath | None:
    """The absolute path ``raw`` names for task ``tid``; ``None`` when the syscall should
    simply run (empty path: the call acts on ``dirfd`` itself; unknown base)."""
    if not raw:
        return None
    text = os.fsdecode(raw)
    if text.startswith("/"):
        return TraceePath(normalize(text), exact=text)
    base = base_directory(tid, dirfd)
    if base is None:
        return None
    if mount_prefix is not None and (base == mount_prefix or base.startswith(mount_prefix + "/")):
        remote_base = base[len(mount_prefix) :] or "/"
        joined = remote_base.rstrip("/") + "/" + text
        return TraceePath(normalize(joined), on_mount=True, exact=joined)
    return TraceePath(normalize(base.rstrip("/") + "/" + text))


def tracee_umask(tid: int) -> int:
    """Task ``tid``'s umask (``/proc/TID/status``), 0o022 if unreadable."""
    try:
        with open(f"/proc/{tid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
