"""Sandbox pods (mirrord_core.sandbox): built for real, used, and proven gone.

Needs root and the Debian packages iproute2, util-linux, coreutils,
busybox-static and dnsmasq-base. Traffic goes only to the sandbox's own
namespaces and to pod IPs that the host routes to `unreachable`.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import mirrord_core
from mirrord_core.sandbox import (
    PodSpec,
    Sandbox,
    SandboxError,
    check_prerequisites,
    cleanup_stale,
    list_sandboxes,
)
from mirrord_core.sandbox import pod as pod_module
from mirrord_core.sandbox.addressing import AddressPlan, allocate_cidr
from mirrord_core.sandbox.netns import conflicting_host_routes
from mirrord_core.sandbox.process import ProcessRef

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="sandbox pods need root (network namespaces, veth, chroot)"
)
REPO = Path(mirrord_core.__file__).resolve().parents[1]
WGET = ["/bin/busybox", "wget", "-qO-"]  # never `-T`: busybox 1.35's wget segfaults with it


# --- leftover detection ----------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    """Everything a sandbox put on the machine, captured while it was up."""

    name: str
    tag: str
    cidr: str
    netns: tuple[str, ...]
    processes: tuple[ProcessRef, ...]
    workdir: str
    state_dir: str

    @classmethod
    def of(cls, sb: Sandbox) -> Footprint:
        refs = tuple(r for pid in sb.pids if (r := ProcessRef.of(pid)) is not None)
        return cls(
            sb.name,
            sb.tag,
            str(sb.cidr),
            tuple(sb.netns_names),
            refs,
            str(sb.workdir),
            str(sb.state_dir),
        )

    def to_json(self) -> str:
        data = self.__dict__ | {"processes": [[r.pid, r.start_time] for r in self.processes]}
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str) -> Footprint:
        data = json.loads(raw)
        data["netns"] = tuple(data["netns"])
        data["processes"] = tuple(ProcessRef(p, s) for p, s in data["processes"])
        return cls(**data)


def ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []


def netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def unreachable_routes() -> set[str]:
    return {str(r["dst"]) for r in ip_json("-4", "route", "show") if r.get("type") == "unreachable"}


def processes_touching(*needles: str) -> list[str]:
    """Processes whose root or command line mentions one of `needles`."""
    hits = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            root = os.readlink(f"/proc/{entry}/root")
        except OSError:
            continue
        if any(n in cmdline or root.startswith(n) for n in needles):
            hits.append(f"{entry}: root={root} cmd={cmdline}")
    return hits


def assert_gone(fp: Footprint) -> None:
    names = netns_list()
    assert not [n for n in names if n in fp.netns or n.startswith(f"msb-{fp.name}-")], names
    host_links = [str(link["ifname"]) for link in ip_json("link", "show")]
    assert not [n for n in host_links if fp.tag in n], host_links
    assert fp.cidr not in unreachable_routes()
    assert not [r for r in fp.processes if r.alive()]
    assert processes_touching(fp.workdir, fp.state_dir, f"msb-{fp.name}-") == []
    assert not Path(fp.workdir).exists()
    assert not Path(fp.state_dir).exists()
    assert fp.name not in list_sandboxes()


def assert_name_gone(name: str, cidr: ipaddress.IPv4Network) -> None:
    """No trace of the sandbox `name` (for builds that failed before a Footprint)."""
    workdirs = f"{tempfile.gettempdir()}/mirrord-sandbox-{name}-"
    assert not [n for n in netns_list() if n.startswith(f"msb-{name}-")]
    assert str(cidr) not in unreachable_routes()
    assert not Path(f"/run/mirrord-sandbox/{name}").exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"mirrord-sandbox-{name}-*"))
    assert processes_touching(workdirs, f"msb-{name}-", f"/run/mirrord-sandbox/{name}/") == []
    assert name not in list_sandboxes()


def run_python(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def private_cidr() -> ipaddress.IPv4Network:
    """A random /28 far from where automatic allocation starts (10.244.0.0/24 upwards),
    so that concurrent test runs do not share it (a shared route outlives one of them)."""
    return ipaddress.IPv4Network(
        f"10.244.{secrets.randbelow(16) + 240}.{secrets.randbelow(16) * 16}/28"
    )


# --- the shared two-pod cluster --------------------------------------------------------

WEB_ENV = {"PATH": "/bin", "APP_MODE": "sandbox", "DATABASE_URL": "postgres://db:5432/x"}
APP_CONF = b"listen = 8080\nsecret = s3cr3t\n"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Sandbox]:
    sb = Sandbox.create(
        [
            PodSpec(
                "web",
                env=WEB_ENV,
                files={"/app/config.toml": APP_CONF},
                www={"index.html": "hello from web\n"},
            ),
            PodSpec("api", services=["api", "backend"], www={"index.html": "hello from api\n"}),
            PodSpec("worker", namespace="jobs", command=["/bin/sleep", "3600"], port=None),
        ]
    )
    footprint = Footprint.of(sb)
    try:
        yield sb
    finally:
        sb.teardown()
        assert_gone(footprint)


@needs_root
def test_pod_reaches_another_pod_by_cluster_dns_name(cluster: Sandbox) -> None:
    url = f"http://{cluster.service_fqdn('api')}:8080/"
    assert url == "http://api.default.svc.cluster.local:8080/"
    result = cluster.exec_in("web", [*WGET, url])
    assert (result.returncode, result.stdout) == (0, b"hello from api\n"), result.stderr
    # Short names resolve through the pod's search domains, extra services too.
    result = cluster.exec_in("web", [*WGET, "http://backend:8080/"])
    assert result.stdout == b"hello from api\n", result.stderr
    # A pod in another namespace needs the namespace in the name.
    result = cluster.exec_in("worker", [*WGET, "http://web.default:8080/"])
    assert result.stdout == b"hello from web\n", result.stderr


@needs_root
def test_nslookup_in_pod(cluster: Sandbox) -> None:
    api_ip = cluster.pod("api").ip
    result = cluster.exec_in("web", ["nslookup", "api.default.svc.cluster.local"], text=True)
    assert f"Server:\t\t{cluster.dns_ip}" in result.stdout
    assert "Name:\tapi.default.svc.cluster.local" in result.stdout
    assert f"Address: {api_ip}" in result.stdout
    assert "Non-authoritative" not in result.stdout
    # busybox's nslookup applies search domains to undotted names only.
    result = cluster.exec_in("web", ["nslookup", "api"], text=True)
    assert f"Address: {api_ip}" in result.stdout
    result = cluster.exec_in(
        "web", ["nslookup", "kube-dns.kube-system.svc.cluster.local"], text=True
    )
    assert f"Address: {cluster.dns_ip}" in result.stdout
    result = cluster.exec_in("web", ["nslookup", api_ip], text=True)
    assert "name = api.default.svc.cluster.local" in result.stdout
    dashed = cluster.pod("web").ip.replace(".", "-")
    result = cluster.exec_in("api", ["nslookup", f"{dashed}.default.pod.cluster.local"], text=True)
    assert f"Address: {cluster.pod('web').ip}" in result.stdout
    result = cluster.exec_in("web", ["nslookup", "nothere.default.svc.cluster.local"], text=True)
    assert result.returncode != 0
    assert "NXDOMAIN" in result.stdout + result.stderr
    log = (cluster.state_dir / "dnsmasq.log").read_text()
    assert "auth[A] api.default.svc.cluster.local from" in log


@needs_root
def test_dns_server_has_no_upstream(cluster: Sandbox) -> None:
    config = (cluster.state_dir / "dnsmasq.conf").read_text().splitlines()
    for line in ("no-resolv", "no-hosts", "auth-zone=cluster.local," + str(cluster.cidr)):
        assert line in config
    assert not [line for line in config if line.startswith(("server=", "dhcp-range"))]
    pid_file = cluster.state_dir / "dnsmasq.pid"
    assert pid_file.read_text().strip() == str(cluster.dns_pid)
    assert (
        os.stat(f"/proc/{cluster.dns_pid}/ns/net").st_ino
        == os.stat(f"/run/netns/{cluster.dns_netns}").st_ino
    )
    # A name outside the zone is not forwarded anywhere, so it does not resolve.
    result = cluster.exec_in("web", ["nslookup", "example.com."], text=True)
    assert result.returncode != 0
    assert "Name:" not in result.stdout and "Address: " not in result.stdout


@needs_root
def test_main_process_environ_is_exactly_the_pod_env(cluster: Sandbox) -> None:
    raw = Path(f"/proc/{cluster.pod('web').pid}/environ").read_bytes()
    environ = dict(item.split("=", 1) for item in raw.decode().split("\0") if item)
    assert environ == WEB_ENV
    default = Path(f"/proc/{cluster.pod('api').pid}/environ").read_bytes()
    assert sorted(default.decode().strip("\0").split("\0")) == [
        "HOSTNAME=api",
        f"PATH={pod_module.DEFAULT_PATH}",
    ]


@needs_root
def test_main_process_is_chrooted_pod_process(cluster: Sandbox) -> None:
    web = cluster.pod("web")
    assert os.readlink(f"/proc/{web.pid}/root") == str(web.root)
    assert Path(f"/proc/{web.pid}/root/app/config.toml").read_bytes() == APP_CONF
    assert os.readlink(f"/proc/{web.pid}/exe") == str(web.root / "bin" / "busybox")
    cmdline = Path(f"/proc/{web.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert cmdline == [b"/bin/busybox", b"httpd", b"-f", b"-p", b"8080", b"-h", b"/www"]
    worker = cluster.pod("worker")
    assert Path(f"/proc/{worker.pid}/cmdline").read_bytes() == b"/bin/sleep\x003600\x00"
    # Its own network namespace (the named one) and its own mount namespace.
    assert os.stat(f"/proc/{web.pid}/ns/net").st_ino == os.stat(web.netns_path).st_ino
    assert os.stat(f"/proc/{web.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    assert os.readlink(f"/proc/{web.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    resolv = Path(f"/proc/{web.pid}/root/etc/resolv.conf").read_text()
    assert f"nameserver {cluster.dns_ip}" in resolv
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv
    worker_resolv = Path(f"/proc/{worker.pid}/root/etc/resolv.conf").read_text()
    assert "search jobs.svc.cluster.local svc.cluster.local cluster.local" in worker_resolv
    hosts = Path(f"/proc/{web.pid}/root/etc/hosts").read_text()
    assert f"{web.ip}\tweb" in hosts
    assert Path(f"/proc/{web.pid}/root/etc/passwd").read_text().startswith("root:x:0:0:")
    # exec_in sees the same file system and the pod's environment.
    result = cluster.exec_in("web", ["/bin/sh", "-c", "cat /app/config.toml; env"], text=True)
    assert result.stdout.startswith(APP_CONF.decode())
    assert "APP_MODE=sandbox" in result.stdout


@needs_root
def test_network_layout_keeps_the_host_out(cluster: Sandbox) -> None:
    cidr = cluster.cidr
    pod_ips = [ipaddress.IPv4Address(p.ip) for p in cluster.pods]
    assert len(set(pod_ips)) == 3 and all(ip in cidr for ip in pod_ips)
    # No host address on the pod network, no sandbox interface in the host.
    for link in ip_json("-4", "addr", "show"):
        for addr in link.get("addr_info", []):
            assert ipaddress.IPv4Address(addr["local"]) not in cidr, link
    host_links = [str(link["ifname"]) for link in ip_json("link", "show")]
    assert not [n for n in host_links if n.startswith(f"ms{cluster.tag}")]
    assert all(len(n) <= 15 and n.startswith(f"ms{cluster.tag}") for n in cluster.links)
    # The bridge lives in the node namespace and holds the gateway address.
    node = ip_json("-n", cluster.node_netns, "-4", "addr", "show")
    node_addresses = {(link["ifname"], a["local"]) for link in node for a in link["addr_info"]}
    assert (cluster.links[0], cluster.gateway) in node_addresses
    node_routes = ip_json("-n", cluster.node_netns, "route", "show")
    assert [r for r in node_routes if r["dst"] == "default"] == []
    forward = subprocess.run(
        ["ip", "netns", "exec", cluster.node_netns, "cat", "/proc/sys/net/ipv4/ip_forward"],
        capture_output=True,
        text=True,
    )
    assert forward.stdout.strip() == "0"
    # Pods route everything through the node.
    pod_routes = ip_json("-n", cluster.pod("web").netns, "route", "show")
    assert [r["gateway"] for r in pod_routes if r["dst"] == "default"] == [cluster.gateway]


@needs_root
def test_host_routes_pod_cidr_to_unreachable(cluster: Sandbox) -> None:
    assert str(cluster.cidr) in unreachable_routes()
    for target in (cluster.pod("web").ip, cluster.dns_ip):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        started = time.monotonic()
        with sock, pytest.raises(OSError) as info:
            sock.connect((target, 8080))
        assert info.value.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
        assert time.monotonic() - started < 1


@needs_root
def test_attach_and_popen_in(cluster: Sandbox) -> None:
    other = Sandbox.attach(cluster.name)
    assert [p.pid for p in other.pods] == [p.pid for p in cluster.pods]
    result = other.exec_in("api", [*WGET, "http://web:8080/"], env={"PATH": "/bin"})
    assert result.stdout == b"hello from web\n"
    proc = cluster.popen_in("api", ["/bin/sleep", "30"])
    try:
        assert os.readlink(f"/proc/{proc.pid}/root") in ("/", str(cluster.pod("api").root))
    finally:
        proc.kill()
        proc.wait()


# --- lifecycle ---------------------------------------------------------------------------


@needs_root
def test_teardown_removes_everything_and_is_idempotent() -> None:
    cidr = private_cidr()
    base = cidr.network_address
    sb = Sandbox.create(
        [PodSpec("one"), PodSpec("two", ip=str(base + 5))], name=unique("tdown"), cidr=str(cidr)
    )
    footprint = Footprint.of(sb)
    assert (sb.gateway, sb.dns_ip) == (str(base + 1), str(base + 2))
    assert [p.ip for p in sb.pods] == [str(base + 3), str(base + 5)]
    response = sb.exec_in("one", [*WGET, "http://two:8080/"])
    assert response.stdout == b"pod two in namespace default\n"
    assert set(footprint.netns) <= set(netns_list())
    assert footprint.cidr in unreachable_routes()
    # A straggler started in a pod is found through its namespace and killed too.
    straggler = sb.popen_in("one", ["/bin/sleep", "3600"])
    sb.teardown()
    assert straggler.poll() is not None
    assert_gone(footprint)
    sb.teardown()
    assert Sandbox.down(footprint.name) is False


@needs_root
def test_owner_teardown_after_external_down_leaves_a_reused_name_alone() -> None:
    name = unique("reuse")
    first = Sandbox.create([PodSpec("web")], name=name)
    first_footprint = Footprint.of(first)
    assert Sandbox.down(name) is True
    assert_gone(first_footprint)
    with Sandbox.create([PodSpec("web")], name=name) as second:
        first.teardown()  # must not touch the new sandbox of the same name
        assert set(second.netns_names) <= set(netns_list())
        assert second.exec_in("web", [*WGET, "http://web:8080/"]).returncode == 0
        second_footprint = Footprint.of(second)
    assert_gone(second_footprint)


@needs_root
def test_with_block_tears_down_on_error() -> None:
    class Failure(Exception):
        pass

    with pytest.raises(Failure), Sandbox.create([PodSpec("solo")]) as sb:
        footprint = Footprint.of(sb)
        raise Failure
    assert_gone(footprint)


@needs_root
def test_up_and_down_from_other_processes(cluster: Sandbox) -> None:
    name = unique("updown")
    up = run_python(f"""
        from mirrord_core.sandbox import PodSpec, Sandbox
        sb = Sandbox.up([PodSpec("web", www={{"index.html": "second web\\n"}}),
                         PodSpec("api")], name={name!r})
        print(sb.state_file)
    """)
    assert up.returncode == 0, up.stderr
    try:
        sb = Sandbox.attach(name)
        footprint = Footprint.of(sb)
        assert up.stdout.strip() == str(sb.state_file) == f"/run/mirrord-sandbox/{name}/state.json"
        state = json.loads(sb.state_file.read_text())
        assert (state["phase"], state["persistent"]) == ("up", True)
        # Its creator has exited; the pods keep running and are not "stale".
        assert all(r.alive() for r in footprint.processes) and len(footprint.processes) == 3
        cleanup_stale()
        assert name in list_sandboxes()
        # Coexists with the module's sandbox: same pod names, separate everything.
        assert sb.cidr != cluster.cidr and not set(sb.netns_names) & set(cluster.netns_names)
        result = sb.exec_in("api", [*WGET, "http://web:8080/"])
        assert result.stdout == b"second web\n", result.stderr
        assert cluster.exec_in("api", [*WGET, "http://web:8080/"]).stdout == b"hello from web\n"
        with pytest.raises(SandboxError, match="already exists"):
            Sandbox.up([PodSpec("x")], name=name)
    finally:
        down = run_python(f"""
            from mirrord_core.sandbox import Sandbox
            print(Sandbox.down({name!r}))
        """)
    assert (down.returncode, down.stdout.strip()) == (0, "True"), down.stderr
    assert_gone(footprint)


@needs_root
def test_failed_pod_start_cleans_up_everything() -> None:
    name, cidr = unique("badpod"), private_cidr()
    specs = [PodSpec("good"), PodSpec("bad", command=["/no/such/binary"])]
    with pytest.raises(SandboxError, match=r"pod bad: process exited with status 127"):
        Sandbox.create(specs, name=name, cidr=str(cidr))
    assert_name_gone(name, cidr)


@needs_root
def test_failure_injected_mid_build_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    class Interrupted(BaseException):
        """Stands in for KeyboardInterrupt: not an Exception, still cleaned up."""

    name = unique("inject")
    real_build_root = pod_module.build_root
    built: list[str] = []

    def failing_build_root(root: Path, spec: PodSpec, **kwargs: object) -> None:
        if built:
            # Everything up to the second pod exists now: prove it, then fail.
            assert Path(f"/run/netns/msb-{name}-pod-first").exists()
            assert str(cidr) in unreachable_routes()
            raise Interrupted
        built.append(spec.name)
        real_build_root(root, spec, **kwargs)  # type: ignore[arg-type]

    cidr = private_cidr()
    monkeypatch.setattr(pod_module, "build_root", failing_build_root)
    with pytest.raises(Interrupted):
        Sandbox.create([PodSpec("first"), PodSpec("second")], name=name, cidr=str(cidr))
    assert built == ["first"]
    assert_name_gone(name, cidr)


@needs_root
def test_cleanup_stale_removes_sandbox_of_dead_creator() -> None:
    name = unique("stale")
    child = run_python(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO / "tests" / "core")!r})
        from test_sandbox import Footprint
        from mirrord_core.sandbox import PodSpec, Sandbox
        sb = Sandbox.create([PodSpec("orphan")], name={name!r})
        print(Footprint.of(sb).to_json(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no with-block exit, no atexit
    """)
    assert child.returncode == -9, child.stderr
    footprint = Footprint.from_json(child.stdout)
    assert all(r.alive() for r in footprint.processes)
    cleanup_stale()  # normally reports f"sandbox {name}" as removed, but a
    # concurrent test run's Sandbox.create (which cleans up first) may beat us.
    assert_gone(footprint)


