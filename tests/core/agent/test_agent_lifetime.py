"""``mirrord agent`` run directly as a process: when it exits, when it refuses to start, its
token and its logs; and starting local agents through the target plugin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mirrord_core.config import resolve
from mirrord_core.plugin_manager import get_plugins
from mirrord_core.sandbox import Sandbox
from mirrord_core.session import Session, SessionError
from mirrord_core.target_model import AgentEndpoint
from mirrord_target.local.local_agent import AgentStartError
from mirrord_target.local.pid_target import TargetError

TOKEN = "lifetime-test-token-0123456789abcdef"
AGENT = [sys.executable, "-m", "mirrord_core.cli", "agent"]


class Agent:
    """One ``mirrord agent`` process started by a test."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.stdout = ""  # what followed the readiness line (if it was read)
        self.stderr = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def ready(self, timeout: float = 15.0) -> dict[str, Any]:
        """The readiness announcement (the first stdout line)."""
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert readable, "the agent printed no readiness line"
        line = self.process.stdout.readline()
        ready: dict[str, Any] = json.loads(line)["ready"]
        return ready

    def endpoint(self, ready: dict[str, Any], token: str = TOKEN) -> AgentEndpoint:
        return AgentEndpoint(host=ready["host"], port=ready["port"], token=token)

    def wait(self, timeout: float) -> tuple[int, float]:
        """Exit status and how long it took to exit; the agent's log ends up in stderr."""
        started = time.monotonic()
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
            self.stderr = stderr
            pytest.fail(f"the agent did not exit within {timeout} s; log:\n{stderr}")
        self.stdout, self.stderr = stdout, stderr
        return self.process.returncode, time.monotonic() - started

    def alive(self) -> bool:
        return self.process.poll() is None


