"""The persisted record of a sandbox: everything teardown needs, from any process.

`/run/mirrord-sandbox/<name>/state.json` is written *before* each resource is
created, so even a builder killed halfway leaves a record from which
`Sandbox.down(name)` or `cleanup_stale()` can remove what exists.

The directory is deliberately not configurable: namespaces, routes and
interfaces are machine-wide, and `cleanup_stale()` treats any sandbox
namespace that no state file mentions as an orphan, so every sandbox on the
machine must be recorded in the same place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SandboxError
from .process import ProcessRef

RUN_DIR = Path("/run/mirrord-sandbox")
STATE_FILE = "state.json"
FORMAT_VERSION = 1


def run_dir() -> Path:
    """The directory holding one state directory per sandbox."""
    return RUN_DIR


def state_dir(name: str) -> Path:
    """The state directory of the sandbox called `name`."""
    return run_dir() / name


def list_sandboxes() -> list[str]:
    """Names of the sandboxes recorded on this machine (up, building or stale)."""
    return [s.name for s in list_states()]


@dataclass
class PodState:
    """One pod as recorded on disk."""

    name: str
    namespace: str
    ip: str
    netns: str
    veth: str
    root: str
    env: dict[str, str]
    services: list[str]
    log: str
    pid: int | None = None
    pid_start: int | None = None


@dataclass
class SandboxState:
    """One sandbox as recorded on disk.

    `phase` is "building", "up" or "tearing-down". Resources are listed as
    soon as their creation is attempted, so the lists may name things that
    never came to exist; teardown tolerates that.
    """

    name: str
    tag: str
    cidr: str
    gateway: str
    dns_ip: str
    domain: str
    workdir: str
    node_netns: str
    dns_netns: str
    bridge: str
    dns_veth: str
    persistent: bool
    owner_pid: int
    owner_start: int
    phase: str = "building"
    created: float = field(default_factory=time.time)
    netns: list[str] = field(default_factory=list)
    route_installed: bool = False
    route_foreign: bool = False
    dns_pid: int | None = None
    dns_pid_start: int | None = None
    pods: list[PodState] = field(default_factory=list)
    version: int = FORMAT_VERSION

    @property
    def path(self) -> Path:
        """Where this state is stored."""
        return state_dir(self.name) / STATE_FILE

    def save(self) -> None:
        """Write atomically, so a reader never sees half a file."""
        directory = state_dir(self.name)
        run_dir().mkdir(parents=True, exist_ok=True)
        # Private: the state holds the pods' environments, which may be secrets.
        directory.mkdir(mode=0o700, exist_ok=True)
        tmp = directory / f".{STATE_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, name: str) -> SandboxState | None:
        """Read the state of `name`, or None if there is no such sandbox."""
        path = state_dir(name) / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SandboxError(f"cannot read sandbox state {path}: {exc}") from exc
        if raw.get("version") != FORMAT_VERSION:
            raise SandboxError(
                f"{path} has state format {raw.get('version')}, expected {FORMAT_VERSION}; "
                "tear it down with the mirrord version that created it"
            )
        raw["pods"] = [PodState(**pod) for pod in raw.get("pods", [])]
        return cls(**raw)

    def process_refs(self) -> list[ProcessRef]:
        """The recorded long-running processes (pods' main processes and dnsmasq)."""
        refs = []
        for pid, start in [(p.pid, p.pid_start) for p in self.pods] + [
            (self.dns_pid, self.dns_pid_start)
        ]:
            if pid is not None and start is not None:
                refs.append(ProcessRef(pid, start))
        return refs

    def owner_alive(self) -> bool:
        """Whether the process that created this sandbox still runs."""
        return ProcessRef(self.owner_pid, self.owner_start).alive()

    def is_stale(self) -> bool:
        """Left behind: its owner died before it was complete, or it was never
        meant to outlive its owner. Sandboxes from `Sandbox.up` are not stale."""
        if self.owner_alive():
            return False
        return not (self.persistent and self.phase == "up")


def list_states() -> list[SandboxState]:
    """Every readable sandbox state on this machine."""
    try:
        names = sorted(p.name for p in run_dir().iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    states = []
    for name in names:
        with contextlib.suppress(SandboxError):
            if (state := SandboxState.load(name)) is not None:
                states.append(state)
    return states


_lock = threading.RLock()
_lock_depth = 0
_lock_fd: int | None = None


@contextlib.contextmanager
def global_lock() -> Iterator[None]:
    """Serialise name/CIDR allocation and host-route changes across processes.

    Re-entrant within a process: flock() on a second descriptor of the same
    file would block on our own lock (teardown of a stale sandbox happens
    while allocating a new one).
    """
    global _lock_depth, _lock_fd
    with _lock:
        if _lock_depth == 0:
            directory = run_dir()
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            _lock_fd = fd
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
            if _lock_depth == 0 and _lock_fd is not None:
                os.close(_lock_fd)
                _lock_fd = None
