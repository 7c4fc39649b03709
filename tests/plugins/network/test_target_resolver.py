"""Resolving names as the target does: its hosts file, search domains and DNS server."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord_network.agent.target_resolver import (
    NameNotFound,
    ResolutionFailed,
    TargetResolver,
    parse_hosts,
    parse_resolv_conf,
)


def test_parse_resolv_conf_like_glibc() -> None:
    conf = parse_resolv_conf(
        "# comment\nnameserver 10.96.0.10\nnameserver bogus\nsearch a.local b.local\n"
        "domain c.local\nsearch ns.svc.cluster.local svc.cluster.local\n"
        "options ndots:5 timeout:2 attempts:9\n"
    )
    assert conf.nameservers == ("10.96.0.10",)
    assert conf.search == ("ns.svc.cluster.local", "svc.cluster.local")
    assert (conf.ndots, conf.timeout, conf.attempts) == (5, 2.0, 5)


def test_parse_hosts_names_and_aliases() -> None:
    table = parse_hosts("127.0.0.1 localhost\n10.0.0.5 API api.local # x\nnot-an-ip foo\n::1 v6\n")
    assert table == {
        "localhost": ["127.0.0.1"],
        "api": ["10.0.0.5"],
        "api.local": ["10.0.0.5"],
        "v6": ["::1"],
    }


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dns_server() -> Iterator[int]:
    """dnsmasq on loopback answering a small cluster.local zone (nothing upstream)."""
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not os.path.exists(dnsmasq):
        pytest.fail("dnsmasq is not installed (apt-get install dnsmasq-base)")
    port = _free_udp_port()
    process = subprocess.Popen(
        [
            dnsmasq,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={port}",
            "--user=root",
            "--pid-file",
            "--address=/api.default.svc.cluster.local/10.244.7.7",
            "--address=/db.other.svc.cluster.local/10.244.8.8",
            "--local=/cluster.local/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                break  # dnsmasq holds the port: it is up
        time.sleep(0.05)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=5)


@pytest.fixture
def target_root(tmp_path: Path) -> Iterator[int]:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "resolv.conf").write_text(
        "nameserver 127.0.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5 timeout:1 attempts:1\n"
    )
    (etc / "hosts").write_text("127.0.0.1 localhost\n10.9.9.9 pinned.example pinned\n")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_resolves_through_search_domains(dns_server: int, target_root: int) -> None:
    resolver = TargetResolver(target_root, port=dns_server)
    assert asyncio.run(resolver.resolve("api", socket.AF_INET)) == ["10.244.7.7"]
    assert asyncio.run(resolver.resolve("db.other", socket.AF_INET)) == ["10.244.8.8"]
    assert asyncio.run(resolver.resolve("api.default.svc.cluster.local.", socket.AF_INET)) == [
        "10.244.7.7"
    ]


def test_hosts_file_first(dns_server: int, target_root: int) -> None:
    resolver = TargetResolver(target_root, port=dns_server)
    assert asyncio.run(resolver.resolve("PINNED")) == ["10.9.9.9"]
    assert asyncio.run(resolver.resolve("10.1.1.1")) == ["10.1.1.1"]


def test_unknown_name(dns_server: int, target_root: int) -> None:
    resolver = TargetResolver(target_root, port=dns_server)
    with pytest.raises(NameNotFound):
        asyncio.run(resolver.resolve("nope", socket.AF_INET))


def test_silent_server_is_a_resolution_failure(target_root: int) -> None:
    resolver = TargetResolver(target_root, port=_free_udp_port())
    with pytest.raises(ResolutionFailed):
        asyncio.run(resolver.resolve("api", socket.AF_INET))
