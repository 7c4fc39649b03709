"""Running the agent as a local subprocess for ``pid/`` targets.

A fresh token is generated per session and handed over in the environment (never on the
command line); the agent announces readiness with one JSON line on stdout, which must
arrive within ``agent.startup_timeout``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time

from mirrord_core.target_model import AgentEndpoint, ResolvedTarget
from mirrord_core.user_errors import UserError

TOKEN_ENV = "MIRRORD_AGENT_TOKEN"


class AgentStartError(UserError):
    """The local agent did not start; the message includes what it printed."""


#: How long a released agent gets to exit by itself: it leaves as soon as its last client
#: did, and a SIGTERM arriving during that teardown would end it as "killed".
SELF_EXIT_GRACE = 2.0


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=SELF_EXIT_GRACE)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


class LocalAgentProcess:
    """The spawned agent process; calling it (the endpoint's ``release``) stops it.

    ``pid`` and ``log_path`` say which process serves the session and where it logs.
    """

    def __init__(self, process: subprocess.Popen[bytes], log_path: str) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def __call__(self) -> None:
        _stop(self.process)
        # The log is only worth keeping when something went wrong: a clean exit removes it
        # so every session does not leave a file behind.
        if self.process.returncode == 0:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as log:
            lines = log.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _read_ready_line(process: subprocess.Popen[bytes], timeout: float) -> dict[str, object]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AgentStartError(f"the agent was not ready within {timeout:g} s")
        ready, _, _ = select.select([process.stdout], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            raise AgentStartError("the agent exited before it was ready")
        buffer += chunk
    line = buffer.split(b"\n", 1)[0]
    try:
        return json.loads(line)["ready"]
    except (ValueError, KeyError, TypeError):
        raise AgentStartError(f"unexpected agent output: {line[:200]!r}") from None


def spawn_local_agent(
    target: ResolvedTarget,
    *,
    startup_timeout: float,
    communication_timeout: float | None,
    log_level: str,
    network_interface: str | None = None,
    pause: bool = False,
) -> AgentEndpoint:
    """Start ``mirrord agent`` for a local target and wait until it listens."""
    assert target.pid is not None
    token = secrets.token_hex(32)
    argv = [
        sys.executable,
        "-m",
        "mirrord_core.cli",
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--target-pid",
        str(target.pid),
        "--log-level",
        log_level,
    ]
    if communication_timeout is not None:
        argv += ["--communication-timeout", str(communication_timeout)]
    if network_interface:
        argv += ["--network-interface", network_interface]
    if pause:
        argv.append("--pause")
    env = {**os.environ, TOKEN_ENV: token}
    # The agent's log goes to a file: a pipe nobody drains would block a chatty agent.
    with tempfile.NamedTemporaryFile(prefix="mirrord-agent-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env
        )
    try:
        ready = _read_ready_line(process, startup_timeout)
    except AgentStartError as err:
        _stop(process)
        detail = _last_line(log.name)
        raise AgentStartError(
            f"{err}: {detail} (agent log: {log.name})"
            if detail
            else f"{err} (agent log: {log.name})"
        ) from None
    return AgentEndpoint(
        host=str(ready["host"]),
        port=int(ready["port"]),  # type: ignore[call-overload]
        token=token,
        release=LocalAgentProcess(process, log.name),
    )
