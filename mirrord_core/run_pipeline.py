"""What ``mirrord run`` does after the configuration is resolved.

Every step goes through the plugin hooks, so the core runs whatever the installed plugins
provide: reach an agent for the target, build the process's environment from the target's
(``fetch_remote_env`` + ``filter_env``), collect the syscall handlers once (``hook_fs``,
``handle_outgoing``, ``handle_incoming``), then run the command under interception while
the session keeps serving the handlers on its event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from mirrord_core.agent_connection import agent_session
from mirrord_core.config import ResolvedConfig
from mirrord_core.handler_protocols import SyscallHandler
from mirrord_core.interception import run_intercepted
from mirrord_core.plugin_manager import LoadedPlugins, apply_env_filters
from mirrord_core.session import Session
from mirrord_core.user_errors import UserError


class RunError(UserError):
    """``mirrord run`` cannot go on; the message says why and what to do."""


async def process_environment(
    loaded: LoadedPlugins, config: Any, session: Session
) -> dict[str, str]:
    """The local environment updated with the target's, as the plugins filter it."""
    env = dict(os.environ)
    pending = loaded.manager.hook.fetch_remote_env(config=config, session=session)
    if pending is not None:
        env.update(apply_env_filters(loaded.manager, config, await pending))
    return env


def collect_handlers(loaded: LoadedPlugins, config: Any, session: Session) -> list[SyscallHandler]:
    """Every feature's syscall handlers, asked for once per run."""
    hook = loaded.manager.hook
    handlers: list[SyscallHandler] = []
    for collected in (
        hook.hook_fs(config=config, session=session),
        hook.handle_outgoing(config=config, session=session),
        hook.handle_incoming(config=config, session=session),
    ):
        for result in collected:
            handlers.extend(result or ())
    return handlers


def run_session(loaded: LoadedPlugins, resolved: ResolvedConfig, command: Sequence[str]) -> int:
    """Run ``command`` in the context of the configured target; returns its exit status."""
    config = resolved.config

    async def main() -> int:
        async with agent_session(loaded, resolved, client_name="mirrord run") as session:
            env = await process_environment(loaded, config, session)
            handlers = collect_handlers(loaded, config, session)
            try:
                # The command runs on another thread: the event loop stays free to serve the
                # handlers' requests to the agent while the command waits for answers.
                return await asyncio.to_thread(
                    run_intercepted,
                    list(command),
                    env,
                    handlers,
                    tuple(getattr(config, "skip_processes", ())),
                )
            finally:
                for handler in handlers:
                    close = getattr(handler, "close", None)
                    if close is not None:
                        close()

    return asyncio.run(main())
