"""Running the containers of emulated pods (agent Jobs, ephemeral containers) as processes.

The emulated node has one image: the mirrord agent's. A container whose command is
``mirrord …`` runs as ``<this python> -m mirrord_core.cli …`` with the container's
environment (``$(VAR)`` references expanded as the kubelet does); anything else fails to
start as it would without the binary in the image. The pod spec's security settings are
enforced rather than trusted: without ``privileged`` the process keeps only the default
container capabilities plus ``capabilities.add`` minus ``drop`` (``setpriv``), without
``hostPID`` it gets its own PID namespace with its own ``/proc`` (``unshare``), and
``runAsUser`` is applied, so an agent spec that would fail on a cluster fails here too.

Where the emulation differs from a node, deliberately and only for the agent:

- A pod without a network namespace of its own (an agent Job's pod) lives in the host's,
  where its address is ``127.0.0.1``: ``mirrord agent --listen 0.0.0.0:P`` listens on
  ``127.0.0.1:P`` (never on the machine's other interfaces), and port-forwards to the pod
  connect there.
- Sandbox pods have no PID namespace, so an ephemeral container's ``--ephemeral`` (the
  target is PID 1 of the shared process namespace) becomes ``--container-id <id>`` of its
  target container: the agent finds the same process through the container's cgroup.

Output (stdout and stderr, like a container log) goes to one file per container; exits
are noticed through a pidfd on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirrord_core.sandbox.process import start as start_process

from .store import now

# The capabilities a container runtime (containerd, CRI-O) grants by default.
DEFAULT_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
)
# The agent image's (agent-image/Dockerfile) ENTRYPOINT and CMD, combined with a
# container's command and args as a container runtime combines them.
IMAGE_ENTRYPOINT: tuple[str, ...] = ()
IMAGE_CMD = ("mirrord", "agent", "--help")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_WILDCARDS = ("0.0.0.0", "::", "[::]")
_VAR = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class ContainerStartError(Exception):
    """The container cannot start; ``reason`` is the waiting/terminated reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known variables are replaced, ``$$`` is ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(replace, value)


def container_env(
    container: Mapping[str, Any], fields: Mapping[str, str], pod_name: str
) -> dict[str, str]:
    """The process environment: PATH, HOSTNAME and the container's ``env``.

    ``valueFrom.fieldRef`` is resolved from ``fields`` (``metadata.name``,
    ``status.podIP``, …); other sources resolve to nothing, as an absent optional key.
    """
    env = {"PATH": CONTAINER_PATH, "HOSTNAME": pod_name}
    for var in container.get("env") or []:
        if "value" in var and var["value"] is not None:
            env[var["name"]] = expand(var["value"], env)
        elif (ref := (var.get("valueFrom") or {}).get("fieldRef")) and ref.get(
            "fieldPath"
        ) in fields:
            env[var["name"]] = fields[ref["fieldPath"]]
    return env


def _not_in_image(executable: str) -> ContainerStartError:
    return ContainerStartError(
        "StartError",
        "failed to create containerd task: failed to create shim task: OCI runtime create "
        "failed: runc create failed: unable to start container process: exec: "
        f'"{executable}": executable file not found in $PATH: unknown',
    )


def _rewrite_agent_args(
    args: Sequence[str], *, loopback: bool, ephemeral_container_id: str | None
) -> list[str]:
    out: list[str] = []
    items = list(args)
    index = 0
    while index < len(items):
        arg = items[index]
        if arg == "--listen" and index + 1 < len(items) and loopback:
            host, _, port = items[index + 1].rpartition(":")
            if host in _WILDCARDS:
                out += ["--listen", f"127.0.0.1:{port}"]
                index += 2
                continue
        if arg.startswith("--listen=") and loopback:
            host, _, port = arg.removeprefix("--listen=").rpartition(":")
            if host in _WILDCARDS:
                arg = f"--listen=127.0.0.1:{port}"
        if arg == "--ephemeral" and ephemeral_container_id is not None:
            out += ["--container-id", ephemeral_container_id]
        else:
            out.append(arg)
        index += 1
    return out


def command_line(
    container: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    loopback: bool,
    ephemeral_container_id: str | None = None,
) -> list[str]:
    """The host argv for the container's command (before security wrappers)."""
    command = [expand(c, env) for c in container.get("command") or []]
    args = [expand(a, env) for a in container.get("args") or []]
    # command replaces the ENTRYPOINT (and drops CMD); args alone replace CMD.
    argv = command + args if command else list(IMAGE_ENTRYPOINT) + (args or list(IMAGE_CMD))
    if not argv or os.path.basename(argv[0]) != "mirrord":
        raise _not_in_image(argv[0] if argv else "")
    rest = argv[1:]
    if rest[:1] == ["agent"]:
        rest = [
            "agent",
            *_rewrite_agent_args(
                rest[1:], loopback=loopback, ephemeral_container_id=ephemeral_container_id
            ),
        ]
    return [sys.executable, "-m", "mirrord_core.cli", *rest]


