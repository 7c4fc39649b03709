"""`Sandbox`: a miniature cluster of pods on this machine.

Topology (addresses for a 10.244.0.0/24 pod CIDR):

    host namespace: no address on the pod network; `unreachable 10.244.0.0/24`
    msb-NAME-node:  bridge ms<tag>br 10.244.0.1/24 (gateway), no other route
      ├ veth ms<tag>dns ── msb-NAME-dns:      eth0 10.244.0.2  dnsmasq
      ├ veth ms<tag>p0  ── msb-NAME-pod-web:  eth0 10.244.0.10 httpd (chroot)
      └ veth ms<tag>p1  ── msb-NAME-pod-api:  eth0 10.244.0.11 httpd (chroot)
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from . import dns, netns, pod, process
from .addressing import AddressPlan, allocate_cidr
from .errors import SandboxError
from .netns import Ip
from .pod import POD_INTERFACE, Pod, PodSpec
from .state import PodState, SandboxState, global_lock, list_states, state_dir
from .teardown import NETNS_PREFIX, WORKDIR_PREFIX, cleanup_stale, teardown
from .tools import Tools, check_prerequisites

DEFAULT_DOMAIN = "cluster.local"
DEFAULT_READY_TIMEOUT = 15.0

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


class Sandbox:
    """A running sandbox: pods, their network, and the cluster DNS.

    Build one with `Sandbox.create(...)` (torn down when its `with` block or
    the creating process ends) or `Sandbox.up(...)` (stays until
    `Sandbox.down(name)`, from any process). `Sandbox.attach(name)` gives
    another process a handle on a running sandbox.
    """

    def __init__(
        self,
        state: SandboxState,
        *,
        tools: Tools | None = None,
        children: Mapping[str, subprocess.Popen[bytes]] | None = None,
    ) -> None:
        self._state = state
        self._tools = tools
        self._children: dict[str, subprocess.Popen[bytes]] = dict(children or {})
        self._torn_down = False

    # construction -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        pods: Sequence[PodSpec],
        *,
        name: str | None = None,
        cidr: str | None = None,
        domain: str = DEFAULT_DOMAIN,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        persistent: bool = False,
    ) -> Sandbox:
        """Build a sandbox and wait until its DNS server and pods are ready.

        `cidr` defaults to the first free /24 of 10.244.0.0/16. Unless
        `persistent`, the sandbox is torn down at the end of a `with` block,
        by `teardown()`, or when this process exits. On any failure everything
        built so far is removed before the exception propagates.
        """
        tools = check_prerequisites()
        specs = list(pods)
        _validate(specs, name, domain)
        with contextlib.suppress(SandboxError):
            # Leftovers of crashed runs would otherwise hold CIDRs and names.
            cleanup_stale()
        state = _allocate(tools, specs, name=name, cidr=cidr, domain=domain, persistent=persistent)
        sandbox = cls(state, tools=tools)
        try:
            sandbox._build(specs, ready_timeout)
        except BaseException as exc:
            try:
                sandbox.teardown()
            except SandboxError as cleanup_error:
                exc.add_note(f"cleaning up the failed sandbox also failed: {cleanup_error}")
            raise
        if not persistent:
            atexit.register(sandbox._teardown_at_exit)
        return sandbox

    @classmethod
    def up(
        cls,
        pods: Sequence[PodSpec],
        *,
        name: str,
        cidr: str | None = None,
        domain: str = DEFAULT_DOMAIN,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> Sandbox:
        """Build a sandbox that outlives this process; remove it with `down(name)`.

        Its state is in `/run/mirrord-sandbox/<name>/state.json`.
        """
        return cls.create(
            pods, name=name, cidr=cidr, domain=domain, ready_timeout=ready_timeout, persistent=True
        )

    @classmethod
    def attach(cls, name: str) -> Sandbox:
        """A handle on the running sandbox `name` (e.g. created by another process)."""
        state = SandboxState.load(name)
        if state is None:
            raise SandboxError(f"no sandbox named {name!r} (no {state_dir(name)})")
        return cls(state)

    @staticmethod
    def down(name: str) -> bool:
        """Tear down sandbox `name` from its state file; False if it does not exist."""
        state = SandboxState.load(name)
        return state is not None and teardown(state)

    # teardown -----------------------------------------------------------------

    def teardown(self) -> None:
        """Remove everything this sandbox created. Safe to call repeatedly."""
        if self._torn_down:
            return
        teardown(self._state, children=self._children.values())
        self._torn_down = True
        atexit.unregister(self._teardown_at_exit)

    def _teardown_at_exit(self) -> None:
        with contextlib.suppress(SandboxError):
            self.teardown()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    # introspection ------------------------------------------------------------

    @property
    def name(self) -> str:
        """The sandbox's name (its state directory's name)."""
        return self._state.name

    @property
    def tag(self) -> str:
        """Random hex tag; every interface name of this sandbox starts `ms<tag>`."""
        return self._state.tag

    @property
    def cidr(self) -> ipaddress.IPv4Network:
        """The pod CIDR."""
        return ipaddress.IPv4Network(self._state.cidr)

    @property
    def gateway(self) -> str:
        """The bridge's address: every pod's default gateway."""
        return self._state.gateway

    @property
    def dns_ip(self) -> str:
        """Address of the cluster DNS server (port 53, UDP and TCP)."""
        return self._state.dns_ip

    @property
    def domain(self) -> str:
        """The cluster domain, e.g. cluster.local."""
        return self._state.domain

    @property
    def node_netns(self) -> str:
        """Name of the namespace holding the bridge."""
        return self._state.node_netns

    @property
    def dns_netns(self) -> str:
        """Name of the namespace dnsmasq runs in."""
        return self._state.dns_netns

    @property
    def netns_names(self) -> list[str]:
        """Every network namespace of this sandbox."""
        return list(self._state.netns)

    @property
    def links(self) -> list[str]:
        """Every interface this sandbox created in its node namespace."""
        return [self._state.bridge, self._state.dns_veth] + [p.veth for p in self._state.pods]

    @property
    def pids(self) -> list[int]:
        """PIDs of the long-running processes (pods' main processes, dnsmasq)."""
        return [ref.pid for ref in self._state.process_refs()]

    @property
    def dns_pid(self) -> int | None:
        """PID of dnsmasq."""
        return self._state.dns_pid

    @property
    def workdir(self) -> Path:
        """Temporary directory holding the pod roots."""
        return Path(self._state.workdir)

    @property
    def state_dir(self) -> Path:
        """Directory with state.json, the dnsmasq config and the logs."""
        return state_dir(self._state.name)

    @property
    def state_file(self) -> Path:
        """The state file `Sandbox.down` and `Sandbox.attach` read."""
        return self._state.path

    @property
    def persistent(self) -> bool:
        """Whether the sandbox outlives its creator (made by `up`)."""
        return self._state.persistent

    @property
    def pods(self) -> list[Pod]:
        """The pods, in creation order."""
        return [_pod(p) for p in self._state.pods]

    def pod(self, name: str) -> Pod:
        """The pod called `name`."""
        for p in self._state.pods:
            if p.name == name:
                return _pod(p)
        raise SandboxError(f"sandbox {self.name} has no pod {name!r}")

    def service_fqdn(self, service: str, namespace: str = "default") -> str:
        """`<service>.<namespace>.svc.<domain>`."""
        return dns.service_fqdn(service, namespace, self.domain)

    # running commands in pods -------------------------------------------------

    def in_pod_argv(self, pod_name: str, argv: Sequence[str]) -> list[str]:
        """Host argv that runs `argv` inside the pod (netns + mount ns + chroot)."""
        p = self.pod(pod_name)
        return pod.in_pod_argv(self._get_tools(), p.netns, p.root, argv)

    def exec_in(
        self,
        pod_name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        input: bytes | str | None = None,
        timeout: float = 30.0,
        text: bool = False,
        check: bool = False,
    ) -> subprocess.CompletedProcess[Any]:
        """Run `argv` in the pod like `kubectl exec`, capturing its output.

        The environment is the pod's unless `env` is given; paths in `argv`
        are the pod's (e.g. `/bin/busybox`).
        """
        environment = dict(self.pod(pod_name).env if env is None else env)
        return subprocess.run(
            self.in_pod_argv(pod_name, argv),
            env=environment,
            input=input,
            capture_output=True,
            timeout=timeout,
            text=text,
            check=check,
        )

    def popen_in(
        self,
        pod_name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start `argv` in the pod without waiting; the Popen's PID is the command's.

        Such processes are killed at teardown too (they are in the pod's
        network namespace).
        """
        environment = dict(self.pod(pod_name).env if env is None else env)
        return subprocess.Popen(self.in_pod_argv(pod_name, argv), env=environment, **kwargs)

    def __repr__(self) -> str:
        pods = ", ".join(f"{p.name}={p.ip}" for p in self._state.pods)
        return (
            f"Sandbox(name={self.name!r}, cidr={self._state.cidr}, dns={self.dns_ip}, "
            f"pods=[{pods}])"
        )

    # building -----------------------------------------------------------------

    def _get_tools(self) -> Tools:
        if self._tools is None:
            self._tools = check_prerequisites()
        return self._tools

    def _add_netns(self, ip: Ip, name: str) -> None:
        if netns.netns_exists(name):
            # Not recorded, so teardown leaves the existing namespace alone.
            raise SandboxError(
                f"network namespace {name} already exists; remove leftovers with "
                "mirrord_core.sandbox.cleanup_stale() or `ip netns delete`"
            )
        self._state.netns.append(name)
        self._state.save()
        ip.add_netns(name)

    def _build(self, specs: Sequence[PodSpec], ready_timeout: float) -> None:
        state = self._state
        tools = self._get_tools()
        ip = Ip(tools.ip)
        plan = AddressPlan(ipaddress.IPv4Network(state.cidr))
        gateway = ipaddress.IPv4Address(state.gateway)

        Path(state.workdir).mkdir(mode=0o755)

        self._add_netns(ip, state.node_netns)
        ip.add_bridge(state.node_netns, state.bridge, plan.interface(gateway))
        self._install_route(ip)

        self._add_netns(ip, state.dns_netns)
        ip.add_veth_to_bridge(
            state.node_netns,
            state.bridge,
            state.dns_veth,
            state.dns_netns,
            plan.interface(ipaddress.IPv4Address(state.dns_ip)),
            gateway,
        )

        for spec, ps in zip(specs, state.pods, strict=True):
            self._add_netns(ip, ps.netns)
            ip.add_veth_to_bridge(
                state.node_netns,
                state.bridge,
                ps.veth,
                ps.netns,
                plan.interface(ipaddress.IPv4Address(ps.ip)),
                gateway,
            )
            root = Path(ps.root)
            root.mkdir(parents=True)
            pod.build_root(
                root, spec, tools=tools, ip=ps.ip, dns_ip=state.dns_ip, domain=state.domain
            )

        dnsmasq = self._start_dns(tools)

        started = []
        for spec, ps in zip(specs, state.pods, strict=True):
            proc = pod.start_main(tools, spec, netns=ps.netns, root=Path(ps.root), log=Path(ps.log))
            self._children[ps.name] = proc
            # The exec chain keeps PID and start time, so this already
            # identifies the pod process even before it reaches the chroot.
            ref = process.ProcessRef.of(proc.pid)
            ps.pid, ps.pid_start = proc.pid, (ref.start_time if ref else None)
            state.save()
            started.append((spec, ps, proc))

        dns.wait_ready(dnsmasq, timeout=ready_timeout, log_file=self.state_dir / "dnsmasq.log")
        for spec, ps, proc in started:
            pod.wait_ready(proc, spec, root=Path(ps.root), log=Path(ps.log), timeout=ready_timeout)

        state.phase = "up"
        state.save()

    def _install_route(self, ip: Ip) -> None:
        state = self._state
        cidr = ipaddress.IPv4Network(state.cidr)
        with global_lock():
            shared = any(
                s.name != state.name and s.cidr == state.cidr and s.route_installed
                for s in list_states()
            )
            # A route that was there before us and belongs to no sandbox is
            # someone else's: keep it at teardown.
            state.route_foreign = ip.unreachable_route_exists(cidr) and not shared
            state.route_installed = True
            state.save()
            ip.install_unreachable_route(cidr)

    def _start_dns(self, tools: Tools) -> subprocess.Popen[bytes]:
        state = self._state
        directory = self.state_dir
        config = directory / "dnsmasq.conf"
        log_file = directory / "dnsmasq.log"
        entries = dns.records(
            ((p.ip, p.namespace, p.services) for p in state.pods),
            domain=state.domain,
            dns_ip=state.dns_ip,
        )
        config.write_text(
            dns.render_config(
                listen=ipaddress.IPv4Address(state.dns_ip),
                interface=POD_INTERFACE,
                cidr=ipaddress.IPv4Network(state.cidr),
                domain=state.domain,
                entries=entries,
                pid_file=directory / "dnsmasq.pid",
                log_file=log_file,
            )
        )
        proc = dns.start(
            ip=tools.ip,
            dnsmasq=tools.dnsmasq,
            netns=state.dns_netns,
            config=config,
            log_file=log_file,
        )
        self._children["dnsmasq"] = proc
        ref = process.ProcessRef.of(proc.pid)
        state.dns_pid, state.dns_pid_start = proc.pid, (ref.start_time if ref else None)
        state.save()
        return proc


def _pod(ps: PodState) -> Pod:
    if ps.pid is None:
        raise SandboxError(f"pod {ps.name} has not been started")
    return Pod(
        name=ps.name,
        namespace=ps.namespace,
        ip=ps.ip,
        netns=ps.netns,
        root=Path(ps.root),
        pid=ps.pid,
        env=dict(ps.env),
        services=tuple(ps.services),
        log=Path(ps.log),
    )


def _validate(specs: Sequence[PodSpec], name: str | None, domain: str) -> None:
    if name is not None and not _NAME.match(name):
        raise SandboxError(
            f"sandbox name {name!r}: use 1-32 lowercase letters, digits and '-', "
            "starting and ending alphanumeric"
        )
    if not re.match(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$", domain):
        raise SandboxError(f"cluster domain {domain!r} is not a valid DNS name")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise SandboxError(f"pod name {spec.name!r} is used twice")
        seen.add(spec.name)
    if len(specs) > 1000:
        raise SandboxError("at most 1000 pods per sandbox")


def _allocate(
    tools: Tools,
    specs: Sequence[PodSpec],
    *,
    name: str | None,
    cidr: str | None,
    domain: str,
    persistent: bool,
) -> SandboxState:
    """Pick name, tag, CIDR and addresses, and record them, atomically."""
    ip = Ip(tools.ip)
    owner = process.ProcessRef.of(os.getpid())
    assert owner is not None  # we are running
    with global_lock():
        states = list_states()
        if name is not None:
            existing = next((s for s in states if s.name == name), None)
            if existing is not None:
                if not existing.is_stale():
                    raise SandboxError(
                        f"a sandbox named {name!r} already exists ({existing.path}); "
                        f"tear it down first: Sandbox.down({name!r})"
                    )
                teardown(existing)
                states = [s for s in states if s.name != name]
        tags = {s.tag for s in states}
        tag = secrets.token_hex(3)
        while tag in tags:
            tag = secrets.token_hex(3)
        name = name or f"sb-{tag}"

        routes = ip.host_ipv4_routes()
        if cidr is None:
            taken = [ipaddress.IPv4Network(s.cidr) for s in states]
            network = allocate_cidr(taken + netns.occupied_prefixes(routes))
        else:
            try:
                network = ipaddress.IPv4Network(cidr)
            except ValueError as exc:
                raise SandboxError(f"pod CIDR {cidr!r}: {exc}") from exc
            if conflicts := netns.conflicting_host_routes(routes, network):
                raise SandboxError(
                    f"pod CIDR {network} overlaps networks this machine uses "
                    f"({'; '.join(conflicts)}); choose another CIDR"
                )
        plan = AddressPlan(network)
        addresses = plan.pod_addresses(
            [ipaddress.IPv4Address(s.ip) if s.ip else None for s in specs]
        )

        workdir = Path(tempfile.gettempdir()).resolve() / f"{WORKDIR_PREFIX}{name}-{tag}"
        directory = state_dir(name)
        prefix = f"ms{tag}"
        state = SandboxState(
            name=name,
            tag=tag,
            cidr=str(network),
            gateway=str(plan.gateway),
            dns_ip=str(plan.dns),
            domain=domain,
            workdir=str(workdir),
            node_netns=f"{NETNS_PREFIX}{name}-node",
            dns_netns=f"{NETNS_PREFIX}{name}-dns",
            bridge=f"{prefix}br",
            dns_veth=f"{prefix}dns",
            persistent=persistent,
            owner_pid=owner.pid,
            owner_start=owner.start_time,
            pods=[
                PodState(
                    name=spec.name,
                    namespace=spec.namespace,
                    ip=str(address),
                    netns=f"{NETNS_PREFIX}{name}-pod-{spec.name}",
                    veth=f"{prefix}p{index}",
                    root=str(workdir / "pods" / spec.name),
                    env=spec.environment(),
                    services=list(spec.service_names),
                    log=str(directory / "logs" / f"{spec.name}.log"),
                )
                for index, (spec, address) in enumerate(zip(specs, addresses, strict=True))
            ],
        )
        state.save()
        return state
