"""The fs plugin's hook implementations."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from mirrord_core.agent.handlers import AgentHandlers
from mirrord_core.handler_protocols import SyscallHandler
from mirrord_core.hookspecs import hookimpl
from mirrord_fs.agent.handlers import AGENT_HANDLERS
from mirrord_fs.config import FsConfig, FsMode
from mirrord_fs.local.fs_command import add_fs_command
from mirrord_fs.local.fs_handlers import start_remote_fs
from mirrord_fs.local.path_policy import PathPolicy


@hookimpl
def register_config_sections() -> Mapping[str, type]:
    return {"feature.fs": FsConfig}


@hookimpl
def register_agent_handlers() -> AgentHandlers:
    return AGENT_HANDLERS


@hookimpl
def register_cli_commands(commands: Any) -> None:
    add_fs_command(commands)


@hookimpl
def hook_fs(config: Any, session: Any) -> list[SyscallHandler] | None:
    """The path-syscall handler of ``mirrord run``, serving remote paths from a mount of
    the target's root; nothing (no trap, no mount) in mode ``local``."""
    fs_config: FsConfig = config.feature.fs
    policy = PathPolicy.from_config(fs_config)
    if not policy.active:
        return None
    writable = fs_config.mode is FsMode.WRITE or bool(fs_config.read_write)
    return [start_remote_fs(policy, session, asyncio.get_running_loop(), writable=writable)]
