"""Discovery documents: ``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/<g>/<v>``.

Only the groups the emulator serves are listed (core, ``apps``, ``batch``,
``authorization.k8s.io``): in particular there is no ``operator.metalbear.co``, so a
client probing for the mirrord operator finds none.
"""

from __future__ import annotations

from typing import Any

from . import resources

KUBERNETES_VERSION = ("1", "30", "v1.30.0")


def version() -> dict[str, Any]:
    """``/version``."""
    major, minor, git = KUBERNETES_VERSION
    return {
        "major": major,
        "minor": minor,
        "gitVersion": git,
        "gitCommit": "mirrord-sandbox",
        "gitTreeState": "clean",
        "buildDate": "2024-04-17T00:00:00Z",
        "goVersion": "go1.22.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def core_versions(server_address: str) -> dict[str, Any]:
    """``/api``."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _group(name: str, version: str) -> dict[str, Any]:
    entry = {"groupVersion": f"{name}/{version}", "version": version}
    return {"name": name, "versions": [entry], "preferredVersion": entry}


def group_list() -> dict[str, Any]:
    """``/apis``."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(name, ver) for name, ver in resources.group_versions().items()],
    }


def group(name: str) -> dict[str, Any] | None:
    """``/apis/<group>``, or None for a group the emulator does not serve."""
    ver = resources.group_versions().get(name)
    if ver is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, ver)}


def resource_list(group_name: str, ver: str) -> dict[str, Any] | None:
    """``/api/v1`` or ``/apis/<group>/<version>``, or None if not served."""
    listed = resources.resources_of(group_name, ver)
    if not listed:
        return None
    entries = []
    for r in listed:
        sub = r.plural.partition("/")[2]
        entry: dict[str, Any] = {
            "name": r.plural,
            "singularName": "" if sub else r.kind.lower(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(r.verbs),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        entries.append(entry)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group_name}/{ver}" if group_name else ver,
        "resources": entries,
    }
