"""The sub-commands: run/exec, verify-config, schema and plugins."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mirrord_core.cli import output
from mirrord_core.cli.target_options import add_target_arguments, resolve_from_args
from mirrord_core.config import ConfigError, resolve
from mirrord_core.config.json_schema import config_schema
from mirrord_core.interception import LaunchError
from mirrord_core.plugin_manager import get_plugins
from mirrord_core.run_pipeline import run_session

_Subparsers = Any  # argparse's _SubParsersAction is private


def add_run_command(commands: _Subparsers) -> None:
    """``mirrord run`` (alias ``exec``): the flags of mirrord's exec, from installed plugins."""
    parser = commands.add_parser(
        "run",
        aliases=["exec"],
        help="run a command in the context of the target (alias: exec)",
        description="Run COMMAND locally in the context of the target.",
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--no-telemetry",
        action="store_true",
        help="accepted for compatibility with mirrord; mirrord for Python sends no telemetry",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve the configuration, print it as JSON and exit",
    )
    parser.add_argument("binary", metavar="COMMAND", nargs="?", help="command to run")
    parser.add_argument("binary_args", metavar="ARGS", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    loaded, resolved = resolve_from_args(args)
    if args.dry_run:
        output.print_json(resolved.to_dict())
        return 0
    if not args.binary:
        output.error("no command given: mirrord run [FLAGS] -- COMMAND [ARGS…]")
        return 2
    try:
        return run_session(loaded, resolved, [args.binary, *args.binary_args])
    except LaunchError as err:
        # A command that cannot start exits as a shell would say (127 not found, 126 not
        # executable), so scripts see the same status with or without mirrord.
        output.error(str(err))
        return err.exit_status


def add_verify_config_command(commands: _Subparsers) -> None:
    """``mirrord verify-config [--json] FILE``."""
    parser = commands.add_parser(
        "verify-config",
        help="check a config file and show the resolved configuration",
        description="Check FILE (with MIRRORD_* environment variables applied). Exit 0 when "
        "valid, 1 with every problem listed otherwise.",
    )
    parser.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    parser.add_argument("file", metavar="FILE", help="config file to check")
    parser.set_defaults(handler=_verify_config)


def _verify_config(args: argparse.Namespace) -> int:
    loaded = get_plugins()
    try:
        resolved = resolve(loaded.layout, file=args.file)
    except ConfigError as err:
        if args.json:
            output.print_json({"type": "Fail", "errors": [str(p) for p in err.problems]})
        raise
    for warning in resolved.warnings:
        output.warn(warning)
    if args.json:
        output.print_json(resolved.to_dict())
    else:
        print(f"{args.file}: valid mirrord configuration")
    return 0


def add_schema_command(commands: _Subparsers) -> None:
    """``mirrord schema [-o FILE]``."""
    parser = commands.add_parser(
        "schema",
        help="print the JSON Schema of the configuration (installed plugins included)",
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.set_defaults(handler=_schema)


def _schema(args: argparse.Namespace) -> int:
    schema = config_schema(get_plugins().layout)
    if args.output:
        try:
            Path(args.output).write_text(json.dumps(schema, indent=2) + "\n")
        except OSError as err:
            output.error(f"cannot write the schema to {args.output}: {err.strerror or err}")
            return 1
    else:
        output.print_json(schema)
    return 0


def add_plugins_command(commands: _Subparsers) -> None:
    """``mirrord plugins [--json]``."""
    parser = commands.add_parser("plugins", help="list the installed plugins")
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.set_defaults(handler=_plugins)


def _plugins(args: argparse.Namespace) -> int:
    loaded = get_plugins()
    rows = [
        {
            "name": p.name,
            "distribution": p.distribution,
            "version": p.version,
            "sections": list(p.sections),
            "hooks": list(p.hooks),
        }
        for p in loaded.plugins
    ]
    if args.json:
        output.print_json(
            {
                "plugins": rows,
                "failed": [
                    {
                        "name": f.name,
                        "distribution": f.distribution,
                        "version": f.version,
                        "error": f.error,
                    }
                    for f in loaded.failures
                ],
                "disabled": list(loaded.disabled),
            }
        )
        return 0
    table = Table("plugin", "distribution", "version", "config sections", "hooks")
    for row in rows:
        table.add_row(
            row["name"],
            row["distribution"],
            row["version"],
            "\n".join(row["sections"]) or "-",
            "\n".join(row["hooks"]) or "-",
        )
    console = Console(soft_wrap=False, width=max(Console().width, 110))
    console.print(table)
    for failure in loaded.failures:
        console.print(f"failed: {failure}", markup=False)
    for name in loaded.disabled:
        console.print(f"disabled: {name} (MIRRORD_DISABLE_PLUGINS)", markup=False)
    if not rows:
        console.print(
            "no plugins installed: pip install mirrord-fs mirrord-env "
            "mirrord-network mirrord-target",
            markup=False,
        )
    return 0
