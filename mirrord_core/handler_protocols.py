"""The shape of the handler objects feature hooks return to the interception engine.

Hooks that sit on a per-syscall path are called once per session and return these
objects; the engine then calls the objects directly for every trapped syscall
(``docs/interception.md`` describes the engine and the answers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mirrord_core.interception.answers import Answer
    from mirrord_core.interception.notification import Notification


@runtime_checkable
class SyscallHandler(Protocol):
    """Handles some trapped syscalls of the user's process tree.

    Optionally also ``continue_paths``: syscall name -> (index of its path argument, the
    paths, as ``bytes``, for which the answer is always ``CONTINUE``). The engine answers
    those itself without calling :meth:`handle` when this is the syscall's only handler
    (``docs/interception.md``, "Paths that always continue").

    Optionally also ``trap_only_if_set``: syscall name -> index of an argument for which
    :meth:`handle` always returns ``None`` when it is zero (``sendto`` without a
    destination address). When every handler of the syscall declares the same, the filter
    traps it only when the argument is set, and the other calls run natively.
    """

    #: Names of the syscalls this handler needs trapped (``"openat"``, ``"connect"`` …).
    #: Only these are trapped; names the running architecture lacks (``open`` on
    #: aarch64) are ignored.
    syscalls: frozenset[str]

    def handle(self, notification: Notification) -> Answer | None:
        """Answer one trapped syscall, or return ``None`` to pass it on.

        Return an :class:`~mirrord_core.interception.answers.Answer` (``CONTINUE``,
        ``Value(v)``, ``Errno(e)``, ``InjectFd(fd)``), ``DEFERRED`` after arranging to
        answer later through ``notification.respond_*`` from another thread, or ``None``
        when the syscall is not this handler's (the next handler for it is asked; if
        none answers, it runs natively). Runs on the notification thread: it must not
        block on the network.
        """
        ...
