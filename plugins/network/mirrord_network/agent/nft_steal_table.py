"""The nftables table through which one agent steals ports, driven with the ``nft`` CLI.

Each agent owns one ``inet`` table (IPv4 and IPv6) in the target's network namespace::

    table inet mirrord_<pid>_<start time>_<pid namespace>_<random> {
        set ports { type inet_service; flags timeout; }
        chain prerouting {
            type nat hook prerouting priority dstnat - 1; policy accept;
            tcp dport @ports redirect to :<agent listener port>
        }
    }

Stolen ports are elements of ``ports`` that expire :data:`ELEMENT_TIMEOUT` after they were
last refreshed, and the agent refreshes them every :data:`REFRESH_INTERVAL`. An agent killed
with ``kill -9`` therefore stops stealing by itself within :data:`ELEMENT_TIMEOUT`, without
anyone removing its rules; the empty table it leaves is deleted by the next agent that starts
in the namespace (:func:`sweep_stale_tables`). The chain runs just before the usual ``dstnat``
priority, so it takes precedence over other redirects (e.g. iptables' ``nat PREROUTING``).

The owner's pid, its start time and its pid namespace are part of the table's name, so a
table whose agent is gone is recognised even when the pid has been reused, and tables of
agents in another pid namespace (whose pids mean nothing here) are never taken for stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable

import attrs

#: How long a stolen port stays in the set without a refresh, in seconds.
ELEMENT_TIMEOUT = 3
#: How often the agent refreshes its stolen ports, in seconds.
REFRESH_INTERVAL = 1.0
TABLE_PREFIX = "mirrord_"
_FAMILY = "inet"
_SET = "ports"
_TABLE_NAME = re.compile(r"mirrord_(?P<pid>\d+)_(?P<start>\d+)_(?P<pidns>\d+)_[0-9a-f]+")
_NFT_TIMEOUT = 30.0


class NftablesError(Exception):
    """An ``nft`` command failed; the message gives nft's own error lines."""


@attrs.frozen
class TableOwner:
    """The agent process a table belongs to, as encoded in the table's name."""

    pid: int
    start_time: int
    pid_namespace: int

    @classmethod
    def current(cls) -> TableOwner:
        """This process."""
        return cls(os.getpid(), _start_time(os.getpid()) or 0, _pid_namespace())

    @classmethod
    def from_table_name(cls, name: str) -> TableOwner | None:
        """The owner encoded in a mirrord table's name (``None`` for other names)."""
        match = _TABLE_NAME.fullmatch(name)
        if match is None:
            return None
        return cls(int(match["pid"]), int(match["start"]), int(match["pidns"]))

    def is_gone(self) -> bool:
        """True when the owner is known to be dead (never for another pid namespace)."""
        if self.pid_namespace != _pid_namespace():
            return False
        return _start_time(self.pid) != self.start_time


def _pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``None`` if it does not exist)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 22 of stat; ``fields`` starts at field 3 (state). A zombie is as good as gone.
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _nft_binary() -> str:
    path = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise NftablesError("the nft command is not installed (Debian package: nftables)")
    return path


def _failure(action: str, returncode: int, stderr: str) -> NftablesError:
    # nft prints "[<file>:<line>:<columns>: ]Error: <what>", then the offending line.
    errors = [line.partition("Error:")[2].strip() for line in stderr.splitlines()]
    errors = [error for error in errors if error]
    detail = "; ".join(errors) or stderr.strip() or f"exit status {returncode}"
    return NftablesError(f"nft could not {action}: {detail}")


