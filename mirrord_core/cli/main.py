"""Entry point: sub-command dispatch and the conversion of user errors into exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from mirrord_core.cli import output
from mirrord_core.cli.agent_command import add_agent_command
from mirrord_core.cli.commands import (
    add_plugins_command,
    add_run_command,
    add_schema_command,
    add_verify_config_command,
)
from mirrord_core.cli.sandbox_command import add_sandbox_command
from mirrord_core.config import ConfigError
from mirrord_core.plugin_manager import get_plugins
from mirrord_core.user_errors import UserError

EXIT_USER_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command (run flags come from installed plugins)."""
    parser = argparse.ArgumentParser(
        prog="mirrord",
        description="Run a local process in the context of a Kubernetes pod.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_run_command(commands)
    add_verify_config_command(commands)
    add_schema_command(commands)
    add_plugins_command(commands)
    add_sandbox_command(commands)
    add_agent_command(commands)
    _add_plugin_commands(commands)
    return parser


def _add_plugin_commands(commands: Any) -> None:
    manager = get_plugins().manager
    for impl in manager.hook.register_cli_commands.get_hookimpls():
        try:
            impl.function(commands)
        # One plugin's broken command must not take the whole command line down.
        except Exception as err:
            name = manager.get_name(impl.plugin)
            output.warn(f"plugin {name!r} could not add its commands: {err}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.handler(args) or 0)
    except ConfigError as err:
        output.error(err.render())
        return EXIT_USER_ERROR
    except UserError as err:
        output.error(str(err))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
