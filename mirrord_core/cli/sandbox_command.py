"""``mirrord sandbox up|down|status``: sandbox pods on this machine to try mirrord against."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from mirrord_core.sandbox import Sandbox, SandboxError, list_sandboxes
from mirrord_core.sandbox.demo import DEMO_NAME, demo_pods
from mirrord_core.user_errors import UserError


def add_sandbox_command(commands: Any) -> None:
    """Register ``mirrord sandbox`` and its sub-commands."""
    parser = commands.add_parser(
        "sandbox",
        help="local sandbox pods to try mirrord against (needs root)",
        description="Build or remove sandbox pods: network namespaces with their own IP, "
        "root file system, environment, HTTP server and cluster DNS. Nothing leaves "
        "this machine.",
    )
    actions = parser.add_subparsers(dest="sandbox_action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start the demo sandbox (pods web and api)")
    up.add_argument("--name", default=DEMO_NAME, help="sandbox name (default: demo)")
    up.set_defaults(handler=_up)
    down = actions.add_parser("down", help="remove a sandbox and everything it created")
    down.add_argument("--name", default=DEMO_NAME, help="sandbox name (default: demo)")
    down.set_defaults(handler=_down)
    status = actions.add_parser("status", help="list running sandboxes and their pods")
    status.set_defaults(handler=_status)


def _print_pods(sandbox: Sandbox) -> None:
    table = Table("pod", "namespace", "ip", "pid", "service", title=f"sandbox {sandbox.name}")
    for pod in sandbox.pods:
        table.add_row(
            pod.name,
            pod.namespace,
            pod.ip,
            str(pod.pid),
            ", ".join(sandbox.service_fqdn(s, pod.namespace) for s in pod.services),
        )
    Console(width=120).print(table)


def _up(args: argparse.Namespace) -> int:
    try:
        sandbox = Sandbox.up(demo_pods(), name=args.name)
    except SandboxError as err:
        raise SandboxCommandError(str(err)) from None
    _print_pods(sandbox)
    web = sandbox.pod("web") if any(p.name == "web" for p in sandbox.pods) else sandbox.pods[0]
    print(f"\nmirrord target of the web pod: pid/{web.pid}")
    print(f"remove it with: mirrord sandbox down --name {args.name}")
    return 0


def _down(args: argparse.Namespace) -> int:
    try:
        removed = Sandbox.down(args.name)
    except SandboxError as err:
        raise SandboxCommandError(str(err)) from None
    print(f"sandbox {args.name} removed" if removed else f"no sandbox named {args.name}")
    return 0


def _status(args: argparse.Namespace) -> int:
    names = list_sandboxes()
    if not names:
        print("no sandboxes")
    for name in names:
        try:
            _print_pods(Sandbox.attach(name))
        except SandboxError as err:
            print(f"{name}: {err}")
    return 0


class SandboxCommandError(UserError):
    """A sandbox could not be built or removed; the message says why."""
