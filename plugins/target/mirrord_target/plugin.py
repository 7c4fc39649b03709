"""The target plugin's hook implementations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirrord_core.hookspecs import hookimpl
from mirrord_core.target_model import AgentEndpoint, ResolvedTarget
from mirrord_target.config import TargetConfig
from mirrord_target.local.kube_agent import (
    KUBE_KINDS,
    RUNNING_AGENT_KIND,
    connect_running_agent,
    resolve_configured_kube_target,
    running_agent_target,
    spawn_kube_agent,
)
from mirrord_target.local.local_agent import spawn_local_agent
from mirrord_target.local.ls_command import add_ls_command
from mirrord_target.local.pid_target import resolve_pid_target


@hookimpl
def register_config_sections() -> Mapping[str, type]:
    return {"target": TargetConfig}


@hookimpl
def register_cli_commands(commands: Any) -> None:
    add_ls_command(commands)


@hookimpl
def resolve_target(config: Any) -> ResolvedTarget | None:
    # An agent that already runs is the target: it is attached to its own already.
    if getattr(config, "connect_agent_name", None):
        return running_agent_target(config)
    path = config.target.path
    if path is None:
        return None
    if path.kind == "pid":
        return resolve_pid_target(int(path.name))
    if path.kind in KUBE_KINDS:
        return resolve_configured_kube_target(config)
    return None


@hookimpl
def spawn_agent(config: Any, target: ResolvedTarget | None) -> AgentEndpoint | None:
    if target is None:
        return None
    if target.kind == RUNNING_AGENT_KIND:
        return connect_running_agent(config, target)
    if target.kind in KUBE_KINDS:
        return spawn_kube_agent(config, target)
    if target.pid is None:
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
