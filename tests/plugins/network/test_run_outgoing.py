"""Outgoing traffic under ``mirrord run -t pid/PID``: real clients (Python, curl, static
busybox, a static Go binary, Node) connect from the target pod. The host has an
unreachable route for the pod network, so every answer from a pod proves the redirection.
Traffic goes only to loopback and the sandbox's namespaces."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from network_run_helpers import (
    API_BODY,
    CLIENTS,
    WEB_BODY,
    RunCli,
    build_go_client,
    fetch_command,
    mirrord_run,
    tool,
)

from mirrord_core.sandbox import Sandbox
from mirrord_core.sandbox.demo import demo_pods
from mirrord_network.local.sockaddr import InetAddress, encode_inet, parse_inet


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.create(demo_pods()) as sb:
        yield sb


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_go_client(tmp_path_factory.mktemp("go-client"))


@pytest.mark.parametrize("client", CLIENTS)
def test_fetch_by_name_and_by_ip(
    client: str, sandbox: Sandbox, go_client: Path, run_cli: RunCli
) -> None:
    api = sandbox.pod("api")
    urls = [f"http://{sandbox.service_fqdn('api', 'default')}:8080/", f"http://{api.ip}:8080/"]
    result = mirrord_run(run_cli, sandbox.pod("web").pid, fetch_command(client, urls, go_client))
    assert result.returncode == 0, result.stderr
    assert result.stdout == API_BODY * 2


SOCKET_PROBE = """
import errno, json, socket, struct, sys
api_ip, dns_ip, closed_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
# Blocking connect: the pod's address as the peer; a request goes through.
s = socket.create_connection((api_ip, 8080), timeout=10)
out["peer"] = list(s.getpeername())
s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
out["body"] = data.split(b"\\r\\n\\r\\n", 1)[1].decode()
# IPv4-mapped destination on an AF_INET6 socket.
s6 = socket.socket(socket.AF_INET6)
s6.settimeout(10)
s6.connect(("::ffff:" + api_ip, 8080))
out["peer6"] = list(s6.getpeername()[:2])
# A closed port in the pod: refused, blocking and non-blocking.
try:
    socket.create_connection((api_ip, closed_port), timeout=10)
except OSError as e:
    out["refused"] = e.errno
