"""Unix stream sockets under ``mirrord run`` (``feature.network.outgoing.unix_streams``):
real clients (Python, curl, a static Go binary, Node) connect to a socket inside the pod —
a file in the pod's root, or an abstract name in the pod's network namespace — while
paths no pattern matches stay local, and symlinks out of the pod's root never reach a
socket of this machine."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from network_run_helpers import RunCli, mirrord_run, tool
from static_go import build_static_go

from mirrord_core.sandbox import Sandbox
from mirrord_core.sandbox.demo import demo_pods

#: A socket of this machine that no run may reach (the pod's symlinks point at it).
# Per test run: concurrent runs of this module must not reach each other's socket.
HOST_SOCKET = Path(f"/run/mirrord-test-unix-streams-host-{os.getpid()}.sock")
ABSTRACT_NAME = "mirrord-test-unix-streams"

#: A unix HTTP/1.0 server: answers which socket was reached and the request line.
SERVER = r"""
import os, socket, sys, threading
path, abstract, pod = sys.argv[1], sys.argv[2], sys.argv[3]

def serve(listener, label):
    while True:
        connection, _ = listener.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                request += chunk
            line = request.split(b"\r\n", 1)[0].decode()
            body = f"pod {pod} {label}: {line}\n".encode()
            header = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
            connection.sendall(header + body)

listeners = []
for address, label in ((path, "file socket"), ("\0" + abstract, "abstract socket")):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(16)
    listeners.append(threading.Thread(target=serve, args=(listener, label), daemon=True))
for thread in listeners:
    thread.start()
print("ready", flush=True)
sys.stdin.read()
"""

GO_UNIX_CLIENT = """\
package main

// probe ADDRESS PATH: GET PATH over the unix socket ADDRESS ("@name": abstract); prints
// the peer address and the body.

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
)

