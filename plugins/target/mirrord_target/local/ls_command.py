"""``mirrord ls [-n NAMESPACE] [--json]``: the targets of a namespace.

The JSON form is a list of target strings (``["deployment/web", "pod/web-5d…"]``), what
IDE integrations read; it is the default when stdout is not a terminal (as for mirrord,
whose ``ls`` prints JSON). On a terminal the default is one target per line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mirrord_core.cli import output
from mirrord_core.config import resolve
from mirrord_core.plugin_manager import get_plugins


def add_ls_command(commands: Any) -> None:
    """Register ``mirrord ls``."""
    parser = commands.add_parser(
        "ls",
        help="list the targets (pods, their containers, deployments) of a namespace",
        description="List the targets of a namespace: running pods (one entry per container "
        "when a pod has several) and deployments. JSON when stdout is not a terminal.",
    )
    parser.add_argument(
        "-n", "--namespace", help="namespace (default: target.namespace, else the context's)"
    )
    parser.add_argument(
        "-f", "--config-file", metavar="FILE", help="config file (kubeconfig, namespace …)"
    )
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print a JSON list")
    form.add_argument(
        "-o", "--output", choices=("json", "text"), help="output format (mirrord's -o json)"
    )
    parser.set_defaults(handler=_ls)


def _ls(args: argparse.Namespace) -> int:
    # Imported here: the Kubernetes client is slow to import, and every mirrord command
    # registers this one.
    from mirrord_target.local.kube_agent import api_step, connect_from_config
    from mirrord_target.local.target_listing import list_targets

    resolved = resolve(get_plugins().layout, file=args.config_file)
    for warning in resolved.warnings:
        output.warn(warning)
    config = resolved.config
    api = connect_from_config(config)
    try:
        namespace = args.namespace or config.target.namespace or api.default_namespace
        with api_step(f"list the targets of namespace {namespace}"):
            targets = list_targets(api, namespace)
    finally:
        api.close()
    as_json = (
        args.json or args.output == "json" or (args.output is None and not sys.stdout.isatty())
    )
    if as_json:
        sys.stdout.write(json.dumps(targets) + "\n")
    else:
        for target in targets:
            print(target)
        if not targets:
            output.warn(f"no targets in namespace {namespace}")
    sys.stdout.flush()
    return 0
