"""Remote DNS under ``mirrord run -t pid/PID``: names resolve as in the pod (its
resolv.conf search domains, its hosts file, its nameserver) for glibc (Python, curl,
Node), static busybox and Go's pure resolver; with ``dns = false`` they resolve locally.

The fs feature also serves the target's ``/etc/resolv.conf`` and ``/etc/hosts`` in its
``read`` mode; these tests run with ``--fs-mode local`` so that only the DNS feature is
at work."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from network_run_helpers import (
    API_BODY,
    BUSYBOX,
    CLIENTS,
    WEB_BODY,
    RunCli,
    build_go_client,
    fetch_command,
    mirrord_run,
    mirrord_run_offline,
    tool,
)

from mirrord_core.sandbox import Sandbox
from mirrord_core.sandbox.demo import demo_pods
from mirrord_network.local.dns_handlers import nsswitch_for_dns

#: A name only the web pod's /etc/hosts knows (the pod's own loopback).
HOSTS_ONLY_NAME = "pod-loopback.example"
LOCAL_FS = ("--fs-mode", "local")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    pods = demo_pods()
    web = pods[0]
    assert web.name == "web"
    hosts = f"127.0.0.1 localhost\n127.0.0.1 {HOSTS_ONLY_NAME}\n"
    pods[0] = dataclasses.replace(web, files={**web.files, "/etc/hosts": hosts})
    with Sandbox.create(pods) as sb:
        yield sb


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_go_client(tmp_path_factory.mktemp("go-client"))


@pytest.mark.parametrize("client", CLIENTS)
def test_short_cluster_name_and_pod_hosts_file(
    client: str, sandbox: Sandbox, go_client: Path, run_cli: RunCli
) -> None:
    # `api` only resolves through the pod's search domains and nameserver; the hosts-only
    # name through the pod's /etc/hosts (it points at the pod's own loopback).
    urls = ["http://api:8080/", f"http://{HOSTS_ONLY_NAME}:8080/"]
    command = fetch_command(client, urls, go_client)
    result = mirrord_run(run_cli, sandbox.pod("web").pid, command, *LOCAL_FS)
    assert result.returncode == 0, result.stderr
    assert result.stdout == API_BODY + WEB_BODY


def test_resolver_answers_match_the_pod(sandbox: Sandbox, run_cli: RunCli) -> None:
    api = sandbox.pod("api")
    code = (
        "import socket\n"
        "for name in ('api', 'api.default', 'api.default.svc.cluster.local'):\n"
        "    print(sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)}))\n"
    )
    result = mirrord_run(run_cli, sandbox.pod("web").pid, [sys.executable, "-c", code], *LOCAL_FS)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"['{api.ip}']\n" * 3


def test_concurrent_lookups_with_the_default_fs_mode(sandbox: Sandbox, run_cli: RunCli) -> None:
    # Remote DNS serves the resolver files itself, before the fs feature is asked: many
    # threads resolving at once (each reading /etc/hosts and resolv.conf) all succeed.
    api = sandbox.pod("api")
    code = (
        "import socket, concurrent.futures as cf\n"
        "def lookup(_): return socket.getaddrinfo('api', 80, socket.AF_INET)[0][4][0]\n"
        "with cf.ThreadPoolExecutor(8) as pool: print(set(pool.map(lookup, range(40))))\n"
    )
    result = mirrord_run(run_cli, sandbox.pod("web").pid, [sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{{'{api.ip}'}}\n"


def test_busybox_nslookup(sandbox: Sandbox, run_cli: RunCli) -> None:
    api = sandbox.pod("api")
    command = ["timeout", "10", BUSYBOX, "nslookup", "api.default.svc.cluster.local"]
    result = mirrord_run(run_cli, sandbox.pod("web").pid, command, *LOCAL_FS)
    assert result.returncode == 0, result.stderr
    assert f"Address: {api.ip}" in result.stdout


def test_the_process_reads_the_pods_resolver_files(sandbox: Sandbox, run_cli: RunCli) -> None:
    command = [BUSYBOX, "cat", "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf"]
    result = mirrord_run(run_cli, sandbox.pod("web").pid, command, *LOCAL_FS)
    assert result.returncode == 0, result.stderr
    pod_root = sandbox.pod("web").root
    resolv = (pod_root / "etc/resolv.conf").read_text()
    hosts = (pod_root / "etc/hosts").read_text()
    assert result.stdout.startswith(resolv + hosts)
    nsswitch = result.stdout[len(resolv + hosts) :]
    assert [line.split() for line in nsswitch.splitlines() if line.startswith("hosts:")] == [
        ["hosts:", "files", "dns"]
    ]


def test_without_remote_dns_names_resolve_locally(sandbox: Sandbox) -> None:
    # Run offline: this machine's nameservers are then unreachable, which is enough to
    # see that the queries (port 53) stayed local instead of going to the pod's server.
    web = sandbox.pod("web").pid
    code = (
        "import socket\n"
        "try: socket.getaddrinfo('api.default.svc.cluster.local', 80)\n"
        "except socket.gaierror: print('unresolved')\n"
        "print(socket.getaddrinfo('localhost', 80, socket.AF_INET)[0][4][0])\n"
    )
    options = (*LOCAL_FS, "--no-remote-dns")
    result = mirrord_run_offline(web, [sys.executable, "-c", code], *options)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "unresolved\n127.0.0.1\n"
    curl = tool("curl", "curl")
    result = mirrord_run_offline(web, [curl, "-sS", "http://api:8080/"], *options)
    assert result.returncode == 6, result.stderr  # couldn't resolve host
    # The local files stay local.
    result = mirrord_run_offline(web, [BUSYBOX, "cat", "/etc/resolv.conf"], *options)
    assert result.stdout == Path("/etc/resolv.conf").read_text()


def test_remote_dns_works_offline(sandbox: Sandbox) -> None:
    # The same offline setting with remote DNS: the pod's nameserver answers.
    api = sandbox.pod("api")
    code = "import socket; print(socket.getaddrinfo('api', 80, socket.AF_INET)[0][4][0])"
    result = mirrord_run_offline(sandbox.pod("web").pid, [sys.executable, "-c", code], *LOCAL_FS)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{api.ip}\n"


def test_remote_dns_without_outgoing_traffic(sandbox: Sandbox, run_cli: RunCli) -> None:
    # DNS queries reach the pod's nameserver even with outgoing TCP/UDP off; the
    # connection itself then stays local and fails (the host cannot reach pods).
    api = sandbox.pod("api")
    code = (
        "import socket\n"
        "address = socket.getaddrinfo('api', 8080, socket.AF_INET)[0][4]\n"
        "print(address[0])\n"
        "try: socket.create_connection(address, timeout=5)\n"
        "except OSError as e: print(e.errno)\n"
    )
    command = [sys.executable, "-c", code]
    result = mirrord_run(run_cli, sandbox.pod("web").pid, command, *LOCAL_FS, "--no-outgoing")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{api.ip}\n113\n"  # EHOSTUNREACH


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        (
            b"passwd: files\nhosts: files mdns4_minimal [NOTFOUND=return] dns resolve\n",
            b"passwd: files\nhosts: files dns\n",
        ),
        (b"passwd: files\n", b"passwd: files\nhosts: files dns\n"),
        (b"", b"hosts: files dns\n"),
    ],
)
def test_nsswitch_hosts_line(local: bytes, expected: bytes) -> None:
    assert nsswitch_for_dns(local) == expected
