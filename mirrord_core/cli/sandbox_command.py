"""``mirrord sandbox up|down|status``: sandbox pods on this machine to try mirrord against.

``up`` also starts the emulated Kubernetes API over the pods (a background process, see
docs/kubernetes-emulator.md) and prints the ``KUBECONFIG`` to use; ``down`` stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
from types import ModuleType
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
    up = actions.add_parser(
        "up", help="start the demo sandbox (pods web and api) and its Kubernetes API"
    )
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


def _kube_service() -> ModuleType:
    # Imported on use: the emulated API needs the `sandbox` extra (aiohttp, kubernetes).
    try:
        return importlib.import_module("mirrord_core.sandbox.kube.service")
    except ImportError as err:
        raise SandboxCommandError(
            f"the sandbox's Kubernetes API needs {err.name}: install mirrord with its sandbox "
            "extra (scripts/install.sh does, or pip install -e '.[sandbox]')"
        ) from None


def _up(args: argparse.Namespace) -> int:
    service = _kube_service()
    try:
        sandbox = Sandbox.up(demo_pods(), name=args.name)
    except SandboxError as err:
        raise SandboxCommandError(str(err)) from None
    try:
        api = service.start_api_server(args.name)
    except SandboxError as err:
        with contextlib.suppress(SandboxError):
            Sandbox.down(args.name)
        raise SandboxCommandError(str(err)) from None
    _print_pods(sandbox)
    web = sandbox.pod("web") if any(p.name == "web" for p in sandbox.pods) else sandbox.pods[0]
    print(f"\nKubernetes API: {api.url} (the sandbox pods as deployments; agents run locally)")
    print(f"  export KUBECONFIG={api.kubeconfig}")
    print("  mirrord ls")
    print(
        f"  mirrord run -t deployment/{web.name} -- curl http://api.default.svc.cluster.local:8080/"
    )
    print(f"\nmirrord target of the web pod without Kubernetes: pid/{web.pid}")
    print(f"remove it with: mirrord sandbox down --name {args.name}")
    return 0


def _down(args: argparse.Namespace) -> int:
    try:
        with contextlib.suppress(ImportError):
            importlib.import_module("mirrord_core.sandbox.kube.service").stop_api_server(args.name)
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
            continue
        try:
            api = importlib.import_module("mirrord_core.sandbox.kube.service").api_server_info(name)
        except ImportError:
            api = None
        if api is None:
            print("Kubernetes API: not running")
        else:
            print(f"Kubernetes API: {api.url} (pid {api.pid}; export KUBECONFIG={api.kubeconfig})")
    return 0


class SandboxCommandError(UserError):
    """A sandbox could not be built or removed; the message says why."""