func main() {
	conn, err := net.Dial("unix", os.Args[1])
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(3)
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.0\\r\\n\\r\\n", os.Args[2])
	data, err := io.ReadAll(conn)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(4)
	}
	fmt.Println("peer:", conn.RemoteAddr().String())
	fmt.Print(strings.SplitN(string(data), "\\r\\n\\r\\n", 2)[1])
}
"""

#: Python client: connects to each address given (``@name``: abstract), prints JSON.
PYTHON_CLIENT = textwrap.dedent(
    r"""
    import json, socket, sys
    out = []
    for address in sys.argv[1:]:
        target = "\0" + address[1:] if address.startswith("@") else address
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(target)
        except OSError as error:
            out.append({"errno": error.errno})
            continue
        peer = s.getpeername()
        s.sendall(b"GET /python HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        out.append({"peer": peer if isinstance(peer, str) else "@" + peer[1:].decode(),
                    "body": data.split(b"\r\n\r\n", 1)[1].decode()})
    # A non-blocking socket connects at once too.
    n = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    n.setblocking(False)
    out.append({"nonblocking": n.connect_ex(sys.argv[1])})
    print(json.dumps(out))
    """
)


class LocalServer:
    """A unix HTTP/1.0 server of this machine answering ``local socket: <request line>``;
    counts the connections it accepted."""

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.path = path
        self.accepted = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            with connection:
                connection.settimeout(10)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                body = b"local socket: " + request.split(b"\r\n", 1)[0] + b"\n"
                header = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                with contextlib.suppress(OSError):
                    connection.sendall(header + body)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def host_socket() -> Iterator[LocalServer]:
    server = LocalServer(HOST_SOCKET)
    yield server
    server.close()


@pytest.fixture(scope="module")
def sandbox(host_socket: LocalServer) -> Iterator[Sandbox]:
    """The demo pods; the web pod serves ``/run/app.sock`` and the abstract name, and has
    symlinks pointing (absolutely and with ``..``) at this machine's :data:`HOST_SOCKET`."""
    with Sandbox.create(demo_pods()) as sb:
        web = sb.pod("web")
        run = web.root / "run"
        run.mkdir(exist_ok=True)
        os.symlink(str(HOST_SOCKET), run / "escape-abs.sock")
        os.symlink("../" * 12 + str(HOST_SOCKET.relative_to("/")), run / "escape-rel.sock")
        os.symlink("app.sock", run / "current.sock")
        os.symlink(str(HOST_SOCKET.parent), run / "escape-dir")
        nsenter = tool("nsenter", "util-linux")
        server = subprocess.Popen(
            [
                nsenter,
                f"--net={web.netns_path}",
                sys.executable,
                "-c",
                SERVER,
                str(run / "app.sock"),
                ABSTRACT_NAME,
                "web",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            assert server.stdout.readline() == "ready\n"
            yield sb
        finally:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static Go binary (``CGO_ENABLED=0``) that speaks HTTP/1.0 over a unix socket."""
    return build_static_go(tmp_path_factory.mktemp("go-unix-client"), GO_UNIX_CLIENT, "probe")


def _config(tmp_path: Path, *patterns: str) -> str:
    config = tmp_path / "mirrord.toml"
    config.write_text(f"[feature.network.outgoing]\nunix_streams = {json.dumps(list(patterns))}\n")
    return str(config)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_python_connects_to_the_pods_sockets(
    sandbox: Sandbox, run_cli: RunCli, tmp_path: Path
) -> None:
    """A file socket (directly and through the pod's own symlink) and an abstract name;
    ``getpeername`` reports the address the program connected to."""
    addresses = ["/run/app.sock", "/run/current.sock", f"@{ABSTRACT_NAME}", "/run/missing.sock"]
    command = [sys.executable, "-c", PYTHON_CLIENT, *addresses]
    config = _config(tmp_path, "^/run/", f"^{ABSTRACT_NAME}$")
    out = json.loads(_ok(mirrord_run(run_cli, sandbox.pod("web").pid, command, "-f", config)))
    assert out == [
        {"peer": "/run/app.sock", "body": "pod web file socket: GET /python HTTP/1.0\n"},
        {"peer": "/run/current.sock", "body": "pod web file socket: GET /python HTTP/1.0\n"},
        {"peer": f"@{ABSTRACT_NAME}", "body": "pod web abstract socket: GET /python HTTP/1.0\n"},
        {"errno": errno.ENOENT},
        {"nonblocking": 0},
    ]


def test_curl_through_the_environment_variable(sandbox: Sandbox, run_cli: RunCli) -> None:
    curl = tool("curl", "curl")
    command = [curl, "-sS", "--max-time", "10", "--unix-socket", "/run/app.sock", "http://pod/c"]
    result = run_cli(
        "run",
        "-t",
        f"pid/{sandbox.pod('web').pid}",
        "--",
        *command,
        env={"MIRRORD_OUTGOING_REMOTE_UNIX_STREAMS": r"^/run/app\.sock$"},
    )
    assert _ok(result) == "pod web file socket: GET /c HTTP/1.1\n"


def test_static_go_and_node(
    sandbox: Sandbox, run_cli: RunCli, tmp_path: Path, go_client: Path
) -> None:
    web = sandbox.pod("web").pid
    config = _config(tmp_path, "app", ABSTRACT_NAME)
    go = _ok(mirrord_run(run_cli, web, [str(go_client), "/run/app.sock", "/go"], "-f", config))
    assert go.splitlines() == ["peer: /run/app.sock", "pod web file socket: GET /go HTTP/1.0"]
    go = _ok(mirrord_run(run_cli, web, [str(go_client), f"@{ABSTRACT_NAME}", "/a"], "-f", config))
    assert go.splitlines() == [
        f"peer: @{ABSTRACT_NAME}",
        "pod web abstract socket: GET /a HTTP/1.0",
    ]
    node = tool("node", "nodejs")
    script = (
        "const s = require('net').connect('/run/app.sock');"
        "s.on('connect', () => s.write('GET /node HTTP/1.0\\r\\n\\r\\n'));"
        "let d = ''; s.on('data', c => d += c);"
        "s.on('end', () => process.stdout.write(d.split('\\r\\n\\r\\n')[1]));"
        "s.on('error', e => { console.error(e.message); process.exit(1); });"
    )
    out = _ok(mirrord_run(run_cli, web, [node, "-e", script], "-f", config))
    assert out == "pod web file socket: GET /node HTTP/1.0\n"


def test_paths_no_pattern_matches_stay_local(
    sandbox: Sandbox, run_cli: RunCli, tmp_path: Path
) -> None:
    local = LocalServer(tmp_path / "local.sock")
    try:
        command = [sys.executable, "-c", PYTHON_CLIENT, str(local.path), "/run/app.sock"]
        config = _config(tmp_path, "^/nothing/")
        out = json.loads(_ok(mirrord_run(run_cli, sandbox.pod("web").pid, command, "-f", config)))
    finally:
        local.close()
    assert out == [
        {"peer": str(local.path), "body": "local socket: GET /python HTTP/1.0\n"},
        {"errno": errno.ENOENT},  # the pod's socket does not exist on this machine
        {"nonblocking": 0},
    ]


def test_symlinks_out_of_the_pod_never_reach_this_machine(
    sandbox: Sandbox, run_cli: RunCli, tmp_path: Path, host_socket: LocalServer
) -> None:
    dotdot = "/run/" + "../" * 12 + str(HOST_SOCKET.relative_to("/"))
    through_dir = f"/run/escape-dir/{HOST_SOCKET.name}"
    addresses = [
        "/run/escape-abs.sock",
        "/run/escape-rel.sock",
        dotdot,
        through_dir,
        "/app/config.yaml",
    ]
    command = [sys.executable, "-c", PYTHON_CLIENT, *addresses]
    config = _config(tmp_path, "^/")
    out = json.loads(_ok(mirrord_run(run_cli, sandbox.pod("web").pid, command, "-f", config)))
    assert out == [
        {"errno": errno.ENOENT},
        {"errno": errno.ENOENT},
        {"errno": errno.ENOENT},
        {"errno": errno.ENOENT},
        {"errno": errno.ECONNREFUSED},  # a file that is not a socket
        {"nonblocking": errno.ENOENT},
    ]
    assert host_socket.accepted == 0
    # Followed on this machine, the pod's links do lead to the host's socket.
    run = sandbox.pod("web").root / "run"
    for link in (run / "escape-abs.sock", run / "escape-dir" / HOST_SOCKET.name):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(link))
