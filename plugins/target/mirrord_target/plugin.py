"""The target plugin's hook implementations.

The Kubernetes modules (and the ``kubernetes`` client, slow to import) are imported only
when a Kubernetes target or command needs them: every ``mirrord`` process loads this
plugin, the agent and ``pid/`` sessions included.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirrord_core.hookspecs import hookimpl
from mirrord_core.target_model import AgentEndpoint, ResolvedTarget
from mirrord_target.config import TargetConfig
from mirrord_target.local.local_agent import spawn_local_agent
from mirrord_target.local.pid_target import resolve_pid_target

# Target kinds resolved through the Kubernetes API, and the pseudo kind of an agent that
# already runs (connect_agent_name).
KUBE_KINDS = frozenset({"pod", "deployment", "container"})
RUNNING_AGENT_KIND = "agent"


@hookimpl
def register_config_sections() -> Mapping[str, type]:
    return {"target": TargetConfig}


@hookimpl
def register_cli_commands(commands: Any) -> None:
    from mirrord_target.local.ls_command import add_ls_command

    add_ls_command(commands)


@hookimpl
def resolve_target(config: Any) -> ResolvedTarget | None:
    # An agent that already runs is the target: it is attached to its own already.
    if getattr(config, "connect_agent_name", None):
        from mirrord_target.local.kube_agent import running_agent_target

        return running_agent_target(config)
    path = config.target.path
    if path is None:
        return None
    if path.kind == "pid":
        return resolve_pid_target(int(path.name))
    if path.kind in KUBE_KINDS:
        from mirrord_target.local.kube_agent import resolve_configured_kube_target

        return resolve_configured_kube_target(config)
    return None


@hookimpl
def spawn_agent(config: Any, target: ResolvedTarget | None) -> AgentEndpoint | None:
    if target is None:
        return None
    if target.kind == RUNNING_AGENT_KIND:
        from mirrord_target.local.kube_agent import connect_running_agent

        return connect_running_agent(config, target)
    if target.kind in KUBE_KINDS:
        from mirrord_target.local.kube_agent import spawn_kube_agent

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
