"""The shape of the handler objects feature hooks return to the interception engine.

Hooks that sit on a per-syscall path are called once per session and return these
objects; the engine then calls the objects directly for every trapped syscall.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class SyscallHandler(Protocol):
    """Handles some trapped syscalls of the user's process tree."""

    #: Names of the syscalls this handler needs trapped (``"openat"``, ``"connect"`` …).
    syscalls: frozenset[str]

    def handle(self, notification: Any) -> Any:
        """Answer one trapped syscall (or let it continue); never blocks on the network."""
        ...