def _run(argv: list[str], action: str, script: str | None = None) -> str:
    try:
        done = subprocess.run(
            [_nft_binary(), *argv],
            input=script,
            capture_output=True,
            text=True,
            timeout=_NFT_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise NftablesError(f"nft could not {action}: no answer in {_NFT_TIMEOUT:g} s") from None
    if done.returncode != 0:
        raise _failure(action, done.returncode, done.stderr)
    return done.stdout


def run_nft(script: str, action: str) -> None:
    """Run ``nft -f -`` with ``script``, one atomic transaction (blocking); ``action``
    names it in errors."""
    _run(["-f", "-"], action, script)


def list_nft_json(*command: str) -> list[dict[str, object]]:
    """The items of ``nft -j <command>`` (``-j`` prints nothing for ``-f`` scripts)."""
    output = _run(["-j", *command], " ".join(command))
    if not output.strip():
        return []
    try:
        return list(json.loads(output).get("nftables", []))
    except (ValueError, AttributeError):
        message = f"nft printed something that is not its JSON: {output[:200]!r}"
        raise NftablesError(message) from None


async def run_nft_async(script: str, action: str) -> None:
    """:func:`run_nft` without blocking the event loop."""
    process = await asyncio.create_subprocess_exec(
        _nft_binary(),
        "-f",
        "-",
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(script.encode()), _NFT_TIMEOUT)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise _failure(action, process.returncode or 1, stderr.decode(errors="replace"))


def mirrord_tables() -> list[str]:
    """Names of the ``inet`` tables in this namespace that look like mirrord's."""
    names = []
    for item in list_nft_json("list", "tables", _FAMILY):
        table = item.get("table")
        if isinstance(table, dict) and str(table.get("name", "")).startswith(TABLE_PREFIX):
            names.append(str(table["name"]))
    return names


def table_ports(table: str) -> set[int]:
    """The ports currently (not yet expired) in ``table``'s set; empty if it has none."""
    try:
        items = list_nft_json("list", "set", _FAMILY, table, _SET)
    except NftablesError:
        return set()  # deleted meanwhile, or not a table of ours
    ports: set[int] = set()
    for item in items:
        nft_set = item.get("set")
        if not isinstance(nft_set, dict):
            continue
        for element in nft_set.get("elem", []) or []:
            value = element.get("elem", {}).get("val") if isinstance(element, dict) else element
            if isinstance(value, int):
                ports.add(value)
    return ports


def sweep_stale_tables() -> list[str]:
    """Delete the tables of agents that are gone; returns their names."""
    removed = []
    for name in mirrord_tables():
        owner = TableOwner.from_table_name(name)
        if owner is None or not owner.is_gone():
            continue
        with contextlib.suppress(NftablesError):  # another agent swept it first
            run_nft(f"delete table {_FAMILY} {name}\n", f"delete the stale table {name}")
            removed.append(name)
    return removed


def port_stolen_elsewhere(port: int, own_table: str) -> bool:
    """True when a live agent's table (other than ``own_table``) is stealing ``port``."""
    for name in mirrord_tables():
        if name == own_table:
            continue
        owner = TableOwner.from_table_name(name)
        if owner is not None and owner.is_gone():
            continue  # its elements expire within ELEMENT_TIMEOUT; the sweep removes it
        if port in table_ports(name):
            return True
    return False


def _elements(ports: Iterable[int], *, timeout: bool) -> str:
    suffix = f" timeout {ELEMENT_TIMEOUT}s" if timeout else ""
    return ", ".join(f"{port}{suffix}" for port in sorted(ports))


class StealTable:
    """This agent's table: created once, ports added, refreshed and removed, then deleted."""

    def __init__(self, listener_port: int, owner: TableOwner | None = None) -> None:
        owner = owner or TableOwner.current()
        self.listener_port = listener_port
        self.name = (
            f"{TABLE_PREFIX}{owner.pid}_{owner.start_time}_{owner.pid_namespace}_"
            f"{secrets.token_hex(3)}"
        )

    def _definition(self) -> str:
        target = f"{_FAMILY} {self.name}"
        # Deleting and re-adding in one transaction is atomic: no packet sees the table
        # missing, and a table left by an earlier attempt is replaced.
        return (
            f"add table {target}\n"
            f"delete table {target}\n"
            f"table {target} {{\n"
            f"  set {_SET} {{\n    type inet_service\n    flags timeout\n  }}\n"
            f"  chain prerouting {{\n"
            f"    type nat hook prerouting priority dstnat - 1; policy accept;\n"
            f"    tcp dport @{_SET} redirect to :{self.listener_port}\n"
            f"  }}\n"
            f"}}\n"
        )

    def _refresh_script(self, ports: Iterable[int]) -> str:
        # A plain ``add element`` leaves an existing element's expiry alone (kernel 6.x);
        # add (so the delete cannot fail), delete and add again restarts its timeout, and
        # the transaction is atomic: the port is never missing from the set.
        ports = sorted(ports)
        if not ports:
            return ""
        target = f"element {_FAMILY} {self.name} {_SET}"
        return (
            f"add {target} {{ {_elements(ports, timeout=True)} }}\n"
            f"delete {target} {{ {_elements(ports, timeout=False)} }}\n"
            f"add {target} {{ {_elements(ports, timeout=True)} }}\n"
        )

    def create(self) -> None:
        """Create the table (and its empty set and redirect chain)."""
        run_nft(self._definition(), f"create the table {self.name}")

    def add_port(self, port: int) -> None:
        """Start redirecting ``port`` (refreshed by :meth:`refresh` from then on)."""
        run_nft(self._refresh_script([port]), f"steal port {port}")

    def remove_port(self, port: int) -> None:
        """Stop redirecting ``port`` for new connections (it may have expired already)."""
        target = f"element {_FAMILY} {self.name} {_SET}"
        script = f"add {target} {{ {port} timeout 1s }}\ndelete {target} {{ {port} }}\n"
        run_nft(script, f"release port {port}")

    async def refresh(self, ports: Iterable[int]) -> None:
        """Restart the timeouts of ``ports``; recreates the table if it was deleted."""
        ports = sorted(ports)
        if not ports:
            return
        try:
            await run_nft_async(self._refresh_script(ports), "refresh the stolen ports")
        except NftablesError:
            # Someone deleted our table (e.g. an administrator): put it back.
            await run_nft_async(
                self._definition() + self._refresh_script(ports), f"recreate {self.name}"
            )

    def delete(self) -> None:
        """Remove the table (idempotent)."""
        target = f"{_FAMILY} {self.name}"
        run_nft(f"add table {target}\ndelete table {target}\n", f"delete {self.name}")
