"""Where cgroup v2 lives on this machine, and which group a process is in."""

from __future__ import annotations

from pathlib import Path


def cgroup2_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or, on hybrid
    systems, ``/sys/fs/cgroup/unified``), or None if it is not."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        # "... mount-point options - fstype source super-options"
        before, _, after = line.partition(" - ")
        if after.split(" ", 1)[0] == "cgroup2":
            return Path(before.split()[4])
    return None


def cgroup_of(pid: int) -> str | None:
    """The cgroup v2 path of ``pid`` (``/user.slice/…``), or None if it is gone."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None
