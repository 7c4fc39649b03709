"""Pods: their specification, their root file system and their processes.

A pod's processes run in the pod's network namespace, in a mount namespace of
their own, chrooted into the pod root, with exactly the pod's environment:
`ip netns exec NS unshare --mount chroot ROOT CMD...`. Each of the three
tools execs the next without forking, so the PID of the started process *is*
the pod process (what an agent reads /proc/PID/{root,environ,ns/net} of).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import process
from .errors import SandboxError
from .netns import netns_path
from .tools import Tools

DEFAULT_HTTP_PORT = 8080
# The pod's end of its veth pair, named as in a Kubernetes pod.
POD_INTERFACE = "eth0"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Applets linked into /bin of every pod (when busybox has them). Deliberately
# not all of them: reboot/halt/poweroff would act on the real machine, since
# pods have no PID namespace. Anything else is reachable as `/bin/busybox APPLET`.
APPLETS = (
    "[",
    "[[",
    "ash",
    "awk",
    "basename",
    "cat",
    "chmod",
    "cp",
    "cut",
    "date",
    "dd",
    "dirname",
    "echo",
    "env",
    "expr",
    "false",
    "find",
    "grep",
    "head",
    "hexdump",
    "hostname",
    "httpd",
    "id",
    "ifconfig",
    "ip",
    "kill",
    "ln",
    "ls",
    "mkdir",
    "mktemp",
    "mv",
    "nc",
    "netstat",
    "nslookup",
    "od",
    "ping",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "realpath",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "sh",
    "sleep",
    "sort",
    "stat",
    "tail",
    "tee",
    "test",
    "timeout",
    "touch",
    "tr",
    "true",
    "uname",
    "uniq",
    "usleep",
    "vi",
    "wc",
    "wget",
    "which",
    "whoami",
    "xargs",
)

# (path, major, minor) of the character devices programs expect to find.
_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9))

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _check_label(kind: str, value: str) -> None:
    if not _LABEL.match(value):
        raise SandboxError(
            f"{kind} {value!r} is not a DNS label (lowercase letters, digits and '-', "
            "at most 63 characters, starting and ending alphanumeric)"
        )


def _pod_path(path: str, *, base: str = "/") -> PurePosixPath:
    """Normalise a path inside the pod, refusing anything that would escape it."""
    pure = PurePosixPath(base) / path
    if ".." in pure.parts:
        raise SandboxError(f"pod path {path!r} must not contain '..'")
    return pure


@dataclass(frozen=True)
class PodSpec:
    """What a pod should look like.

    - `env`: the main process's exact environment (None: PATH and HOSTNAME).
    - `files`: absolute pod path -> content, written after the defaults, so it
      may replace /etc/hosts and friends. Content starting with `#!` is made
      executable.
    - `www`: path relative to /www -> content, served by the default HTTP
      server; an index.html naming the pod is added unless given.
    - `command`: the main process instead of `httpd -f -p PORT -h /www`.
    - `port`: TCP port the main process listens on; the sandbox waits for it
      before reporting the pod ready. None: do not wait (e.g. a command that
      serves nothing).
    - `services`: service names published in DNS (default: the pod name).
    - `ip`: a fixed address inside the pod CIDR (default: the next free one).
    """

    name: str
    namespace: str = "default"
    env: Mapping[str, str] | None = None
    files: Mapping[str, bytes | str] = field(default_factory=dict)
    www: Mapping[str, bytes | str] | None = None
    command: Sequence[str] | None = None
    port: int | None = DEFAULT_HTTP_PORT
    services: Sequence[str] | None = None
    ip: str | None = None

    def __post_init__(self) -> None:
        _check_label("pod name", self.name)
        _check_label("namespace", self.namespace)
        for service in self.service_names:
            _check_label("service name", service)
        for path in self.files:
            if not path.startswith("/"):
                raise SandboxError(f"pod {self.name}: file path {path!r} must be absolute")
            _pod_path(path)
        for path in self.www or {}:
            if path.startswith("/"):
                raise SandboxError(f"pod {self.name}: www path {path!r} must be relative")
            _pod_path(path, base="/www")
        if self.port is not None and not 0 < self.port < 65536:
            raise SandboxError(f"pod {self.name}: port {self.port} out of range")
        if self.command is not None and not self.command:
            raise SandboxError(f"pod {self.name}: command must not be empty")
        if self.ip is not None:
            try:
                ipaddress.IPv4Address(self.ip)
            except ValueError as exc:
                raise SandboxError(f"pod {self.name}: bad ip {self.ip!r}") from exc

    @property
    def service_names(self) -> tuple[str, ...]:
        """Service names published for this pod."""
        return tuple(self.services) if self.services is not None else (self.name,)

    def environment(self) -> dict[str, str]:
        """The main process's environment."""
        if self.env is not None:
            return dict(self.env)
        return {"PATH": DEFAULT_PATH, "HOSTNAME": self.name}

    def main_command(self) -> list[str]:
        """argv of the main process, as seen inside the pod."""
        if self.command is not None:
            return list(self.command)
        return [
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            str(self.port or DEFAULT_HTTP_PORT),
            "-h",
            "/www",
        ]


