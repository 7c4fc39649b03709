"""``pid/PID`` targets: a process (or a container's process) on this machine."""

from __future__ import annotations

from pathlib import Path

from mirrord_core.target_model import ResolvedTarget
from mirrord_core.user_errors import UserError


class TargetError(UserError):
    """The target cannot be used; the message says why and what to do."""


def resolve_pid_target(pid: int, proc: Path = Path("/proc")) -> ResolvedTarget:
    """A resolved local target for process ``pid``; it must exist and be inspectable."""
    entry = proc / str(pid)
    if not entry.is_dir():
        raise TargetError(f"target pid/{pid}: no such process on this machine")
    try:
        name = (entry / "comm").read_text().strip()
        (entry / "ns" / "net").stat()
    except PermissionError:
        raise TargetError(
            f"target pid/{pid}: permission denied; targeting another user's process needs root"
        ) from None
    except FileNotFoundError:
        raise TargetError(f"target pid/{pid}: the process exited") from None
    return ResolvedTarget(kind="pid", name=name or str(pid), pid=pid)