# --- errors and pure logic (no root needed) -------------------------------------------


def test_not_root_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxError, match="need root"):
        check_prerequisites()
    with pytest.raises(SandboxError, match="run as root"):
        Sandbox.create([PodSpec("web")])
    with pytest.raises(SandboxError, match="need root"):
        cleanup_stale()


def test_missing_tools_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # get past the root check
    monkeypatch.setenv("MIRRORD_SANDBOX_DNSMASQ", "/nonexistent/dnsmasq")
    with pytest.raises(SandboxError, match=r"apt-get install dnsmasq-base"):
        check_prerequisites()
    monkeypatch.delenv("MIRRORD_SANDBOX_DNSMASQ")
    monkeypatch.setenv("MIRRORD_SANDBOX_BUSYBOX", sys.executable)  # dynamically linked
    with pytest.raises(SandboxError, match=r"dynamically linked.*busybox-static"):
        check_prerequisites()
    monkeypatch.setenv("MIRRORD_SANDBOX_BUSYBOX", "/nonexistent/busybox")
    with pytest.raises(SandboxError, match=r"apt-get install busybox-static"):
        check_prerequisites()
    monkeypatch.delenv("MIRRORD_SANDBOX_BUSYBOX")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("mirrord_core.sandbox.tools._EXTRA_DIRS", ())
    with pytest.raises(SandboxError, match=r"apt-get install iproute2"):
        check_prerequisites()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Web"}, "not a DNS label"),
        ({"name": "web", "namespace": "a_b"}, "not a DNS label"),
        ({"name": "web", "files": {"etc/x": b""}}, "must be absolute"),
        ({"name": "web", "files": {"/etc/../../x": b""}}, "must not contain"),
        ({"name": "web", "www": {"/etc/passwd": b""}}, "must be relative"),
        ({"name": "web", "port": 70000}, "out of range"),
        ({"name": "web", "command": []}, "must not be empty"),
    ],
)
def test_pod_spec_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SandboxError, match=message):
        PodSpec(**kwargs)  # type: ignore[arg-type]


