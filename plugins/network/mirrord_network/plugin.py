"""The network plugin's hook implementations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirrord_core.agent.handlers import AgentHandlers
from mirrord_core.hookspecs import hookimpl
from mirrord_network.agent.handlers import AGENT_HANDLERS
from mirrord_network.config import NetworkConfig
from mirrord_network.local.net_command import add_net_command


@hookimpl
def register_config_sections() -> Mapping[str, type]:
    return {"feature.network": NetworkConfig}


@hookimpl
def register_agent_handlers() -> AgentHandlers:
    return AGENT_HANDLERS


@hookimpl
def register_cli_commands(commands: Any) -> None:
    add_net_command(commands)
