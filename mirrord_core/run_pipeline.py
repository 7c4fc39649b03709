"""What ``mirrord run`` does after the configuration is resolved.

Every step goes through the plugin hooks, so the core runs whatever the installed plugins
provide: reach an agent for the target, build the process's environment from the target's
(``fetch_remote_env`` + ``filter_env``), collect the syscall handlers once
(``handle_outgoing``, ``hook_fs``, ``handle_incoming``), then run the command under
interception while the session keeps serving the handlers on its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

from mirrord_core.agent_connection import agent_session
from mirrord_core.config import ResolvedConfig
from mirrord_core.handler_protocols import SyscallHandler
from mirrord_core.interception import FORWARDED_SIGNALS, run_intercepted
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
    """Every feature's syscall handlers, asked for once per run.

    For a syscall several handlers trap, they are asked in this order: outgoing traffic
    and DNS first (remote DNS claims exactly ``/etc/resolv.conf``, ``/etc/hosts`` and
    ``/etc/nsswitch.conf`` and serves its own copies; every other path is the file
    system's), then the file system, then incoming traffic.
    """
    hook = loaded.manager.hook
    handlers: list[SyscallHandler] = []
    for collected in (
        hook.handle_outgoing(config=config, session=session),
        hook.hook_fs(config=config, session=session),
        hook.handle_incoming(config=config, session=session),
    ):
        for result in collected:
            handlers.extend(result or ())
    return handlers


def _forward_signals(loop: asyncio.AbstractEventLoop, runner: list[int]) -> list[int]:
    """Hand the signals the command should get to the thread that runs it.

    ``run_intercepted`` forwards the signals it reads from its signalfd, but only its own
    thread blocks them: sent to this process they would reach the main thread (the event
    loop) and kill ``mirrord run`` (SIGTERM) or interrupt it (SIGINT) instead. They go to
    the runner thread, whose relay passes them to the command. A key pressed on the
    terminal (SIGINT, SIGQUIT) reached the command already when we share its foreground
    group. Signals this process ignores (``nohup``) stay ignored. Returns those handled.
    """

    def forward(signum: int) -> None:
        if signum in (signal.SIGINT, signal.SIGQUIT) and _terminal_foreground():
            return
        for ident in runner:
            with contextlib.suppress(OSError):
                signal.pthread_kill(ident, signum)

    handled = []
    for signum in FORWARDED_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_IGN:
            continue
        try:
            loop.add_signal_handler(signum, forward, signum)
        except (RuntimeError, ValueError):  # not the main thread
            continue
        handled.append(signum)
    return handled


def _terminal_foreground() -> bool:
    try:
        with open("/dev/tty", "rb", buffering=0) as tty:
            return os.tcgetpgrp(tty.fileno()) == os.getpgrp()
    except OSError:
        return False


def run_session(loaded: LoadedPlugins, resolved: ResolvedConfig, command: Sequence[str]) -> int:
    """Run ``command`` in the context of the configured target; returns its exit status."""
    config = resolved.config

    async def main() -> int:
        async with agent_session(loaded, resolved, client_name="mirrord run") as session:
            env = await process_environment(loaded, config, session)
            handlers = collect_handlers(loaded, config, session)
            runner: list[int] = []  # the thread running the command, while it does

            def run_command() -> int:
                runner.append(threading.get_ident())
                try:
                    return run_intercepted(
                        list(command), env, handlers, tuple(getattr(config, "skip_processes", ()))
                    )
                finally:
                    runner.clear()

            loop = asyncio.get_running_loop()
            forwarded = _forward_signals(loop, runner)
            try:
                # The command runs on another thread: the event loop stays free to serve the
                # handlers' requests to the agent while the command waits for answers.
                return await asyncio.to_thread(run_command)
            finally:
                for signum in forwarded:
                    loop.remove_signal_handler(signum)
                for handler in handlers:
                    close = getattr(handler, "close", None)
                    if close is not None:
                        # Off the loop: closing may wait for requests the loop serves
                        # (a file-system mount still starting, say).
                        await asyncio.to_thread(close)

    return asyncio.run(main())