def _capabilities(security: Mapping[str, Any]) -> list[str] | None:
    """The capability set of a non-privileged container (None: all, privileged)."""
    if security.get("privileged"):
        return None
    caps = security.get("capabilities") or {}
    drop = {c.upper().removeprefix("CAP_") for c in caps.get("drop") or []}
    add = {c.upper().removeprefix("CAP_") for c in caps.get("add") or []}
    if "ALL" in add:
        return None if "ALL" not in drop else sorted(add - {"ALL"})
    base = set() if "ALL" in drop else set(DEFAULT_CAPABILITIES) - drop
    return sorted(base | add)


def security_wrapper(
    pod_spec: Mapping[str, Any], container: Mapping[str, Any], *, own_pid_namespace: bool
) -> list[str]:
    """``unshare``/``setpriv`` prefix that enforces the pod's and container's security."""
    pod_security = pod_spec.get("securityContext") or {}
    security = {**pod_security, **(container.get("securityContext") or {})}
    prefix: list[str] = []
    if own_pid_namespace:
        prefix += ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", "--"]
    setpriv: list[str] = []
    caps = _capabilities(security)
    if caps is not None:
        bounding = ",".join(["-all", *(f"+{c.lower()}" for c in caps)])
        setpriv += ["--bounding-set", bounding, "--inh-caps", "-all"]
    user, group = security.get("runAsUser"), security.get("runAsGroup")
    if user not in (None, 0):
        setpriv += ["--reuid", str(user), "--clear-groups"]
    if group not in (None, 0):
        setpriv += ["--regid", str(group)]
    if setpriv:
        prefix += ["setpriv", *setpriv, "--"]
    return prefix


@dataclass
class ContainerProcess:
    """A started container: its process, log and state as the pod status shows it."""

    name: str
    container_id: str
    image: str
    log_path: Path
    process: subprocess.Popen[bytes]
    started_at: str = field(default_factory=now)
    finished_at: str | None = None
    exit_code: int | None = None
    stopping: bool = False

    @property
    def running(self) -> bool:
        """True until the process has exited."""
        return self.exit_code is None

    def state(self) -> dict[str, Any]:
        """``ContainerState``: running, or terminated with exit code and reason."""
        if self.exit_code is None:
            return {"running": {"startedAt": self.started_at}}
        return {
            "terminated": {
                "exitCode": self.exit_code,
                "reason": "Completed" if self.exit_code == 0 else "Error",
                "startedAt": self.started_at,
                "finishedAt": self.finished_at,
                "containerID": f"containerd://{self.container_id}",
            }
        }

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the container's main process if it still runs."""
        if self.exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


class LocalContainerRuntime:
    """Starts containers as local processes and reports their exits on the event loop."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._running: dict[int, tuple[ContainerProcess, int]] = {}

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        """Where a container's output goes (``<ns>_<pod>_<container>.log``)."""
        return self.log_dir / f"{namespace}_{pod}_{container}.log"

    def start(
        self,
        *,
        namespace: str,
        pod: str,
        container_id: str,
        container: Mapping[str, Any],
        argv: Sequence[str],
        env: Mapping[str, str],
        on_exit: Callable[[ContainerProcess], None],
    ) -> ContainerProcess:
        """Start ``argv``; ``on_exit`` runs on the loop once it exited."""
        log_path = self.log_path(namespace, pod, container["name"])
        try:
            process = start_process(argv, env, log_path)
        except OSError as err:
            raise _not_in_image(argv[0]) from err
        run = ContainerProcess(
            name=container["name"],
            container_id=container_id,
            image=container.get("image", ""),
            log_path=log_path,
            process=process,
        )
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(process.pid)
        self._running[pidfd] = (run, pidfd)
        loop.add_reader(pidfd, self._exited, pidfd, on_exit)
        return run

    def _exited(self, pidfd: int, on_exit: Callable[[ContainerProcess], None]) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(pidfd)
        os.close(pidfd)
        run, _ = self._running.pop(pidfd)
        code = run.process.wait()
        run.exit_code = 128 - code if code < 0 else code
        run.finished_at = now()
        on_exit(run)

    async def stop(self, run: ContainerProcess, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns once it exited."""
        run.stopping = True
        run.signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + grace
        while run.exit_code is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        run.signal(signal.SIGKILL)
        while run.exit_code is None:
            await asyncio.sleep(0.02)

    async def stop_all(self, grace: float = 5.0) -> None:
        """Stop every container still running (the emulator is shutting down)."""
        runs = [run for run, _ in self._running.values()]
        await asyncio.gather(*(self.stop(run, grace) for run in runs))