@pytest.fixture
def start_agent() -> Iterator[Any]:
    started: list[Agent] = []

    def start(
        *args: str, token: str | None = TOKEN, target: int | None = None, env: Any = None
    ) -> Agent:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}
        if token is not None:
            environ["MIRRORD_AGENT_TOKEN"] = token
        environ.update(env or {})
        argv = [*AGENT, *args]
        if target is not None:
            argv += ["--target-pid", str(target)]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        agent = Agent(process)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.alive():
            agent.process.kill()
        agent.process.communicate()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process to target (in the host's namespaces: the agent needs no setns)."""
    process = subprocess.Popen(["sleep", "120"])
    yield process
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


LISTEN = ("--listen", "127.0.0.1:0")


# -- exit conditions ---------------------------------------------------------------------


def test_announces_readiness_with_one_json_line(
    start_agent: Any, sleeper: subprocess.Popen[bytes]
) -> None:
    agent = start_agent(*LISTEN, "--communication-timeout", "1", target=sleeper.pid)
    ready = agent.ready()
    assert ready["host"] == "127.0.0.1" and ready["pid"] == agent.pid
    assert 0 < ready["port"] < 65536
    status, _ = agent.wait(10)
    assert status == 0
    assert agent.stdout == ""  # nothing but that one line


def test_exits_when_no_client_connects_within_the_communication_timeout(
    start_agent: Any, sleeper: subprocess.Popen[bytes]
) -> None:
    agent = start_agent(*LISTEN, "--communication-timeout", "1", target=sleeper.pid)
    agent.ready()
    started = time.monotonic()
    status, _ = agent.wait(10)
    assert status == 0
    assert 0.8 < time.monotonic() - started < 5
    assert "no client connected within 1 s" in agent.stderr


def test_a_refused_client_does_not_count_as_a_client(
    start_agent: Any, sleeper: subprocess.Popen[bytes], run: Any
) -> None:
    agent = start_agent(*LISTEN, "--communication-timeout", "1.5", target=sleeper.pid)
    endpoint = agent.endpoint(agent.ready(), token="wrong-token-wrong-token")
    with pytest.raises(SessionError, match="refused"):
        run(Session.connect(endpoint))
    status, _ = agent.wait(10)
    assert status == 0 and "no client connected within 1.5 s" in agent.stderr


def test_exits_after_the_last_client_leaves(
    start_agent: Any, sleeper: subprocess.Popen[bytes], run: Any
) -> None:
    agent = start_agent(*LISTEN, "--communication-timeout", "30", target=sleeper.pid)
    endpoint = agent.endpoint(agent.ready())

    async def go() -> None:
        first = await Session.connect(endpoint, client_name="first")
        second = await Session.connect(endpoint, client_name="second")
        await first.close()
        await asyncio.sleep(0.5)
        assert agent.alive()  # one client is still there
        assert await second.ping() < 5
        await second.close()

    run(go())
    status, took = agent.wait(10)
    assert status == 0 and took < 5
    assert "agent exiting: the last client left" in agent.stderr


def test_a_client_that_vanishes_counts_as_gone(
    start_agent: Any, sleeper: subprocess.Popen[bytes], run: Any
) -> None:
    agent = start_agent(*LISTEN, target=sleeper.pid)
    endpoint = agent.endpoint(agent.ready())

    async def go() -> None:
        session = await Session.connect(endpoint)
        session.connection._writer.transport.abort()  # no goodbye: the socket is reset

    run(go())
    status, took = agent.wait(10)
    assert status == 0 and took < 5
    assert "the last client left" in agent.stderr


def test_exits_when_the_target_process_dies(
    start_agent: Any, sleeper: subprocess.Popen[bytes]
) -> None:
    agent = start_agent(*LISTEN, "--communication-timeout", "60", target=sleeper.pid)
    agent.ready()
    sleeper.kill()
    sleeper.wait()
    status, took = agent.wait(10)
    assert status == 0 and took < 5
    assert f"the target process {sleeper.pid} exited" in agent.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_exits_on_sigterm_and_sigint_telling_its_clients(
    start_agent: Any, sleeper: subprocess.Popen[bytes], run: Any, signum: int
) -> None:
    agent = start_agent(*LISTEN, target=sleeper.pid)
    endpoint = agent.endpoint(agent.ready())

    async def go() -> str:
        session = await Session.connect(endpoint)
        os.kill(agent.pid, signum)
        await session.connection.wait_closed()
        with pytest.raises(SessionError) as caught:
            await session.ping()
        await session.close()
        return str(caught.value)

    message = run(go())
    assert "the agent is exiting: stopped by a signal" in message
    status, took = agent.wait(10)
    assert status == 0 and took < 5


def test_enters_the_pods_network_namespace_but_listens_on_the_host(
    start_agent: Any, sandbox: Sandbox, run: Any
) -> None:
    pod = sandbox.pod("web")
    agent = start_agent(*LISTEN, target=pod.pid)
    endpoint = agent.endpoint(agent.ready())
    agent_ns = os.stat(f"/proc/{agent.pid}/ns/net").st_ino
    assert agent_ns == os.stat(pod.netns_path).st_ino
    assert agent_ns != os.stat("/proc/self/ns/net").st_ino

    async def go() -> None:
        async with await Session.connect(endpoint) as session:
            assert await session.ping() < 5

    run(go())
    status, _ = agent.wait(10)
    assert status == 0


# -- refusing to start ---------------------------------------------------------------------


def refused(agent: Agent) -> str:
    status, _ = agent.wait(30)
    assert status == 1, agent.stderr
    assert "Traceback" not in agent.stderr, agent.stderr
    assert agent.stdout == ""  # never announced readiness
    assert agent.stderr.startswith("mirrord: error: "), agent.stderr
    return agent.stderr


def test_refuses_to_start_without_a_usable_token(
    start_agent: Any, sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    needs_token = "a session token of at least 16 characters is required"
    assert needs_token in refused(start_agent(*LISTEN, token=None, target=sleeper.pid))
    assert needs_token in refused(start_agent(*LISTEN, token="short", target=sleeper.pid))
    assert needs_token in refused(start_agent(*LISTEN, token=" " * 20, target=sleeper.pid))
    short_file = tmp_path / "token"
    short_file.write_text("tiny\n")
    assert needs_token in refused(
        start_agent(*LISTEN, "--token-file", str(short_file), token=None, target=sleeper.pid)
    )
    missing = refused(
        start_agent(
            *LISTEN, "--token-file", str(tmp_path / "missing"), token=None, target=sleeper.pid
        )
    )
    assert "cannot read the token file" in missing


def test_refuses_to_start_for_a_process_that_does_not_exist(start_agent: Any) -> None:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text())  # pids are always below this
    assert f"no process with pid {pid}" in refused(start_agent(*LISTEN, target=pid))
    assert "no process with pid 0" in refused(start_agent(*LISTEN, target=0))


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:", ":8080", "127.0.0.1:65536"])
def test_refuses_a_malformed_listen_address(
    start_agent: Any, sleeper: subprocess.Popen[bytes], listen: str
) -> None:
    assert "--listen expects HOST:PORT" in refused(
        start_agent("--listen", listen, target=sleeper.pid)
    )


def test_refuses_a_listen_address_it_cannot_bind(
    start_agent: Any, sleeper: subprocess.Popen[bytes]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = refused(start_agent("--listen", f"127.0.0.1:{port}", target=sleeper.pid))
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in message
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: nothing is sent anywhere.
    message = refused(start_agent("--listen", "192.0.2.1:0", target=sleeper.pid))
    assert "cannot listen on 192.0.2.1:0: Cannot assign requested address" in message


# -- the token and the logs ------------------------------------------------------------------


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def test_the_token_is_never_on_the_command_line(
    start_agent: Any, sleeper: subprocess.Popen[bytes], tmp_path: Path, run: Any
) -> None:
    agent = start_agent(*LISTEN, target=sleeper.pid)
    endpoint = agent.endpoint(agent.ready())
    assert TOKEN.encode() not in cmdline(agent.pid)
    run(_ping_once(endpoint))

    token_file = tmp_path / "token"
    token_file.write_text("file-token-0123456789abcdef\n")
    agent = start_agent(*LISTEN, "--token-file", str(token_file), token=None, target=sleeper.pid)
    endpoint = agent.endpoint(agent.ready(), token="file-token-0123456789abcdef")
    assert b"file-token" not in cmdline(agent.pid)
    run(_ping_once(endpoint))


def test_a_spawned_agents_token_is_not_on_its_command_line(
    sleeper: subprocess.Popen[bytes], agent_for: Any, agent_pid: Any, run: Any
) -> None:
    endpoint = agent_for(sleeper.pid)
    assert len(endpoint.token) >= 32
    assert endpoint.token.encode() not in cmdline(agent_pid(endpoint))
    run(_ping_once(endpoint))


async def _ping_once(endpoint: AgentEndpoint) -> None:
    async with await Session.connect(endpoint) as session:
        assert await session.ping() < 5


def logged_lines(
    start_agent: Any, target: int, level: str, run: Any, extra: Sequence[str] = ()
) -> list[str]:
    agent = start_agent(*LISTEN, "--log-level", level, *extra, target=target)
    endpoint = agent.endpoint(agent.ready())
    wrong = AgentEndpoint(host=endpoint.host, port=endpoint.port, token="w" * 32)

    async def go() -> None:
        with pytest.raises(SessionError):
            await Session.connect(wrong)  # a WARNING in the agent's log
        await _ping_once(endpoint)

    run(go())
    status, _ = agent.wait(10)
    assert status == 0
    return agent.stderr.splitlines()


def test_logs_respect_the_log_level(
    start_agent: Any, sleeper: subprocess.Popen[bytes], run: Any
) -> None:
    debug = logged_lines(start_agent, sleeper.pid, "debug", run)
    info = logged_lines(start_agent, sleeper.pid, "info", run)
    warn = logged_lines(start_agent, sleeper.pid, "warn", run)
    off = logged_lines(start_agent, sleeper.pid, "off", run)
    rust_style = logged_lines(start_agent, sleeper.pid, "mirrord=warn,hyper=error", run)

    def levels(lines: list[str]) -> set[str]:
        return {word for line in lines for word in line.split() if word in _LEVELS}

    assert "DEBUG" in levels(debug)
    assert levels(info) == {"INFO", "WARNING"}
    assert levels(warn) == {"WARNING"}
    assert off == []
    assert levels(rust_style) == {"WARNING"}
    assert len(debug) > len(info) > len(warn) > 0
    assert any("listening on 127.0.0.1" in line for line in info)
    assert any("invalid session token" in line for line in warn)


_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


# -- local agents through the target plugin --------------------------------------------------


def resolved_for(pid: int, environ: dict[str, str] | None = None) -> tuple[Any, Any]:
    loaded = get_plugins()
    resolved = resolve(loaded.layout, environ=environ or {}, flags={"target": f"pid/{pid}"})
    return loaded, resolved.config


def agents_for(pid: int) -> list[int]:
    """Pids of agent processes whose command line targets ``pid``."""
    needle = f"\0--target-pid\0{pid}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes() + b"\0":
                    found.append(int(entry.name))
    return found


def test_resolving_a_pid_that_does_not_exist_is_a_target_error() -> None:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text())
    loaded, config = resolved_for(pid)
    with pytest.raises(TargetError, match=f"target pid/{pid}: no such process"):
        loaded.manager.hook.resolve_target(config=config)


def test_an_agent_that_is_not_ready_in_time_is_stopped_and_its_log_named(
    sleeper: subprocess.Popen[bytes],
) -> None:
    loaded, config = resolved_for(sleeper.pid, {"MIRRORD_AGENT_STARTUP_TIMEOUT": "0"})
    target = loaded.manager.hook.resolve_target(config=config)
    with pytest.raises(AgentStartError) as caught:
        loaded.manager.hook.spawn_agent(config=config, target=target)
    message = str(caught.value)
    assert "the agent was not ready within 0 s" in message
    log = message.rpartition("(agent log: ")[2].rstrip(")")
    assert Path(log).is_file() and Path(log).name.startswith("mirrord-agent-")
    assert agents_for(sleeper.pid) == []  # stopped, not left behind


def test_a_target_that_dies_before_the_agent_is_ready_is_an_agent_start_error(
    sleeper: subprocess.Popen[bytes],
) -> None:
    loaded, config = resolved_for(sleeper.pid)
    target = loaded.manager.hook.resolve_target(config=config)
    sleeper.kill()
    sleeper.wait()
    with pytest.raises(AgentStartError) as caught:
        loaded.manager.hook.spawn_agent(config=config, target=target)
    message = str(caught.value)
    assert "the agent exited before it was ready" in message
    assert f"no process with pid {sleeper.pid}" in message
    log = Path(message.rpartition("(agent log: ")[2].rstrip(")"))
    assert f"no process with pid {sleeper.pid}" in log.read_text()
    assert agents_for(sleeper.pid) == []


def test_the_agent_config_reaches_the_spawned_agent(
    sleeper: subprocess.Popen[bytes], agent_for: Any, agent_pid: Any
) -> None:
    """agent.communication_timeout and agent.log_level from the config are the agent's."""
    endpoint = agent_for(
        sleeper.pid,
        environ={"MIRRORD_AGENT_COMMUNICATION_TIMEOUT": "1", "MIRRORD_AGENT_RUST_LOG": "debug"},
    )
    pid = agent_pid(endpoint)
    log = Path(endpoint.release.log_path)  # type: ignore[attr-defined]
    started = time.monotonic()
    while Path(f"/proc/{pid}").exists() and time.monotonic() - started < 10:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                break
        time.sleep(0.1)
    assert time.monotonic() - started < 5  # gone after about a second with no client
    text = log.read_text()
    assert "no client connected within 1 s" in text
    assert " DEBUG " in text
