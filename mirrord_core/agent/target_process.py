"""Finding the target process and noticing when it exits."""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
from pathlib import Path

from mirrord_core.linux.syscalls import syscall

_CONTAINER_ID = re.compile(r"^[0-9a-f]{12,64}$")


class TargetNotFound(Exception):
    """No process matches the requested target."""


def pid_of_container(container_id: str, proc: Path = Path("/proc")) -> int:
    """The lowest PID whose cgroup path names ``container_id`` (any container runtime).

    Runtimes name the container in the cgroup path (``…/cri-containerd-<id>.scope``,
    ``…/docker/<id>``, ``…/crio-<id>.scope``), so scanning ``/proc/*/cgroup`` finds it
    without asking the runtime.
    """
    container_id = container_id.split("://", 1)[-1].lower()
    if not _CONTAINER_ID.match(container_id):
        raise TargetNotFound(f"{container_id!r} is not a container id")
    found: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup = (entry / "cgroup").read_text()
        except OSError:
            continue
        if container_id in cgroup:
            found.append(int(entry.name))
    if not found:
        raise TargetNotFound(f"no process of container {container_id} runs on this node")
    return min(found)


def check_alive(pid: int) -> None:
    """Raise :class:`TargetNotFound` unless process ``pid`` exists."""
    if pid <= 0 or not Path(f"/proc/{pid}").exists():
        raise TargetNotFound(f"no process with pid {pid}")


async def wait_for_exit(pid: int) -> None:
    """Return when process ``pid`` exits (a pidfd becomes readable then)."""
    try:
        pidfd = syscall("pidfd_open", ctypes.c_int(pid), ctypes.c_uint(0))
    except OSError:
        return  # already gone
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
