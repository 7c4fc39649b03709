"""Starting, probing and stopping the sandbox's long-running processes.

A PID alone is not an identity: once a process is gone its number can be
reused. Processes are therefore recorded as (pid, start time) so that a
teardown running in another process, maybe much later, never signals a
stranger.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import SandboxError

_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"


def _read_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of `pid`, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


@dataclass(frozen=True)
class ProcessRef:
    """A process identified by PID and start time."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        """Reference the process currently running as `pid`, if any."""
        stat = _read_stat(pid)
        return None if stat is None else cls(pid, stat[1])

    def alive(self) -> bool:
        """True while this very process exists and is not a zombie."""
        stat = _read_stat(self.pid)
        return stat is not None and stat[1] == self.start_time and stat[0] not in ("Z", "X")


def start(argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a detached sandbox process with exactly `env`, logging to `log_path`.

    A new session keeps a terminal's Ctrl-C (or the exit of `sandbox up`) from
    reaching pods that are meant to outlive their creator.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    what: str,
    log_path: Path | None = None,
) -> None:
    """Poll `condition` until true; fail early and clearly if `proc` exits."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise SandboxError(
                f"{what}: process exited with status {proc.returncode}{_log_tail(log_path)}"
            )
        if time.monotonic() >= deadline:
            raise SandboxError(f"{what}: not ready after {timeout:.0f}s{_log_tail(log_path)}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _log_tail(log_path: Path | None, lines: int = 10) -> str:
    if log_path is None:
        return ""
    try:
        tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "; log " + str(log_path) + ":\n  " + "\n  ".join(tail) if tail else ""


def root_of(pid: int) -> str | None:
    """The root directory of `pid` as the host sees it, or None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/root")
    except OSError:
        return None


def _sockets(pid: int, table: str) -> list[tuple[int, str]]:
    # /proc/PID/net/* shows the sockets of PID's network namespace, which lets
    # us probe a pod without entering it.
    try:
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
    except OSError:
        return []
    result = []
    for line in lines:
        parts = line.split()
        if len(parts) > 3:
            result.append((int(parts[1].rsplit(":", 1)[1], 16), parts[3]))
    return result


def tcp_listening(pid: int, port: int) -> bool:
    """Whether something in `pid`'s network namespace listens on TCP `port`."""
    return any(
        p == port and st == _TCP_LISTEN
        for table in ("tcp", "tcp6")
        for p, st in _sockets(pid, table)
    )


def udp_bound(pid: int, port: int) -> bool:
    """Whether something in `pid`'s network namespace has UDP `port` bound."""
    return any(
        p == port and st == _UDP_UNCONNECTED
        for table in ("udp", "udp6")
        for p, st in _sockets(pid, table)
    )


def _reap(pid: int) -> None:
    # Our own children stay zombies until waited for; others are reaped by
    # their parent or init, and waitpid then fails with ECHILD.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def terminate(refs: Iterable[ProcessRef], *, grace: float = 2.0) -> list[ProcessRef]:
    """SIGTERM the live processes among `refs`, SIGKILL those left after `grace`.

    Returns the processes that still exist afterwards (should be empty).
    """
    live = [ref for ref in refs if ref.alive()]
    for ref in live:
        _signal(ref, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        for ref in live:
            _reap(ref.pid)
        live = [ref for ref in live if ref.alive()]
        if live:
            time.sleep(0.02)
    for ref in live:
        _signal(ref, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while live and time.monotonic() < deadline:
        for ref in live:
            _reap(ref.pid)
        live = [ref for ref in live if ref.alive()]
        if live:
            time.sleep(0.02)
    return live


def _signal(ref: ProcessRef, sig: signal.Signals) -> None:
    # Re-check identity right before signalling to narrow the PID-reuse window.
    if not ref.alive():
        return
    try:
        os.kill(ref.pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise
