"""Removing a sandbox, from its state file alone.

Teardown only needs the state file and `ip`, so it works from any process,
after the creator died, and over a half-built sandbox. Every step runs even
when an earlier one failed; the state file is kept (and the error raised)
only if something is left, so `down` can simply be repeated.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from . import process
from .errors import SandboxError
from .netns import Ip, list_netns, pids_in_netns
from .state import SandboxState, global_lock, list_states, state_dir
from .tools import find_ip, require_root

log = logging.getLogger("mirrord.sandbox")

NETNS_PREFIX = "msb-"
WORKDIR_PREFIX = "mirrord-sandbox-"


def _netns_processes(names: Iterable[str]) -> list[process.ProcessRef]:
    refs = []
    for name in names:
        for pid in pids_in_netns(name):
            if (ref := process.ProcessRef.of(pid)) is not None:
                refs.append(ref)
    return refs


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory).rstrip("/") + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    # Field 5 is the mount point (octal escapes for spaces are irrelevant here
    # since our directories contain none).
    return [p for line in lines if (p := line.split()[4]) == prefix[:-1] or p.startswith(prefix)]


def remove_workdir(workdir: str) -> None:
    """Delete a sandbox's temporary directory (pod roots), refusing anything else."""
    path = Path(workdir)
    if not path.is_absolute() or not path.name.startswith(WORKDIR_PREFIX):
        raise SandboxError(f"refusing to delete {workdir}: not a sandbox work directory")
    if not path.exists():
        return
    # rmtree would descend into a mount and delete the mounted file system's
    # content; pods mount only in their private namespaces, so this is a bug.
    if mounts := _mounts_under(path):
        raise SandboxError(f"refusing to delete {workdir}: file systems mounted under it: {mounts}")
    shutil.rmtree(path, onerror=_ignore_vanished)
    if path.exists():
        raise SandboxError(f"{workdir} still exists after deleting it")


def _ignore_vanished(
    function: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]
) -> None:
    # A concurrent cleanup may delete entries under our feet; that is fine.
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def teardown(state: SandboxState, *, children: Iterable[subprocess.Popen[bytes]] = ()) -> bool:
    """Remove everything `state` records; raise SandboxError listing leftovers.

    `children` are Popen objects of this process for the sandbox's processes,
    polled so that they are reaped rather than left as zombies. Returns False
    if the sandbox was already gone.
    """
    require_root()
    children = list(children)
    # One teardown at a time machine-wide: two processes removing the same
    # sandbox (say `down` and another run's `cleanup_stale`) would trip over
    # each other's half-deleted links. Teardowns are short, builds do not
    # hold this lock, so serialising costs little.
    with global_lock():
        try:
            recorded = SandboxState.load(state.name)
        except SandboxError:
            recorded = state  # unreadable on disk: trust what the caller holds
        if recorded is None or recorded.tag != state.tag:
            # Already removed; the name may even belong to a newer sandbox,
            # whose namespaces (same names) must not be touched.
            for child in children:
                child.poll()
            return False
        # The file is the shared truth: an interrupted earlier teardown may
        # have done part of the work (e.g. released the route).
        _teardown_recorded(recorded, children)
        return True


