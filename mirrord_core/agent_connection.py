"""From a resolved config to a live session with an agent, through the plugin hooks.

``connect_tcp`` names an agent that is already running (its token comes from
``MIRRORD_AGENT_TOKEN``); otherwise ``resolve_target`` finds the target and
``spawn_agent`` starts an agent for it. Whatever was started is released on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from mirrord_core.config import ResolvedConfig
from mirrord_core.plugin_manager import LoadedPlugins
from mirrord_core.session import Session
from mirrord_core.target_model import AgentEndpoint, ResolvedTarget
from mirrord_core.user_errors import UserError

TOKEN_ENV = "MIRRORD_AGENT_TOKEN"


class AgentConnectionError(UserError):
    """No agent can be reached for the configured target; the message says why."""


def _existing_agent(config: Any) -> AgentEndpoint:
    host, _, port = str(config.connect_tcp).rpartition(":")
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise AgentConnectionError(
            f"connect_tcp = {config.connect_tcp!r} needs the agent's session token in ${TOKEN_ENV}"
        )
    return AgentEndpoint(host=host.strip("[]"), port=int(port), token=token)


def resolve_configured_target(loaded: LoadedPlugins, config: Any) -> ResolvedTarget:
    """The target the config names, resolved by whichever plugin handles its kind."""
    target = loaded.manager.hook.resolve_target(config=config)
    if target is None:
        path = getattr(getattr(config, "target", None), "path", None)
        raise AgentConnectionError(
            f"no installed plugin can resolve the target {path or '(none given)'}; "
            "set target.path (or -t), e.g. pid/PID for a process on this machine"
        )
    return target


def start_agent(loaded: LoadedPlugins, config: Any) -> AgentEndpoint:
    """An endpoint for the configured agent: an existing one, or one spawned now."""
    if getattr(config, "connect_tcp", None) is not None:
        return _existing_agent(config)
    target = resolve_configured_target(loaded, config)
    endpoint = loaded.manager.hook.spawn_agent(config=config, target=target)
    if endpoint is None:
        raise AgentConnectionError(
            f"no installed plugin can start an agent for the {target.kind} target {target.name}"
        )
    return endpoint


@contextlib.asynccontextmanager
async def agent_session(
    loaded: LoadedPlugins, resolved: ResolvedConfig, client_name: str = "mirrord"
) -> AsyncIterator[Session]:
    """A session with the agent for ``resolved``; the agent is released afterwards."""
    # Spawning waits for the agent's readiness line: keep the event loop free meanwhile.
    endpoint = await asyncio.to_thread(start_agent, loaded, resolved.config)
    try:
        session = await Session.connect(endpoint, client_name=client_name)
        try:
            yield session
        finally:
            await session.close()
    finally:
        await asyncio.to_thread(endpoint.release)
