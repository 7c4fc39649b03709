"""``agent.pause``: freeze the target's processes while clients are connected.

A container target (the agent was given a container id) is frozen through its cgroup v2
``cgroup.freeze``, which also holds processes the container starts meanwhile. A ``pid/``
target shares its cgroup with unrelated processes of this machine (freezing it could
freeze mirrord itself), so its process tree gets SIGSTOP instead, and SIGCONT afterwards.

Thawing must happen on every way out, including ``kill -9`` of the agent, which runs no
code. So freezing first starts a watchdog process that holds the read end of a pipe whose
write end only the agent has: when the agent ends, however it ends, the pipe reports EOF
and the watchdog thaws the target.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from mirrord_core.linux.cgroups import cgroup2_mount, cgroup_of
from mirrord_core.linux.process_family import process_tree

log = logging.getLogger("mirrord.agent")


class FreezeError(Exception):
    """The target cannot be frozen; the message says why."""


def container_cgroup(pid: int) -> Path:
    """The cgroup v2 directory of process ``pid``."""
    mount = cgroup2_mount()
    group = cgroup_of(pid)
    if mount is None or group is None:
        raise FreezeError(f"pid {pid} is in no cgroup v2 group (is cgroup v2 mounted?)")
    path = mount / group.lstrip("/")
    if path == mount or not (path / "cgroup.freeze").exists():
        raise FreezeError(f"pid {pid} is not in a freezable cgroup v2 group ({group})")
    return path


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue


def _write_freeze(cgroup: Path, value: str) -> None:
    (cgroup / "cgroup.freeze").write_text(value)


def thaw(plan: dict[str, object]) -> None:
    """Undo a freeze described by ``plan`` (also what the watchdog runs)."""
    cgroup = plan.get("cgroup")
    if isinstance(cgroup, str):
        try:
            _write_freeze(Path(cgroup), "0")
        except OSError as err:
            log.warning("cannot thaw cgroup %s: %s", cgroup, err)
    pids = plan.get("pids")
    if isinstance(pids, list):
        _signal_all(reversed([int(p) for p in pids]), signal.SIGCONT)


class TargetFreezer:
    """Freezes one target on :meth:`freeze`, thaws it on :meth:`thaw` or when we die."""

    def __init__(self, pid: int, *, container: bool) -> None:
        self.pid = pid
        self.container = container
        self._plan: dict[str, object] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._pipe: int | None = None

    @property
    def frozen(self) -> bool:
        return self._plan is not None

    def freeze(self) -> None:
        """Freeze the target (no-op when it is frozen already)."""
        if self._plan is not None:
            return
        if self.container:
            plan: dict[str, object] = {"cgroup": str(container_cgroup(self.pid))}
        else:
            plan = {"pids": process_tree(self.pid)}
        self._start_watchdog(plan)
        self._plan = plan
        if "cgroup" in plan:
            _write_freeze(Path(str(plan["cgroup"])), "1")
        else:
            _signal_all(plan["pids"], signal.SIGSTOP)  # type: ignore[arg-type]
        log.info("target paused (%s)", "cgroup freezer" if self.container else "SIGSTOP")

    def thaw(self) -> None:
        """Let the target run again (no-op when it is not frozen)."""
        plan, self._plan = self._plan, None
        if plan is None:
            return
        thaw(plan)
        self._stop_watchdog()
        log.info("target resumed")

    def _start_watchdog(self, plan: dict[str, object]) -> None:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "mirrord_core.agent.target_freezer", json.dumps(plan)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                # Its own session: a Ctrl-C meant for the agent must not stop the watchdog.
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        self._pipe = write_end

    def _stop_watchdog(self) -> None:
        if self._pipe is not None:
            os.close(self._pipe)  # EOF: the watchdog thaws (again, harmlessly) and exits
            self._pipe = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
            self._watchdog = None


def _watchdog_main(plan_text: str) -> None:
    plan = json.loads(plan_text)
    # Wait for EOF on stdin: the agent closed its end, or died.
    while sys.stdin.buffer.read(4096):
        pass
    thaw(plan)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watchdog_main(sys.argv[1])
