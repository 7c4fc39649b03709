"""Entry point: sub-command dispatch and the conversion of user errors into exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mirrord_core.cli import output
from mirrord_core.cli.agent_command import AgentCommandError, add_agent_command
from mirrord_core.cli.commands import (
    add_plugins_command,
    add_run_command,
    add_schema_command,
    add_verify_config_command,
)
from mirrord_core.cli.sandbox_command import SandboxCommandError, add_sandbox_command
from mirrord_core.config import ConfigError
from mirrord_core.plugin_manager import PluginError
from mirrord_core.run_pipeline import RunError

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
    return parser


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
    except (PluginError, RunError, SandboxCommandError, AgentCommandError) as err:
        output.error(str(err))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
