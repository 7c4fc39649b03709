"""The one exception type the sandbox raises for everything a user can fix."""

from __future__ import annotations


class SandboxError(RuntimeError):
    """A sandbox could not be built, used or torn down.

    The message says what went wrong and what to do about it (which package to
    install, which command to run); callers print it instead of a traceback.
    """
