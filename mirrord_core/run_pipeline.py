"""What ``mirrord run`` does after the configuration is resolved.

Each step goes through the plugin hooks, so the core runs whatever the installed plugins
provide: resolve the target, start (or find) the agent, then start the user's command.
"""

from __future__ import annotations

from collections.abc import Sequence

from mirrord_core.agent_connection import start_agent
from mirrord_core.config import ResolvedConfig
from mirrord_core.plugin_manager import LoadedPlugins
from mirrord_core.user_errors import UserError


class RunError(UserError):
    """``mirrord run`` cannot go on; the message says why and what to do."""


def run_session(loaded: LoadedPlugins, resolved: ResolvedConfig, command: Sequence[str]) -> int:
    """Run ``command`` in the context of the configured target; returns its exit status."""
    endpoint = start_agent(loaded, resolved.config)
    try:
        raise RunError(
            f"cannot start {command[0]!r}: this version has no interception engine yet; "
            "use the plugins' commands (mirrord env, mirrord fs, mirrord net) to use the "
            "target, or --dry-run to check the configuration"
        )
    finally:
        endpoint.release()
