"""Network namespaces, veth pairs, the bridge and the host's unreachable route.

Every operation goes through iproute2's `ip`. Deletions are "ensure absent":
they succeed when the object is already gone, so teardown can be repeated and
can run over a sandbox that was only half built.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .errors import SandboxError

NETNS_DIR = Path("/run/netns")


def netns_path(name: str) -> Path:
    """The bind mount that keeps a named namespace alive (what `setns` opens)."""
    return NETNS_DIR / name


def netns_exists(name: str) -> bool:
    """Whether a named network namespace exists."""
    return netns_path(name).exists()


def list_netns() -> list[str]:
    """Names of all named network namespaces on this machine."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def pids_in_netns(name: str) -> list[int]:
    """PIDs of every process whose network namespace is the named one.

    Compares namespace identities (device + inode) rather than trusting
    recorded PIDs, so it also finds children and `exec_in` stragglers.
    """
    try:
        target = os.stat(netns_path(name))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found


class Ip:
    """Thin wrapper around the `ip` binary with sandbox-friendly semantics."""

    def __init__(self, path: str) -> None:
        self.path = path

    def run(
        self, *args: str, netns: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `ip [-n NETNS] ARGS...`; raise SandboxError on failure if `check`."""
        argv = [self.path]
        if netns is not None:
            argv += ["-n", netns]
        argv += list(args)
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        if check and proc.returncode != 0:
            raise SandboxError(
                f"`{' '.join(argv)}` failed (exit {proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def json(self, *args: str, netns: str | None = None) -> list[dict[str, object]]:
        """Run `ip -j ARGS...` and parse its JSON output."""
        out = self.run("-j", *args, netns=netns).stdout.strip()
        return json.loads(out) if out else []

    # namespaces --------------------------------------------------------------

    def add_netns(self, name: str) -> None:
        """Create a named namespace with its loopback up."""
        self.run("netns", "add", name)
        self.run("link", "set", "lo", "up", netns=name)

    def delete_netns(self, name: str) -> None:
        """Remove a named namespace; a no-op if it does not exist."""
        if not netns_exists(name):
            return
        proc = self.run("netns", "delete", name, check=False)
        if proc.returncode != 0 and netns_exists(name):
            raise SandboxError(f"cannot delete network namespace {name}: {proc.stderr.strip()}")

    # links -------------------------------------------------------------------

    def add_bridge(self, netns: str, bridge: str, address: ipaddress.IPv4Interface) -> None:
        """Create an addressed, up bridge inside `netns`."""
        self.run("link", "add", bridge, "type", "bridge", netns=netns)
        self.run("addr", "add", str(address), "dev", bridge, netns=netns)
        self.run("link", "set", bridge, "up", netns=netns)

    def add_veth_to_bridge(
        self,
        node_netns: str,
        bridge: str,
        node_side: str,
        peer_netns: str,
        address: ipaddress.IPv4Interface,
        gateway: ipaddress.IPv4Address,
        peer_name: str = "eth0",
    ) -> None:
        """Connect `peer_netns` to the bridge with a veth pair.

        The pair is created inside the node namespace with its peer placed
        directly into the pod namespace, so no end ever appears in the host
        namespace (where names could collide and traffic could be routed).
        """
        self.run(
            "link",
            "add",
            node_side,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "netns",
            peer_netns,
            netns=node_netns,
        )
        self.run("link", "set", node_side, "master", bridge, "up", netns=node_netns)
        self.run("addr", "add", str(address), "dev", peer_name, netns=peer_netns)
        self.run("link", "set", peer_name, "up", netns=peer_netns)
        self.run("route", "add", "default", "via", str(gateway), netns=peer_netns)

    def delete_link(self, netns: str, name: str) -> None:
        """Remove a link inside `netns`; a no-op if it or the namespace is gone."""
        if not netns_exists(netns):
            return
        proc = self.run("link", "delete", name, netns=netns, check=False)
        if proc.returncode != 0 and self.link_exists(netns, name):
            raise SandboxError(f"cannot delete link {name} in {netns}: {proc.stderr.strip()}")

    def link_exists(self, netns: str | None, name: str) -> bool:
        """Whether a link called `name` exists in `netns` (None: host namespace)."""
        if netns is not None and not netns_exists(netns):
            return False
        return self.run("link", "show", name, netns=netns, check=False).returncode == 0

    def link_names(self, netns: str | None = None) -> list[str]:
        """Names of all links in `netns` (None: host namespace)."""
        return [str(link["ifname"]) for link in self.json("link", "show", netns=netns)]

    # host routes -------------------------------------------------------------

    def host_ipv4_routes(self) -> list[dict[str, object]]:
        """IPv4 routes of the host's main and local tables."""
        return self.json("-4", "route", "show", "table", "main") + self.json(
            "-4", "route", "show", "table", "local"
        )

    def unreachable_route_exists(self, cidr: ipaddress.IPv4Network) -> bool:
        """Whether the host has exactly `unreachable CIDR` in its main table."""
        for route in self.json("-4", "route", "show", "table", "main"):
            if route.get("type") == "unreachable" and _route_dst(route) == cidr:
                return True
        return False

    def install_unreachable_route(self, cidr: ipaddress.IPv4Network) -> None:
        """Make the host answer "No route to host" for the pod CIDR."""
        self.run("route", "replace", "unreachable", str(cidr))

    def remove_unreachable_route(self, cidr: ipaddress.IPv4Network) -> None:
        """Remove `unreachable CIDR` from the host; a no-op if absent."""
        if not self.unreachable_route_exists(cidr):
            return
        proc = self.run("route", "delete", "unreachable", str(cidr), check=False)
        if proc.returncode != 0 and self.unreachable_route_exists(cidr):
            raise SandboxError(f"cannot delete route unreachable {cidr}: {proc.stderr.strip()}")


def _route_dst(route: dict[str, object]) -> ipaddress.IPv4Network | None:
    dst = route.get("dst")
    if not isinstance(dst, str) or dst == "default":
        return None
    try:
        return ipaddress.IPv4Network(dst, strict=False)
    except ValueError:
        return None


def conflicting_host_routes(
    routes: Sequence[dict[str, object]], cidr: ipaddress.IPv4Network
) -> list[str]:
    """Host routes (other than the default and unreachable ones) overlapping `cidr`.

    Installing our unreachable route over such a prefix would cut the host off
    from a network it really uses, so these make a CIDR unusable.
    """
    conflicts = []
    for route in routes:
        dst = _route_dst(route)
        if dst is None or route.get("type") == "unreachable":
            continue
        if dst.overlaps(cidr):
            conflicts.append(f"{route.get('type', 'unicast')} {dst} dev {route.get('dev', '?')}")
    return conflicts


def occupied_prefixes(routes: Sequence[dict[str, object]]) -> list[ipaddress.IPv4Network]:
    """Every non-default destination prefix in `routes`, unreachable ones included."""
    return [dst for route in routes if (dst := _route_dst(route)) is not None]
