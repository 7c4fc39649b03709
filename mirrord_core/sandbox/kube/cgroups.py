"""Real container ids for sandbox pods: a cgroup v2 group per pod, named after the id.

Container runtimes name the container in its cgroup path
(``…/cri-containerd-<id>.scope``), and the agent finds a container's process by
scanning ``/proc/*/cgroup`` for the id (``pid_of_container``). Moving a sandbox pod's
processes into ``<cgroup2>/mirrord-sandbox.slice/<sandbox>/cri-containerd-<id>.scope``
makes the id the emulated API reports true in exactly that sense; the group also has a
``cgroup.freeze`` like a real container's.

Groups are removed again by moving the processes that are still inside back to where
they came from and removing the (then empty) directories. Groups of sandboxes that no
longer exist are removed by ``remove_stale_groups``.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Iterable
from pathlib import Path

from mirrord_core.linux.cgroups import cgroup2_mount, cgroup_of
from mirrord_core.sandbox.errors import SandboxError

SLICE = "mirrord-sandbox.slice"


def _procs(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _move(pid: int, group: Path) -> None:
    try:
        (group / "cgroup.procs").write_text(str(pid))
    except OSError as err:
        if err.errno != errno.ESRCH:  # the process exited meanwhile: nothing to move
            raise


def _rmdir(group: Path, *, attempts: int = 50) -> None:
    # A process that just exited may still count as a member for a moment (EBUSY).
    for _ in range(attempts):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    group.rmdir()


class ContainerGroups:
    """The cgroups this emulator created for one sandbox, and how to undo them."""

    def __init__(self, sandbox_name: str, mount: Path | None = None) -> None:
        found = mount or cgroup2_mount()
        if found is None:
            raise SandboxError(
                "the Kubernetes emulator needs the cgroup v2 hierarchy (container ids are "
                "cgroup paths) and none is mounted; mount one with "
                "`mount -t cgroup2 none /sys/fs/cgroup/unified`"
            )
        self.mount = found
        self.base = found / SLICE / sandbox_name
        # scope directory -> the cgroup (relative path) its processes came from
        self._origins: dict[Path, str] = {}

    def scope(self, container_id: str) -> Path:
        """The directory of the container's group."""
        return self.base / f"cri-containerd-{container_id}.scope"

    def attach(self, container_id: str, pids: Iterable[int]) -> Path:
        """Create the container's group and move ``pids`` (whole processes) into it."""
        group = self.scope(container_id)
        try:
            group.mkdir(parents=True, exist_ok=True)
            for pid in pids:
                origin = cgroup_of(pid)
                if origin is None:
                    continue
                if not origin.endswith(group.name):
                    self._origins.setdefault(group, origin)
                _move(pid, group)
        except OSError as err:
            raise SandboxError(
                f"cannot put the pod's processes into the cgroup {group}: "
                f"{err.strerror or err} (container ids are cgroup paths; the emulator needs "
                f"a writable cgroup v2 hierarchy at {self.mount})"
            ) from None
        return group

    def release(self) -> list[str]:
        """Move remaining processes back and remove every group; returns what is left."""
        problems = []
        for group in sorted(self._origins) + [g for g in self._scopes() if g not in self._origins]:
            origin = self.mount / self._origins.get(group, "/").lstrip("/")
            try:
                for pid in _procs(group):
                    _move(pid, origin)
                _rmdir(group)
            except OSError as err:
                problems.append(f"cgroup {group}: {err.strerror or err}")
        self._origins.clear()
        for directory in (self.base, self.base.parent):
            with contextlib.suppress(OSError):
                directory.rmdir()  # fails while another sandbox's groups are in the slice
        return problems

    def _scopes(self) -> list[Path]:
        try:
            return sorted(p for p in self.base.iterdir() if p.is_dir())
        except OSError:
            return []


def remove_stale_groups(live_sandboxes: Iterable[str], mount: Path | None = None) -> list[str]:
    """Remove the empty groups of sandboxes that are not in ``live_sandboxes``."""
    found = mount or cgroup2_mount()
    if found is None:
        return []
    live = set(live_sandboxes)
    removed = []
    slice_dir = found / SLICE
    try:
        sandboxes = [p for p in slice_dir.iterdir() if p.is_dir()]
    except OSError:
        return []
    for directory in sandboxes:
        if directory.name in live:
            continue
        for scope in [p for p in directory.iterdir() if p.is_dir()]:
            if not _procs(scope):
                with contextlib.suppress(OSError):
                    scope.rmdir()
                    removed.append(str(scope))
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        slice_dir.rmdir()
    return removed