def _teardown_recorded(state: SandboxState, children: list[subprocess.Popen[bytes]]) -> None:
    ip = Ip(find_ip())
    problems: list[str] = []

    def step(what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except (SandboxError, OSError, subprocess.SubprocessError) as exc:
            problems.append(f"{what}: {exc}")

    def persist() -> None:
        # Never recreate the state of a sandbox that is already fully gone.
        if state.path.exists():
            with contextlib.suppress(OSError):
                state.save()

    state.phase = "tearing-down"
    persist()

    # Processes first: a namespace with live processes outlives `ip netns
    # delete`, and so would its veth. Two rounds catch processes forked
    # while the first round was signalling.
    for _ in range(2):
        refs = state.process_refs() + _netns_processes(state.netns)
        left = process.terminate(refs)
        for child in children:
            child.poll()
    if left:
        problems.append("processes still alive: " + ", ".join(str(r.pid) for r in left))

    # Deleting one end of a veth deletes the other; do it explicitly anyway,
    # so nothing depends on namespace teardown being immediate.
    for pod in state.pods:
        step(f"link {pod.veth}", functools.partial(ip.delete_link, state.node_netns, pod.veth))
    step(f"link {state.dns_veth}", lambda: ip.delete_link(state.node_netns, state.dns_veth))
    step(f"bridge {state.bridge}", lambda: ip.delete_link(state.node_netns, state.bridge))
    for name in reversed(state.netns):
        step(f"namespace {name}", functools.partial(ip.delete_netns, name))

    if state.route_installed:
        step(f"route unreachable {state.cidr}", lambda: _release_route(ip, state))

    step(f"directory {state.workdir}", lambda: remove_workdir(state.workdir))

    if problems:
        persist()
        raise SandboxError(
            f"sandbox {state.name} was not completely removed (run its teardown again):\n  "
            + "\n  ".join(problems)
        )
    shutil.rmtree(state_dir(state.name), ignore_errors=True)


def _release_route(ip: Ip, state: SandboxState) -> None:
    # Under the lock, decide and drop our claim in one go: two sandboxes
    # sharing a CIDR and going down together must not each leave the route
    # to the other.
    with global_lock():
        others = [
            s
            for s in list_states()
            if s.name != state.name and s.cidr == state.cidr and s.route_installed
        ]
        if not others and not state.route_foreign:
            ip.remove_unreachable_route(ipaddress.IPv4Network(state.cidr))
        state.route_installed = False
        if state.path.exists():
            state.save()


def down(name: str) -> bool:
    """Tear down the sandbox called `name`; False if there is no such sandbox."""
    state = SandboxState.load(name)
    return state is not None and teardown(state)


def cleanup_stale() -> list[str]:
    """Remove sandboxes whose creator died, and orphaned sandbox resources.

    A sandbox from `Sandbox.up` whose build completed is never stale; it stays
    until `down`. Returns descriptions of what was removed.
    """
    require_root()
    with global_lock():
        return _cleanup_stale_locked()


def _cleanup_stale_locked() -> list[str]:
    # Resources are listed before states: builds do not hold the lock, but
    # every resource's state is written before the resource is created, so
    # one seen now is either referenced by a state read afterwards or a true
    # orphan.
    namespaces = [n for n in list_netns() if n.startswith(NETNS_PREFIX)]
    tmp = Path(tempfile.gettempdir())
    workdirs = sorted(str(p) for p in tmp.glob(WORKDIR_PREFIX + "*") if p.is_dir())
    states = list_states()
    removed = []
    errors = []
    for state in states:
        if state.is_stale():
            try:
                if teardown(state):
                    removed.append(f"sandbox {state.name}")
            except SandboxError as exc:
                errors.append(str(exc))
    known_netns = {n for s in states for n in s.netns}
    known_workdirs = {s.workdir for s in states}
    ip = Ip(find_ip())
    for name in namespaces:
        if name not in known_netns:
            try:
                left = process.terminate(_netns_processes([name]))
                if left:
                    raise SandboxError(f"processes still alive: {[r.pid for r in left]}")
                ip.delete_netns(name)
                removed.append(f"namespace {name}")
            except SandboxError as exc:
                errors.append(f"orphaned namespace {name}: {exc}")
    for workdir in workdirs:
        if workdir not in known_workdirs:
            try:
                remove_workdir(workdir)
                removed.append(f"directory {workdir}")
            except (SandboxError, OSError) as exc:
                errors.append(f"orphaned directory {workdir}: {exc}")
    for line in removed:
        log.info("removed stale %s", line)
    if errors:
        raise SandboxError("stale sandbox cleanup incomplete:\n  " + "\n  ".join(errors))
    return removed
