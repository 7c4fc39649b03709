"""``mirrord env``: the environment a process started by ``mirrord run`` would get."""

from __future__ import annotations

import argparse
from typing import Any

from mirrord_core.cli.target_options import command_parser, run_with_session
from mirrord_core.config import ResolvedConfig
from mirrord_core.plugin_manager import LoadedPlugins, apply_env_filters
from mirrord_core.session import Session
from mirrord_env.local.remote_env import fetch_remote_env


def add_env_command(commands: Any) -> None:
    parser = command_parser(
        commands,
        "env",
        help="print the target's environment as the local process would get it",
        description="Print NAME=value lines: the target's environment after feature.env's "
        "include, exclude and override (or, with --raw, all of it).",
    )
    parser.add_argument("--raw", action="store_true", help="print it unfiltered")
    parser.set_defaults(handler=_env)


def _env(args: argparse.Namespace) -> int:
    async def work(session: Session, resolved: ResolvedConfig, loaded: LoadedPlugins) -> int:
        remote = await fetch_remote_env(session)
        env = remote if args.raw else apply_env_filters(loaded.manager, resolved.config, remote)
        for name in sorted(env):
            print(f"{name}={env[name]}")
        return 0

    return run_with_session(args, work)
