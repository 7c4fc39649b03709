"""What ``mirrord run`` does after the configuration is resolved.

Each step goes through the plugin hooks, so the core runs whatever the installed plugins
provide: resolve the target, start (or find) the agent, then start the user's command.
"""

from __future__ import annotations

from collections.abc import Sequence

from mirrord_core.config import ResolvedConfig
from mirrord_core.plugin_manager import LoadedPlugins


class RunError(Exception):
    """``mirrord run`` cannot go on; the message says why and what to do."""


def run_session(loaded: LoadedPlugins, resolved: ResolvedConfig, command: Sequence[str]) -> int:
    """Run ``command`` in the context of the configured target; returns its exit status."""
    config = resolved.config
    hook = loaded.manager.hook
    target = None
    if getattr(config, "connect_tcp", None) is None:
        path = getattr(getattr(config, "target", None), "path", None)
        target = hook.resolve_target(config=config)
        if target is None:
            raise RunError(
                f"no installed plugin can resolve the target {path or '(none given)'}; "
                "set target.path (or -t) to a target an installed plugin supports "
                "(mirrord-target: pod/…, deployment/…, container/…, pid/…)"
            )
    endpoint = hook.spawn_agent(config=config, target=target)
    if endpoint is None:
        raise RunError("no installed plugin can start an agent for this target")
    try:
        raise RunError(
            f"cannot start {command[0]!r}: this version has no agent session or "
            "interception engine yet; use --dry-run to check the configuration"
        )
    finally:
        endpoint.release()
