"""Shared fixtures of the end-to-end agent tests: sandbox pods, real local agents, sessions.

- ``sandbox`` (one per test module): the demo pods ``web`` and ``api`` plus the pods the
  module lists in a module-level ``EXTRA_PODS``.
- ``agent_for(pid, environ=…, flags=…)``: a real ``mirrord agent`` for process ``pid``,
  spawned through the plugin hooks exactly as ``mirrord run`` does (``resolve_target`` then
  ``spawn_agent``) and released after the test.
- ``agent_pid(endpoint)``: the pid of the agent process behind an endpoint.
- ``open_session(endpoint)``: ``async with open_session(endpoint) as session: …``.
- ``run(coro, timeout=…)``: run a coroutine in a fresh event loop with a hard timeout.
- ``host_secret`` (one per module): a directory on the host, outside every pod root, with
  a secret file no agent may ever reveal or change.

Needs root (network namespaces, chroot, setns), as the sandbox does; CI has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from mirrord_core.config import resolve
from mirrord_core.plugin_manager import get_plugins
from mirrord_core.sandbox import Sandbox
from mirrord_core.sandbox.demo import demo_pods
from mirrord_core.session import Session
from mirrord_core.target_model import AgentEndpoint

AgentFactory = Callable[..., AgentEndpoint]
SessionOpener = Callable[..., contextlib.AbstractAsyncContextManager[Session]]
Runner = Callable[..., Any]


@pytest.fixture(scope="module")
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """The demo pods (plus the module's ``EXTRA_PODS``), torn down after the module."""
    extra = list(getattr(request.module, "EXTRA_PODS", ()))
    with Sandbox.create([*demo_pods(), *extra]) as sb:
        yield sb


def _process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.fixture
def agent_for() -> Iterator[AgentFactory]:
    """Spawn a real agent for a pid through the target plugin; released after the test.

    ``environ`` and ``flags`` go to config resolution (e.g.
    ``environ={"MIRRORD_AGENT_COMMUNICATION_TIMEOUT": "5"}``).
    """
    spawned: list[AgentEndpoint] = []

    def spawn(
        pid: int,
        *,
        environ: Mapping[str, str] | None = None,
        flags: Mapping[str, Any] | None = None,
    ) -> AgentEndpoint:
        loaded = get_plugins()
        resolved = resolve(
            loaded.layout,
            environ=dict(environ or {}),
            flags={"target": f"pid/{pid}", **(flags or {})},
        )
        target = loaded.manager.hook.resolve_target(config=resolved.config)
        endpoint = loaded.manager.hook.spawn_agent(config=resolved.config, target=target)
        assert isinstance(endpoint, AgentEndpoint), endpoint
        spawned.append(endpoint)
        return endpoint

    yield spawn
    for endpoint in spawned:
        endpoint.release()
    for endpoint in spawned:
        pid = _pid_of(endpoint)
        assert _process_gone(pid), f"agent {pid} still running after release"


def _pid_of(endpoint: AgentEndpoint) -> int:
    pid = getattr(endpoint.release, "pid", None)
    assert isinstance(pid, int), "the local target plugin's release must expose the agent pid"
    return pid


@pytest.fixture
def agent_pid() -> Callable[[AgentEndpoint], int]:
    """The pid of the local agent process behind an endpoint."""
    return _pid_of


@contextlib.asynccontextmanager
async def _session(endpoint: AgentEndpoint, name: str = "test client") -> AsyncIterator[Session]:
    session = await Session.connect(endpoint, client_name=name)
    try:
        yield session
    finally:
        await session.close()


@pytest.fixture
def open_session() -> SessionOpener:
    """``async with open_session(endpoint, name) as session`` (closed politely on exit)."""
    return _session


def _run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def run() -> Runner:
    """``run(coro, timeout=30)``: the coroutine's result, in a fresh event loop."""
    return _run


@attrs.frozen
class HostSecret:
    """A directory on the host (outside every pod root) holding ``secret.txt``."""

    directory: Path
    file: Path
    content: bytes

    def snapshot(self) -> dict[str, tuple[int, int, bytes]]:
        """Every entry of the directory with its size, mtime and content."""
        return {
            entry.name: (entry.stat().st_size, entry.stat().st_mtime_ns, entry.read_bytes())
            for entry in sorted(self.directory.iterdir())
        }


@pytest.fixture(scope="module")
def host_secret() -> Iterator[HostSecret]:
    directory = Path(tempfile.mkdtemp(prefix="mirrord-host-secret-", dir="/tmp"))
    content = b"HOST SECRET " + os.urandom(8).hex().encode() + b"\n"
    file = directory / "secret.txt"
    file.write_bytes(content)
    try:
        yield HostSecret(directory, file, content)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
