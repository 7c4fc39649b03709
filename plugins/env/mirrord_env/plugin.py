"""The env plugin's hook implementations."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

from mirrord_core.agent.handlers import AgentHandlers
from mirrord_core.hookspecs import hookimpl
from mirrord_core.session import Session
from mirrord_env.agent.handlers import AGENT_HANDLERS
from mirrord_env.config import EnvConfig
from mirrord_env.local.env_command import add_env_command
from mirrord_env.local.env_filter import EnvFilter
from mirrord_env.local.remote_env import fetch_remote_env as fetch_remote_environment


@hookimpl
def register_config_sections() -> Mapping[str, type]:
    return {"feature.env": EnvConfig}


@hookimpl
def filter_env(config: Any, remote_env: Mapping[str, str]) -> Mapping[str, str]:
    return EnvFilter.from_config(config.feature.env).apply(remote_env)


@hookimpl
def register_agent_handlers() -> AgentHandlers:
    return AGENT_HANDLERS


@hookimpl
def register_cli_commands(commands: Any) -> None:
    add_env_command(commands)


@hookimpl
def fetch_remote_env(config: Any, session: Session) -> Awaitable[Mapping[str, str]]:
    return fetch_remote_environment(session)
