"""Options shared by every command that works on a target: ``-f`` and the run flags.

``mirrord run`` and the plugins' commands (``mirrord env``, ``mirrord fs`` …) take the same
config file and flags, resolve the config the same way, and reach the agent through
:func:`run_with_session`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from mirrord_core.agent_connection import agent_session
from mirrord_core.cli import output
from mirrord_core.config import ResolvedConfig, resolve
from mirrord_core.config.overrides import flag_table
from mirrord_core.plugin_manager import LoadedPlugins, get_plugins
from mirrord_core.session import Session


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``-f`` and every run flag the installed plugins declare."""
    layout = get_plugins().layout
    parser.add_argument(
        "-f",
        "--config-file",
        metavar="FILE",
        help="config file (.toml, .yaml, .yml, .json); default: $MIRRORD_CONFIG_FILE",
    )
    for dest, (flag, _paths) in sorted(flag_table(layout).items()):
        if flag.takes_argument:
            parser.add_argument(*flag.names, dest=dest, help=flag.help, metavar=flag.metavar)
        else:
            parser.add_argument(*flag.names, dest=dest, action="store_true", help=flag.help)


def resolve_from_args(args: argparse.Namespace) -> tuple[LoadedPlugins, ResolvedConfig]:
    """Resolve the config from ``-f``, the environment and the flags; print its warnings."""
    loaded = get_plugins()
    flags = {dest: getattr(args, dest, None) for dest in flag_table(loaded.layout)}
    resolved = resolve(loaded.layout, file=args.config_file, flags=flags)
    for warning in resolved.warnings:
        output.warn(warning)
    return loaded, resolved


SessionWork = Callable[[Session, ResolvedConfig, LoadedPlugins], Awaitable[int]]


def run_with_session(args: argparse.Namespace, work: SessionWork) -> int:
    """Resolve the config, start or reach the agent, run ``work`` with a session."""
    loaded, resolved = resolve_from_args(args)

    async def main() -> int:
        async with agent_session(loaded, resolved, client_name=f"mirrord {args.command}") as s:
            return await work(s, resolved, loaded)

    return asyncio.run(main())


def command_parser(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command parser that takes the target options."""
    parser = commands.add_parser(name, **kwargs)
    add_target_arguments(parser)
    return parser
