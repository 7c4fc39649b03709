"""Helpers of the ``mirrord run`` network tests: a static Go client built here (the same
program the interception tests use), the clients' command lines, and running
``mirrord run -t pid/PID`` through the CLI. (A module of its own: test modules import
it by name.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

_INTERCEPTION_TESTS = Path(__file__).resolve().parents[2] / "core" / "interception"
if str(_INTERCEPTION_TESTS) not in sys.path:
    sys.path.append(str(_INTERCEPTION_TESTS))

from interception_helpers import GO_PROGRAM, has_interpreter  # noqa: E402

BUSYBOX = "/usr/bin/busybox"
API_BODY = "hello from the api pod\n"
WEB_BODY = "web pod says hi\n"

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is needed for this test: apt-get install {package}"
    return path


def build_go_client(directory: Path) -> Path:
    """The interception tests' static Go program (``CGO_ENABLED=0``: Go's own resolver),
    which prints the files or http:// URLs it is given."""
    go = tool("go", "golang-go")
    (directory / "main.go").write_text(GO_PROGRAM)
    (directory / "go.mod").write_text("module example.com/probe\n\ngo 1.19\n")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    subprocess.run(
        [go, "build", "-o", "probe", "."], cwd=directory, env=env, check=True, timeout=300
    )
    binary = directory / "probe"
    assert not has_interpreter(binary), "the Go program should be statically linked"
    return binary


def fetch_command(client: str, urls: Sequence[str], go_client: Path) -> list[str]:
    """A command printing the bodies of ``urls`` (HTTP GETs) with ``client``."""
    if client == "python":
        code = (
            "import sys, urllib.request\n"
            "for url in sys.argv[1:]:\n"
            "    print(urllib.request.urlopen(url, timeout=10).read().decode(), end='')\n"
        )
        return [sys.executable, "-c", code, *urls]
    if client == "curl":
        return [tool("curl", "curl"), "-sS", "--max-time", "10", *urls]
    if client == "busybox-static":
        # busybox wget's -T crashes: timeout bounds it instead.
        script = "; ".join(f"timeout 10 {BUSYBOX} wget -qO- {url} || exit 1" for url in urls)
        return [BUSYBOX, "sh", "-c", script]
    if client == "go-static":
        return [str(go_client), *urls]
    if client == "node":
        script = (
            "const urls = process.argv.slice(1);"
            "const next = () => { const url = urls.shift(); if (!url) return;"
            " require('http').get(url, r => { r.setEncoding('utf8');"
            " r.on('data', d => process.stdout.write(d)); r.on('end', next); })"
            " .on('error', e => { console.error(e.message); process.exit(1); }); };"
            "next();"
        )
        return [tool("node", "nodejs"), "-e", script, *urls]
    raise AssertionError(client)


CLIENTS = ["python", "curl", "busybox-static", "go-static", "node"]


def mirrord_run(
    run_cli: RunCli, pid: int, command: Sequence[str], *options: str
) -> subprocess.CompletedProcess[str]:
    """``mirrord run [options] -t pid/PID -- command`` as a user would type it."""
    return run_cli("run", *options, "-t", f"pid/{pid}", "--", *command)


def mirrord_run_offline(
    pid: int, command: Sequence[str], *options: str
) -> subprocess.CompletedProcess[str]:
    """``mirrord run`` in a network namespace of its own with only loopback, so that what
    it does locally (resolving names with this machine's nameservers) cannot leave the
    machine. The agent still enters the pod's namespace."""
    mirrord = Path(sys.executable).parent / "mirrord"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}
    shell = 'ip link set lo up && exec "$@"'
    argv = [tool("unshare", "util-linux"), "--net", "sh", "-c", shell, "sh"]
    argv += [str(mirrord), "run", *options, "-t", f"pid/{pid}", "--", *command]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
