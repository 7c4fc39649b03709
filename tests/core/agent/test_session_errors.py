"""Session errors a user can act on, against real agents: unreachable, refused, gone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mirrord_core.sandbox import PodSpec, Sandbox
from mirrord_core.session import Session, SessionError
from mirrord_core.target_model import AgentEndpoint
from mirrord_fs.local.remote_files import RemoteFiles
from mirrord_network.local.remote_network import connect_tcp, resolve

# A pod whose DNS server (on the pod's loopback) never answers: a request that stays
# pending in the agent for as long as the test wants.
EXTRA_PODS = [
    PodSpec(
        "quiet",
        files={"/etc/resolv.conf": "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n"},
    )
]
SILENT_DNS = textwrap.dedent(
    """
    import socket, threading
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    print("ready", flush=True)
    while True:
        sock.recvfrom(65535)  # … and never answer
    """
)
DEATH_LIMIT = 5.0  # seconds within which a client must learn that its agent is gone


@pytest.fixture(scope="module")
def quiet_pod(sandbox: Sandbox) -> Iterator[Any]:
    pod = sandbox.pod("quiet")
    server = subprocess.Popen(
        ["ip", "netns", "exec", pod.netns, sys.executable, "-c", SILENT_DNS],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == b"ready\n"
        (pod.root / "app").mkdir(exist_ok=True)
        (pod.root / "app" / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
        yield pod
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_agent_is_named_in_the_error(run: Any) -> None:
    port = free_port()
    endpoint = AgentEndpoint(host="127.0.0.1", port=port, token="t" * 64)
    started = time.monotonic()
    with pytest.raises(SessionError) as caught:
        run(Session.connect(endpoint))
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "unreachable" in message and "refused" in message.lower()


def test_a_wrong_token_is_refused_and_the_agent_keeps_serving(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    endpoint = agent_for(sandbox.pod("web").pid)

    async def go() -> None:
        async with open_session(endpoint, "legitimate") as good:
            for token in ("x" * 64, endpoint.token[:-1], endpoint.token + "x", ""):
                wrong = AgentEndpoint(host=endpoint.host, port=endpoint.port, token=token)
                with pytest.raises(SessionError) as caught:
                    await Session.connect(wrong, client_name="intruder")
                message = str(caught.value)
                assert f"{endpoint.host}:{endpoint.port}" in message
                assert "refused" in message and "invalid session token" in message
            assert await RemoteFiles(good).read_file("/app/data/orders.csv")

    run(go())


def test_something_that_is_not_an_agent_fails_the_handshake(run: Any) -> None:
    async def go() -> None:
        async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(http, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            endpoint = AgentEndpoint(host="127.0.0.1", port=port, token="t" * 64)
            with pytest.raises(SessionError) as caught:
                await Session.connect(endpoint)
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert "handshake" in str(caught.value) or "refused" in str(caught.value)

    run(go())


async def assert_lost(operation: Any, limit: float = DEATH_LIMIT) -> SessionError:
    started = time.monotonic()
    with pytest.raises(SessionError) as caught:
        await asyncio.wait_for(operation, limit + 5)
    assert time.monotonic() - started < limit
    assert "lost the agent" in str(caught.value)
    return caught.value


def test_an_agent_killed_mid_session_fails_pending_and_later_requests_at_once(
    quiet_pod: Any, agent_for: Any, agent_pid: Any, open_session: Any, run: Any
) -> None:
    endpoint = agent_for(quiet_pod.pid)
    pid = agent_pid(endpoint)

    async def go() -> None:
        session = await Session.connect(endpoint)
        files = RemoteFiles(session)
        stream = files.stream_file("/app/big.bin")
        assert await anext(stream)  # a stream under way …
        pending = asyncio.ensure_future(resolve(session, "never-answered"))  # … a request …
        await asyncio.sleep(0.3)
        assert not pending.done()
        os.kill(pid, signal.SIGKILL)  # … and the agent dies
        error = await assert_lost(pending)
        assert "closed" in str(error) or "lost" in str(error)
        with pytest.raises(SessionError):
            async for _ in stream:
                pass
        await assert_lost(files.stat("/"), 1)
        await assert_lost(session.ping(), 1)
        await assert_lost(connect_tcp(session, "10.0.0.1", 80), 1)
        await session.close()

    run(go())


def test_an_agent_stopped_mid_session_says_why(
    sandbox: Sandbox, agent_for: Any, agent_pid: Any, run: Any
) -> None:
    endpoint = agent_for(sandbox.pod("web").pid)

    async def go() -> None:
        session = await Session.connect(endpoint)
        assert await session.ping() < 5
        os.kill(agent_pid(endpoint), signal.SIGTERM)
        for _ in range(50):
            if session.connection.closed:
                break
            await asyncio.sleep(0.1)
        error = await assert_lost(RemoteFiles(session).stat("/"), 1)
        assert "the agent is exiting: stopped by a signal" in str(error)
        await session.close()

    run(go())


def test_the_target_exiting_ends_the_session_with_a_clear_error(
    agent_for: Any, agent_pid: Any, run: Any
) -> None:
    target = subprocess.Popen(["sleep", "60"])
    try:
        endpoint = agent_for(target.pid)

        async def go() -> None:
            session = await Session.connect(endpoint)
            assert await session.ping() < 5
            target.kill()
            target.wait()
            for _ in range(50):
                if session.connection.closed:
                    break
                await asyncio.sleep(0.1)
            error = await assert_lost(RemoteFiles(session).stat("/"), 1)
            assert f"the target process {target.pid} exited" in str(error)
            await session.close()

        run(go())
    finally:
        with contextlib.suppress(ProcessLookupError):
            target.kill()
        target.wait()