def test_address_plan_and_cidr_allocation() -> None:
    plan = AddressPlan(ipaddress.IPv4Network("10.244.3.0/24"))
    assert (str(plan.gateway), str(plan.dns)) == ("10.244.3.1", "10.244.3.2")
    ips = plan.pod_addresses([None, ipaddress.IPv4Address("10.244.3.10"), None])
    assert [str(a) for a in ips] == ["10.244.3.11", "10.244.3.10", "10.244.3.12"]
    with pytest.raises(SandboxError, match="gateway"):
        plan.pod_addresses([ipaddress.IPv4Address("10.244.3.1")])
    taken = [ipaddress.IPv4Network("10.244.0.0/24"), ipaddress.IPv4Network("10.244.1.128/25")]
    assert str(allocate_cidr(taken)) == "10.244.2.0/24"
    routes: list[dict[str, object]] = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "10.0.0.0/8", "dev": "eth1"},
        {"type": "unreachable", "dst": "10.244.0.0/24"},
    ]
    assert conflicting_host_routes(routes, ipaddress.IPv4Network("10.244.0.0/24")) == [
        "unicast 10.0.0.0/8 dev eth1"
    ]
    assert conflicting_host_routes(routes, ipaddress.IPv4Network("172.31.0.0/24")) == []
