"""Sandbox pods: a miniature Kubernetes-like cluster on this machine, for tests and demos.

Each pod is a network namespace on a private bridge, with its own IP, a
busybox root file system entered through a mount namespace and chroot, its
own environment, and an HTTP server; a dnsmasq answers for `cluster.local`.
Nothing can leave the machine: the bridge lives in a "node" namespace and the
host routes the pod CIDR to `unreachable`. See docs/sandbox.md.

    with Sandbox.create([PodSpec("web"), PodSpec("api")]) as sb:
        sb.exec_in("web", ["/bin/busybox", "wget", "-qO-", "http://api:8080/"])
"""

from __future__ import annotations

from .cluster import DEFAULT_DOMAIN, Sandbox
from .errors import SandboxError
from .pod import APPLETS, DEFAULT_HTTP_PORT, Pod, PodSpec
from .state import list_sandboxes, run_dir
from .teardown import cleanup_stale
from .tools import Tools, check_prerequisites

__all__ = [
    "APPLETS",
    "DEFAULT_DOMAIN",
    "DEFAULT_HTTP_PORT",
    "Pod",
    "PodSpec",
    "Sandbox",
    "SandboxError",
    "Tools",
    "check_prerequisites",
    "cleanup_stale",
    "list_sandboxes",
    "run_dir",
]
