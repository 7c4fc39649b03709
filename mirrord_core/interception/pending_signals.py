"""Whether a tracee waiting for a deferred answer has a signal to handle.

The engine receives notifications with ``SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV``: once a
notification is received, only fatal signals interrupt the trapped syscall. A handler that
makes the tracee wait for something that may never come (a blocking ``accept``) must
therefore notice a signal the program wants to handle (Ctrl-C with a handler, say) and
answer ``EINTR`` itself, as the kernel would for a blocking call interrupted by a signal.
"""

from __future__ import annotations


def _mask(value: str) -> int:
    return int(value, 16)


def deliverable_signal_pending(tid: int) -> bool:
    """Whether thread ``tid`` has a pending signal it neither blocks nor ignores."""
    try:
        with open(f"/proc/{tid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return False
    try:
        pending = _mask(fields["SigPnd"]) | _mask(fields["ShdPnd"])
        masked = _mask(fields["SigBlk"]) | _mask(fields["SigIgn"])
    except (KeyError, ValueError):
        return False
    return bool(pending & ~masked)
