"""Deciding, per absolute path, whether a file operation is local or remote.

mirrord's order: the user's ``read_write``, ``read_only`` and ``local`` patterns, then the
built-in always-remote (read-only) list, then the built-in always-local list, then the
mode. Patterns are case-insensitive regexes searched anywhere in the path (mirrord uses
``RegexSet::is_match``, so ``^`` is needed to anchor).
"""

from __future__ import annotations

import enum
import os
import re
import sys
import tempfile
from collections.abc import Iterable

import attrs

from mirrord_fs.config import FsConfig, FsMode


class Decision(enum.Enum):
    """Where an operation on a path goes."""

    LOCAL = "local"
    REMOTE = "remote"
    #: A write to a path that is only readable remotely (``read`` mode): refused, as
    #: mirrord does, instead of silently writing a local file the user did not mean.
    READ_ONLY = "read-only"


#: Paths that stay local whatever the mode: the local toolchain, interpreters and their
#: libraries, the system, the user's home and temporary files, devices, /proc and /sys.
BUILTIN_LOCAL = (
    r"^.+\.so$",
    r"^.+\.d$",
    r"^.+\.pyc$",
    r"^.+\.py$",
    r"^.+\.js$",
    r"^.+\.pth$",
    r"^.+\.plist$",
    r"^.*venv\.cfg$",
    r"^/proc/.*$",
    r"^/sys/.*$",
    r"^/lib/.*$",
    r"^/lib64/.*$",
    r"^/etc/.*$",
    r"^/usr/.*$",
    r"^/bin/.*$",
    r"^/sbin/.*$",
    r"^/dev/.*$",
    r"^/opt/.*$",
    r"^/home/.*$",
    r"^/tmp/.*$",
    r"^/snap/.*$",
    r"^/nix/.*$",
    r".+\.asdf/.+",
    r"^.*clr-.*-pipe-.*$",
    r"^.*\.pdb$",
    r"^.*\.dll$",
    r".*(^|/)jvm\.cfg$",
    r"^.*/package\.json$",
    r".*/\.tool-versions$",
    r"^/$",
)

#: Paths read remotely even where the built-in local list would keep them local: name
#: resolution files and cloud credentials belong to the target's identity.
BUILTIN_REMOTE_READ_ONLY = (
    r"\.aws/cli/cache/.+\.json$",
    r"\.aws/credentials$",
    r"\.aws/config$",
    r"^/etc/resolv\.conf$",
    r"^/etc/hosts$",
    r"^/etc/hostname$",
)


def _compile(patterns: Iterable[str]) -> re.Pattern[str] | None:
    patterns = list(patterns)
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


def _local_roots(cwd: str, executable: str) -> list[str]:
    """Directories of this machine a local program needs whatever the mode: the project
    (working directory), the Python installation ``mirrord`` runs on (a virtualenv and its
    base interpreter), the running executable's directory, the user's home."""
    roots = [cwd, os.path.dirname(executable), os.path.dirname(os.path.realpath(executable))]
    roots += [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    roots.append(os.path.expanduser("~"))
    return sorted({os.path.normpath(root) for root in roots if root.startswith("/")} - {"/"})


def _run_local_patterns(cwd: str, executable: str) -> list[str]:
    # Project runners (``python app.py``, ``node app.js``) open files below the working
    # directory and their own binary and libraries; those must come from the developer's
    # machine. The roots' ancestors stay local too (exactly: ``/work``, not ``/work/x``):
    # resolving a path below a root lstat()s each of them.
    patterns = [f"^{re.escape(tempfile.gettempdir())}", f"^{re.escape(executable)}$"]
    ancestors: set[str] = set()
    for root in _local_roots(cwd, executable):
        patterns.append(f"^{re.escape(root)}(/.*)?$")
        parent = os.path.dirname(root)
        while parent != "/":
            ancestors.add(parent)
            parent = os.path.dirname(parent)
    patterns += [f"^{re.escape(ancestor)}$" for ancestor in sorted(ancestors)]
    return patterns


@attrs.frozen
class PathPolicy:
    """The compiled decision rules of one ``feature.fs`` section for one run."""

    mode: FsMode
    read_write: re.Pattern[str] | None
    read_only: re.Pattern[str] | None
    local: re.Pattern[str] | None
    builtin_remote_read_only: re.Pattern[str]
    builtin_local: re.Pattern[str]

    @classmethod
    def from_config(
        cls, config: FsConfig, cwd: str | None = None, executable: str | None = None
    ) -> PathPolicy:
        """Compile ``config``; ``cwd``/``executable`` are the local project's (kept local)."""
        run_local = _run_local_patterns(cwd or os.getcwd(), executable or sys.executable)
        return cls(
            mode=config.mode,
            read_write=_compile(config.read_write),
            read_only=_compile(config.read_only),
            local=_compile(config.local),
            builtin_remote_read_only=_compile(BUILTIN_REMOTE_READ_ONLY),  # type: ignore[arg-type]
            builtin_local=_compile((*BUILTIN_LOCAL, *run_local)),  # type: ignore[arg-type]
        )

    @property
    def active(self) -> bool:
        """Whether any path can be remote (``local`` mode traps nothing)."""
        return self.mode is not FsMode.LOCAL

    def decide(self, path: str, write: bool) -> Decision:
        """Where an operation on the absolute ``path`` goes (``write``: opened for writing)."""
        if self.mode is FsMode.LOCAL:
            return Decision.LOCAL
        if self.read_write is not None and self.read_write.search(path):
            return Decision.REMOTE
        if self.read_only is not None and self.read_only.search(path):
            return Decision.LOCAL if write else Decision.REMOTE
        if self.local is not None and self.local.search(path):
            return Decision.LOCAL
        if not write and self.builtin_remote_read_only.search(path):
            return Decision.REMOTE
        if self.builtin_local.search(path):
            return Decision.LOCAL
        if self.mode is FsMode.WRITE:
            return Decision.REMOTE
        if self.mode is FsMode.READ:
            return Decision.READ_ONLY if write else Decision.REMOTE
        return Decision.LOCAL
