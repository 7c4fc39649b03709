"""The kubeconfig that points a Kubernetes client at the emulated API server."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

CONTEXT = "mirrord-sandbox"


def render(server: str, token: str, *, user: str, namespace: str = "default") -> str:
    """A kubeconfig with one cluster, user and context (``mirrord-sandbox``), current."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": server}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user, "namespace": namespace}}
        ],
        "current-context": CONTEXT,
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


def write(path: Path, server: str, token: str, *, user: str) -> Path:
    """Write the kubeconfig atomically, readable only by its owner (it holds the token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(render(server, token, user=user))
    os.replace(tmp, path)
    return path
