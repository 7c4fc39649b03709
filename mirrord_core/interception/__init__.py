"""The interception engine: the user's command runs under a seccomp filter whose trapped
syscalls a supervisor thread hands to handler objects (DESIGN §5, ``docs/interception.md``).

Public API: :func:`run_intercepted`; the handler side — :class:`Notification` and the
answers :data:`CONTINUE`, :class:`Value`, :class:`Errno`, :class:`InjectFd`,
:data:`DEFERRED`; :class:`Supervisor` and :func:`launch` for callers that need the
pieces; :func:`probe` for the kernel's capabilities.
"""

from mirrord_core.interception.answers import (
    CONTINUE,
    DEFERRED,
    Answer,
    Continue,
    Errno,
    InjectFd,
    Value,
)
from mirrord_core.interception.capabilities import (
    InterceptionUnsupported,
    KernelCapabilities,
    probe,
)
from mirrord_core.interception.launcher import LaunchedCommand, LaunchError, launch
from mirrord_core.interception.notification import AlreadyAnswered, Notification
from mirrord_core.interception.runner import FORWARDED_SIGNALS, exit_status, run_intercepted
from mirrord_core.interception.supervisor import Supervisor, trapped_syscalls
from mirrord_core.interception.tracee_memory import TraceeMemoryError

__all__ = [
    "CONTINUE",
    "DEFERRED",
    "FORWARDED_SIGNALS",
    "AlreadyAnswered",
    "Answer",
    "Continue",
    "Errno",
    "InjectFd",
    "InterceptionUnsupported",
    "KernelCapabilities",
    "LaunchError",
    "LaunchedCommand",
    "Notification",
    "Supervisor",
    "TraceeMemoryError",
    "Value",
    "exit_status",
    "launch",
    "probe",
    "run_intercepted",
    "trapped_syscalls",
]
