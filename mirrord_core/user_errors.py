"""The base of every error a user can act on.

The CLI prints a :class:`UserError`'s message and exits 1, with no traceback; plugins
raise subclasses of it for their own user-facing failures (a missing target, an agent
that did not start), so the core reports them without knowing them.
"""


class UserError(Exception):
    """An error caused by input or environment the user controls; the message says what
    to do."""
