"""The fs plugin's hook implementations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirrord_core.agent.handlers import AgentHandlers
from mirrord_core.hookspecs import hookimpl
from mirrord_fs.agent.handlers import AGENT_HANDLERS
from mirrord_fs.config import FsConfig
from mirrord_fs.local.fs_command import add_fs_command


@hookimpl
def register_config_sections() -> Mapping[str, type]:
    return {"feature.fs": FsConfig}


@hookimpl
def register_agent_handlers() -> AgentHandlers:
    return AGENT_HANDLERS


@hookimpl
def register_cli_commands(commands: Any) -> None:
    add_fs_command(commands)
