"""Name resolution and outgoing TCP/UDP through a real agent, from a sandbox pod's namespace.

The host routes the pod network to ``unreachable``, so a connection to a pod that works
from the test process can only have gone through the agent in the pod's namespace.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import dns.message
import dns.rdatatype
import pytest

from mirrord_core.sandbox import Sandbox
from mirrord_core.session import Session
from mirrord_network.local.remote_network import RemoteDatagrams, connect_tcp, resolve

TCP_ECHO_PORT = 7000
WHOAMI_PORT = 7001
UDP_ECHO_PORT = 7002

# Runs on the host inside the api pod's network namespace only (ip netns exec), so it
# listens in that namespace and nowhere else.
ECHO_SERVERS = textwrap.dedent(
    f"""
    import socket, threading

    def echo(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def tcp_echo():
        server = socket.create_server(("0.0.0.0", {TCP_ECHO_PORT}), backlog=64)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def whoami():
        server = socket.create_server(("0.0.0.0", {WHOAMI_PORT}))
        while True:
            conn, peer = server.accept()
            with conn:
                conn.sendall(peer[0].encode() + b"\\n")

    def udp_echo(sock):
        while True:
            data, peer = sock.recvfrom(65535)
            sock.sendto(data, peer)

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", {UDP_ECHO_PORT}))
    for target, args in ((tcp_echo, ()), (whoami, ()), (udp_echo, (udp,))):
        threading.Thread(target=target, args=args, daemon=True).start()
    import time
    time.sleep(0.2)
    print("ready", flush=True)
    threading.Event().wait()
    """
)


@pytest.fixture(scope="module")
def echo_servers(sandbox: Sandbox) -> Iterator[None]:
    api = sandbox.pod("api")
    server = subprocess.Popen(
        ["ip", "netns", "exec", api.netns, sys.executable, "-c", ECHO_SERVERS],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == b"ready\n"
        yield
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def with_session(
    endpoint: Any, open_session: Any, run: Any
) -> Callable[[Callable[[Session], Awaitable[Any]]], Any]:
    def call(body: Callable[[Session], Awaitable[Any]], timeout: float = 60.0) -> Any:
        async def go() -> Any:
            async with open_session(endpoint) as session:
                return await body(session)

        return run(go(), timeout)

    return call


async def expect_gaierror(code: int, lookup: Awaitable[Any]) -> None:
    with pytest.raises(socket.gaierror) as caught:
        await lookup
    assert caught.value.errno == code, caught.value


# -- DNS -----------------------------------------------------------------------------------


def test_names_resolve_as_the_pod_resolves_them(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    web, api = sandbox.pod("web"), sandbox.pod("api")
    hosts = web.root / "etc" / "hosts"
    original = hosts.read_text()
    hosts.write_text(original + "10.99.1.2  legacy-db legacy-db.internal  # added by the test\n")

    async def body(session: Session) -> None:
        # Short name through the pod's search domains, then partial and full names.
        assert await resolve(session, "api") == [api.ip]
        assert await resolve(session, "api.default") == [api.ip]
        assert await resolve(session, "api.default.svc") == [api.ip]
        assert await resolve(session, sandbox.service_fqdn("api")) == [api.ip]
        assert await resolve(session, sandbox.service_fqdn("api") + ".") == [api.ip]
        assert await resolve(session, "kube-dns.kube-system") == [sandbox.dns_ip]
        pod_name = api.ip.replace(".", "-") + ".default.pod.cluster.local"
        assert await resolve(session, pod_name) == [api.ip]
        # The pod's /etc/hosts: its own name and what the test added (names are caseless).
        assert await resolve(session, "web") == [web.ip]
        assert await resolve(session, "legacy-db") == ["10.99.1.2"]
        assert await resolve(session, "LEGACY-DB.internal") == ["10.99.1.2"]
        assert await resolve(session, "localhost", socket.AF_INET) == ["127.0.0.1"]
        assert await resolve(session, "10.1.2.3") == ["10.1.2.3"]
        assert await resolve(session, "api", socket.AF_INET) == [api.ip]
        # Failures are getaddrinfo's.
        await expect_gaierror(socket.EAI_NONAME, resolve(session, "does-not-exist"))
        await expect_gaierror(socket.EAI_NONAME, resolve(session, "nope.default.svc.cluster.local"))
        await expect_gaierror(socket.EAI_NONAME, resolve(session, "example.com"))
        await expect_gaierror(socket.EAI_NONAME, resolve(session, "api", socket.AF_INET6))
        await expect_gaierror(socket.EAI_NONAME, resolve(session, ""))
        await expect_gaierror(socket.EAI_NONAME, resolve(session, "a" * 300))
        await expect_gaierror(socket.EAI_NONAME, resolve(session, "bad..name"))
        await expect_gaierror(socket.EAI_FAMILY, resolve(session, "api", 99))

    try:
        with_session(agent_for(web.pid), open_session, run)(body)
    finally:
        hosts.write_text(original)


def test_another_pod_resolves_with_its_own_configuration(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    web, api = sandbox.pod("web"), sandbox.pod("api")

    async def body(session: Session) -> None:
        # The api pod's hosts file names only itself: "web" comes from the cluster DNS.
        assert await resolve(session, "web") == [web.ip]
        assert await resolve(session, "api") == [api.ip]
        await expect_gaierror(socket.EAI_NONAME, resolve(session, "legacy-db"))

    with_session(agent_for(api.pid), open_session, run)(body)


def test_an_unreadable_hosts_file_never_hangs_resolution(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    """A FIFO planted as the pod's /etc/hosts is skipped, not waited on; DNS still answers."""
    web, api = sandbox.pod("web"), sandbox.pod("api")
    hosts = web.root / "etc" / "hosts"
    original = hosts.read_bytes()
    hosts.unlink()
    os.mkfifo(hosts)

    async def body(session: Session) -> None:
        assert await asyncio.wait_for(resolve(session, "api"), 10) == [api.ip]
        assert await session.ping(timeout=3) < 3

    try:
        with_session(agent_for(web.pid), open_session, run)(body)
    finally:
        hosts.unlink()
        hosts.write_bytes(original)


# -- TCP -----------------------------------------------------------------------------------


async def http_get(session: Session, host: str, port: int, path: str) -> bytes:
    stream = await connect_tcp(session, host, port)
    async with stream:
        await stream.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        response = await stream.read_all()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def test_http_to_another_pod_by_its_resolved_address(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    web = sandbox.pod("web")

    async def body(session: Session) -> None:
        (api_ip,) = await resolve(session, "api")
        assert await http_get(session, api_ip, 8080, "/") == b"hello from the api pod\n"
        assert await http_get(session, api_ip, 8080, "/health") == b"ok\n"
        # The web pod reaches itself, as any pod can.
        assert await http_get(session, web.ip, 8080, "/") == b"web pod says hi\n"
        # The pod's loopback is the pod's: its httpd listens on all its addresses.
        assert await http_get(session, "127.0.0.1", 8080, "/") == b"web pod says hi\n"

    with_session(agent_for(web.pid), open_session, run)(body)
    # The same connection straight from the host fails at once: the pod network is
    # unreachable from here, so the request above went through the agent.
    with pytest.raises(OSError) as caught:
        socket.create_connection((sandbox.pod("api").ip, 8080), timeout=5)
    assert caught.value.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)


def test_connections_leave_from_the_pods_address(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any, echo_servers: None
) -> None:
    web, api = sandbox.pod("web"), sandbox.pod("api")

    async def body(session: Session) -> None:
        stream = await connect_tcp(session, api.ip, WHOAMI_PORT)
        async with stream:
            assert stream.accept_payload is not None
            assert stream.accept_payload.local_host == web.ip  # type: ignore[attr-defined]
            assert await stream.read_all() == web.ip.encode() + b"\n"

    with_session(agent_for(web.pid), open_session, run)(body)


def test_connection_failures_are_the_connect_errno(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    api = sandbox.pod("api")

    async def body(session: Session) -> None:
        with pytest.raises(ConnectionRefusedError) as refused:
            await connect_tcp(session, api.ip, 9)
        assert refused.value.errno == errno.ECONNREFUSED
        with pytest.raises(OSError) as invalid:
            await connect_tcp(session, "api", 8080)  # names are resolved first, not here
        assert invalid.value.errno == errno.EINVAL
        with pytest.raises(OSError) as bad_port:
            await connect_tcp(session, api.ip, 0)
        assert bad_port.value.errno == errno.EINVAL
        # The session is fine afterwards.
        assert await http_get(session, api.ip, 8080, "/health") == b"ok\n"

    with_session(agent_for(sandbox.pod("web").pid), open_session, run)(body)


def test_a_large_echo_through_a_tcp_connection(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any, echo_servers: None
) -> None:
    api = sandbox.pod("api")
    payload = os.urandom(16 * 1024 * 1024)

    async def body(session: Session) -> None:
        stream = await connect_tcp(session, api.ip, TCP_ECHO_PORT)

        async def send() -> None:
            view = memoryview(payload)
            for offset in range(0, len(payload), 1 << 20):
                await stream.write(view[offset : offset + (1 << 20)])
            await stream.end()  # half-close: the echo server closes after echoing all

        async with stream:
            _, echoed = await asyncio.gather(send(), stream.read_all())
        assert len(echoed) == len(payload)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()

    with_session(agent_for(sandbox.pod("web").pid), open_session, run)(body, 60)


def test_many_concurrent_connections_and_two_clients(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any, echo_servers: None
) -> None:
    api = sandbox.pod("api")
    endpoint = agent_for(sandbox.pod("web").pid)

    async def echo(session: Session, data: bytes) -> bytes:
        stream = await connect_tcp(session, api.ip, TCP_ECHO_PORT)
        async with stream:
            await stream.write(data)
            await stream.end()
            return await stream.read_all()

    async def go() -> None:
        async with open_session(endpoint, "A") as a, open_session(endpoint, "B") as b:
            payloads = [os.urandom(1000 * i + 1) for i in range(40)]
            results = await asyncio.gather(
                *(echo(a if i % 2 else b, data) for i, data in enumerate(payloads)),
                http_get(a, api.ip, 8080, "/"),
            )
            assert results[:-1] == payloads
            assert results[-1] == b"hello from the api pod\n"

    run(go(), 60)


# -- UDP -----------------------------------------------------------------------------------


def test_a_dns_query_over_udp_to_the_cluster_dns(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    api = sandbox.pod("api")

    async def body(session: Session) -> None:
        udp = await RemoteDatagrams.connect(session, sandbox.dns_ip, 53)
        query = dns.message.make_query(sandbox.service_fqdn("api"), dns.rdatatype.A)
        await udp.send(query.to_wire())
        answer = dns.message.from_wire(await asyncio.wait_for(udp.receive(), 5))
        assert answer.id == query.id
        addresses = [item.address for rrset in answer.answer for item in rrset]
        assert addresses == [api.ip]
        await udp.close()

    with_session(agent_for(sandbox.pod("web").pid), open_session, run)(body)


def test_udp_datagrams_keep_their_boundaries(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any, echo_servers: None
) -> None:
    api = sandbox.pod("api")
    sizes = [1, 0, 17, 512, 1400, 9000, 60000, 3]

    async def body(session: Session) -> None:
        udp = await RemoteDatagrams.connect(session, api.ip, UDP_ECHO_PORT)
        assert udp.stream.accept_payload.local_host == sandbox.pod("web").ip  # type: ignore[union-attr]
        datagrams = [os.urandom(size) for size in sizes]
        for datagram in datagrams:
            await udp.send(datagram)
            assert await asyncio.wait_for(udp.receive(), 5) == datagram
        # Several in flight at once come back as separate datagrams.
        for datagram in datagrams:
            await udp.send(datagram)
        received = [await asyncio.wait_for(udp.receive(), 5) for _ in datagrams]
        assert received == datagrams
        with pytest.raises(OSError) as too_big:
            await udp.send(b"x" * 70000)
        assert too_big.value.errno == errno.EMSGSIZE
        await udp.close()

    with_session(agent_for(sandbox.pod("web").pid), open_session, run)(body)
