"""The target plugin's hook implementations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirrord_core.hookspecs import hookimpl
from mirrord_core.target_model import AgentEndpoint, ResolvedTarget
from mirrord_target.config import TargetConfig
from mirrord_target.local.local_agent import spawn_local_agent
from mirrord_target.local.pid_target import resolve_pid_target


@hookimpl
def register_config_sections() -> Mapping[str, type]:
    return {"target": TargetConfig}


@hookimpl
def resolve_target(config: Any) -> ResolvedTarget | None:
    path = config.target.path
    if path is None or path.kind != "pid":
        return None
    return resolve_pid_target(int(path.name))


@hookimpl
def spawn_agent(config: Any, target: ResolvedTarget | None) -> AgentEndpoint | None:
    if target is None or target.pid is None:
        return None
    agent = config.agent
    return spawn_local_agent(
        target,
        startup_timeout=float(agent.startup_timeout),
        communication_timeout=None
        if agent.communication_timeout is None
        else float(agent.communication_timeout),
        log_level=agent.log_level,
        network_interface=agent.network_interface,
        pause=agent.pause,
    )
