"""What a handler answers for one trapped syscall.

A handler's ``handle(notification)`` returns one of these, or ``None`` for "not mine"
(the next handler registered for the syscall is asked; when none answers, the syscall
continues). :data:`DEFERRED` means the handler took charge and will answer later, from
any thread, through the notification's ``respond_*`` / ``inject_fd`` methods.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from mirrord_core.interception.notification import Notification


class Answer:
    """Base of the answers; ``deliver`` sends it to the kernel."""

    def deliver(self, notification: Notification) -> bool:
        """Answer ``notification``; ``False`` when its tracee is no longer waiting."""
        raise NotImplementedError


@attrs.frozen
class Continue(Answer):
    """Let the kernel run the syscall as if it had not been trapped."""

    def deliver(self, notification: Notification) -> bool:
        return notification.respond_continue()


@attrs.frozen
class Value(Answer):
    """The syscall returns ``value`` without running."""

    value: int

    def deliver(self, notification: Notification) -> bool:
        return notification.respond_value(self.value)


@attrs.frozen
class Errno(Answer):
    """The syscall fails with ``errno`` (a positive ``errno`` constant) without running."""

    errno: int

    def __attrs_post_init__(self) -> None:
        if self.errno <= 0:
            raise ValueError(f"an errno is positive, not {self.errno}")

    def deliver(self, notification: Notification) -> bool:
        return notification.respond_errno(self.errno)


@attrs.frozen
class InjectFd(Answer):
    """Install ``fd`` in the tracee; its new number there is the syscall's result.

    ``cloexec`` sets close-on-exec on the tracee's copy (honour the tracee's
    ``O_CLOEXEC``). ``close`` closes the supervisor's ``fd`` afterwards.
    """

    fd: int
    cloexec: bool = False
    close: bool = True

    def deliver(self, notification: Notification) -> bool:
        try:
            return notification.inject_fd(self.fd, cloexec=self.cloexec) is not None
        finally:
            if self.close:
                os.close(self.fd)


class _Deferred(Answer):
    def deliver(self, notification: Notification) -> bool:
        return True  # the handler answers later

    def __repr__(self) -> str:
        return "DEFERRED"


#: Let the syscall run natively.
CONTINUE = Continue()
#: The handler answers later through the notification's methods.
DEFERRED: Answer = _Deferred()
