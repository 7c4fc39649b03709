"""Wire messages of the env plugin (shared by its local and agent sides)."""

from __future__ import annotations

import attrs

from mirrord_core.protocol import Message, register_message


@register_message
@attrs.frozen(kw_only=True)
class GetEnv(Message):
    """Ask for the target's environment."""

    TAG = "env.get"


@register_message
@attrs.frozen(kw_only=True)
class EnvVars(Message):
    """The target's environment, as the target process started with it."""

    TAG = "env.vars"
    env: dict[str, str]