@dataclass(frozen=True)
class Pod:
    """A running pod.

    `pid` is the main process itself (already chrooted, in the pod's network
    namespace); `root` is its root directory on the host; `netns` names its
    network namespace (`/run/netns/<netns>`).
    """

    name: str
    namespace: str
    ip: str
    netns: str
    root: Path
    pid: int
    env: Mapping[str, str]
    services: tuple[str, ...]
    log: Path

    @property
    def netns_path(self) -> Path:
        """Path to open for `setns(CLONE_NEWNET)` into this pod."""
        return netns_path(self.netns)


def _write(path: Path, content: bytes | str) -> None:
    data = content.encode() if isinstance(content, str) else content
    path.parent.mkdir(parents=True, exist_ok=True)
    # A symlink planted in the root must not redirect our write to the host.
    if path.is_symlink():
        path.unlink()
    path.write_bytes(data)
    path.chmod(0o755 if data.startswith(b"#!") else 0o644)


def build_root(
    root: Path,
    spec: PodSpec,
    *,
    tools: Tools,
    ip: str,
    dns_ip: str,
    domain: str,
) -> None:
    """Populate an empty directory as the pod's root file system."""
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "tmp", "root", "www"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    # A copy, not a hard link: a pod writing to its /bin/busybox must not
    # change the host's binary.
    shutil.copy2(tools.busybox, root / "bin" / "busybox")
    for applet in APPLETS:
        if applet in tools.applets:
            (root / "bin" / applet).symlink_to("busybox")
    (root / "usr" / "bin" / "env").symlink_to("/bin/busybox")
    for name, major, minor in _DEVICES:
        # Without device nodes `>/dev/null` silently creates a regular file;
        # a file system mounted nodev makes this fail, which is survivable.
        with contextlib.suppress(OSError):
            os.mknod(root / "dev" / name, 0o666 | 0o020000, os.makedev(major, minor))

    search = f"{spec.namespace}.svc.{domain} svc.{domain} {domain}"
    defaults: dict[str, bytes | str] = {
        "/etc/hostname": f"{spec.name}\n",
        "/etc/hosts": (
            "# Kubernetes-managed hosts file (mirrord sandbox).\n"
            "127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{ip}\t{spec.name}\n"
        ),
        "/etc/resolv.conf": f"search {search}\nnameserver {dns_ip}\noptions ndots:5\n",
        "/etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
        "/etc/passwd": (
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        ),
        "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
    }
    for path, content in {**defaults, **dict(spec.files)}.items():
        _write(root / _pod_path(path).relative_to("/"), content)
    www = dict(spec.www or {})
    www.setdefault("index.html", f"pod {spec.name} in namespace {spec.namespace}\n")
    for path, content in www.items():
        _write(root / _pod_path(path, base="/www").relative_to("/"), content)


def in_pod_argv(tools: Tools, netns: str, root: Path, argv: Sequence[str]) -> list[str]:
    """Host argv that runs `argv` inside the pod (netns + mount ns + chroot)."""
    return [
        tools.ip,
        "netns",
        "exec",
        netns,
        tools.unshare,
        "--mount",
        tools.chroot,
        str(root),
        *argv,
    ]


def start_main(
    tools: Tools, spec: PodSpec, *, netns: str, root: Path, log: Path
) -> subprocess.Popen[bytes]:
    """Start the pod's main process."""
    argv = in_pod_argv(tools, netns, root, spec.main_command())
    return process.start(argv, spec.environment(), log)


def wait_ready(
    proc: subprocess.Popen[bytes], spec: PodSpec, *, root: Path, log: Path, timeout: float
) -> None:
    """Wait until the main process is chrooted and, if it has a port, listening."""
    # Until the exec chain reaches the command, the PID belongs to `ip`,
    # `unshare` or `chroot`, whose root is still the host's.
    process.wait_for(
        lambda: process.root_of(proc.pid) == str(root),
        timeout=timeout,
        proc=proc,
        what=f"pod {spec.name}",
        log_path=log,
    )
    if spec.port is not None:
        port = spec.port
        process.wait_for(
            lambda: process.tcp_listening(proc.pid, port),
            timeout=timeout,
            proc=proc,
            what=f"pod {spec.name} (port {port})",
            log_path=log,
        )