n = socket.socket()
n.setblocking(False)
out["refused_nonblocking"] = n.connect_ex((api_ip, closed_port))
# UDP without connect: a DNS query to the pod's nameserver; the answer's sender is the
# nameserver (not the local relay), through recvfrom and recvmsg.
name = b"".join(bytes([len(p)]) + p for p in b"api.default.svc.cluster.local".split(b"."))
header = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
query = header + name + b"\\0" + struct.pack(">HH", 1, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(10)
u.sendto(query, (dns_ip, 53))
answer, sender = u.recvfrom(512)
out["udp_sender"] = list(sender)
out["udp_answer_id"] = answer[:2].hex()
out["udp_answer_ip"] = socket.inet_ntoa(answer[answer.index(b"\\xc0\\x0c"):][12:16])
m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
m.settimeout(10)
m.sendmsg([query], [], 0, (dns_ip, 53))
answer, _, _, sender = m.recvmsg(512)
out["udp_recvmsg_sender"] = list(sender)
# A blocking recvfrom that waits for the answer (the supervisor waits on its loop).
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b.sendto(query, (dns_ip, 53))
out["udp_blocking_sender"] = list(b.recvfrom(512)[1])
# Connected UDP (what glibc's resolver does): send/recv, getpeername.
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(10)
c.connect((dns_ip, 53))
c.send(query)
out["udp_connected_answer"] = len(c.recv(512)) > 12
out["udp_peer"] = list(c.getpeername())
print(json.dumps(out))
"""


def test_python_sockets(sandbox: Sandbox, run_cli: RunCli) -> None:
    api = sandbox.pod("api")
    command = [sys.executable, "-c", SOCKET_PROBE, api.ip, sandbox.dns_ip, "9"]
    result = mirrord_run(run_cli, sandbox.pod("web").pid, command)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["peer"] == [api.ip, 8080]
    assert out["body"] == API_BODY
    assert out["peer6"] == [f"::ffff:{api.ip}", 8080]
    assert out["refused"] == out["refused_nonblocking"] == 111  # ECONNREFUSED
    assert out["udp_sender"] == [sandbox.dns_ip, 53]
    assert out["udp_answer_id"] == "4242"
    assert out["udp_answer_ip"] == api.ip
    assert out["udp_recvmsg_sender"] == [sandbox.dns_ip, 53]
    assert out["udp_blocking_sender"] == [sandbox.dns_ip, 53]
    assert out["udp_connected_answer"] is True
    assert out["udp_peer"] == [sandbox.dns_ip, 53]


def test_curl_reports_the_pod_as_peer_and_refusals(sandbox: Sandbox, run_cli: RunCli) -> None:
    api = sandbox.pod("api")
    curl = tool("curl", "curl")
    web = sandbox.pod("web").pid
    result = mirrord_run(
        run_cli, web, [curl, "-sS", "-w", " %{remote_ip}", f"http://{api.ip}:8080/health"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ok\n {api.ip}"
    refused = mirrord_run(run_cli, web, [curl, "-sS", f"http://{api.ip}:9/"])
    assert refused.returncode == 7  # couldn't connect
    assert "Couldn't connect" in refused.stderr or "refused" in refused.stderr


def test_no_outgoing_leaves_connections_local(sandbox: Sandbox, run_cli: RunCli) -> None:
    api = sandbox.pod("api")
    code = (
        "import socket\n"
        f"try: socket.create_connection(({api.ip!r}, 8080), timeout=5)\n"
        "except OSError as e: print(e.errno)\n"
    )
    result = mirrord_run(
        run_cli, sandbox.pod("web").pid, [sys.executable, "-c", code], "--no-outgoing"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "113"  # EHOSTUNREACH: the host's route to pods


class LocalServer:
    """An HTTP/1.0 server on a loopback port of this machine answering ``body``."""

    def __init__(self, body: bytes) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.body = body
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                connection.sendall(
                    b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(self.body), self.body)
                )


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    server = LocalServer(b"hello from this machine\n")
    yield server
    server.listener.close()


def test_loopback_is_the_pods_unless_ignore_localhost(
    sandbox: Sandbox, run_cli: RunCli, tmp_path: Path, local_server: LocalServer
) -> None:
    curl = tool("curl", "curl")
    web = sandbox.pod("web").pid
    # The web pod's own loopback serves its HTTP server on 8080.
    result = mirrord_run(run_cli, web, [curl, "-sS", "--max-time", "10", "http://127.0.0.1:8080/"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == WEB_BODY
    # A port of this machine's loopback is not reachable then (nothing listens in the pod)…
    url = f"http://127.0.0.1:{local_server.port}/"
    result = mirrord_run(run_cli, web, [curl, "-sS", "--max-time", "10", url])
    assert result.returncode == 7, result.stdout
    # … unless ignore_localhost keeps loopback local.
    config = tmp_path / "mirrord.toml"
    config.write_text("[feature.network.outgoing]\nignore_localhost = true\n")
    result = mirrord_run(run_cli, web, [curl, "-sS", "--max-time", "10", url], "-f", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from this machine\n"


def test_the_process_reaches_its_own_listening_port_locally(
    sandbox: Sandbox, run_cli: RunCli
) -> None:
    # Loopback is the pod's, except ports the process itself listens on (mirrord 3.32).
    code = (
        "import socket\n"
        "server = socket.create_server(('127.0.0.1', 0))\n"
        "port = server.getsockname()[1]\n"
        "client = socket.create_connection(('127.0.0.1', port), timeout=5)\n"
        "peer, _ = server.accept()\n"
        "client.sendall(b'ping')\n"
        "print(peer.recv(4).decode(), client.getpeername()[1] == port)\n"
    )
    result = mirrord_run(run_cli, sandbox.pod("web").pid, [sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ping True\n"


@pytest.mark.parametrize(
    ("address", "family"),
    [
        (InetAddress("10.244.0.11", 8080), socket.AF_INET),
        (InetAddress("10.244.0.11", 8080, socket.AF_INET6), socket.AF_INET6),
        (InetAddress("fd00::1", 53, socket.AF_INET6), socket.AF_INET6),
    ],
)
def test_sockaddr_round_trip(address: InetAddress, family: int) -> None:
    encoded = encode_inet(address, family)
    assert len(encoded) == (16 if family == socket.AF_INET else 28)
    assert parse_inet(encoded) == address
