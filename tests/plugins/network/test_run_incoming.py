"""Incoming traffic under ``mirrord run -t pid/PID``: a client in the api pod calls the web
pod's IP, and a local app (Python ``http.server``, busybox httpd, Node) gets the
connection — stolen (it answers), filtered by a header, or mirrored (the pod answers).
Traffic goes only to loopback and the sandbox's namespaces."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from network_run_helpers import BUSYBOX, WEB_BODY, tool

from mirrord_core.sandbox import Sandbox
from mirrord_core.sandbox.demo import demo_pods

LOCAL_BODY = "answered by the local app\n"
#: Generous bound for things that happen within seconds (a subscription taking effect, a
#: dead agent's redirect expiring); the tests poll, they do not time anything.
SETTLE = 30.0


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.create(demo_pods()) as sb:
        yield sb


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(sandbox: Sandbox, path: str = "/", headers: Sequence[str] = ()) -> str | None:
    """GET the web pod's ``path`` from the api pod; ``None`` when it fails."""
    url = f"http://{sandbox.pod('web').ip}:8080{path}"
    argv = ["/bin/busybox", "timeout", "5", "/bin/busybox", "wget", "-qO-"]
    for header in headers:
        argv += ["--header", header]
    result = sandbox.exec_in("api", [*argv, url], text=True, timeout=20)
    return result.stdout if result.returncode == 0 else None


def wait_for(predicate: object, what: str, timeout: float = SETTLE) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def nft_tables(sandbox: Sandbox) -> str:
    netns = sandbox.pod("web").netns
    return subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def app_command(app: str, port: int, directory: Path) -> list[str]:
    """A local HTTP server on ``port`` serving ``directory`` and logging requests."""
    if app == "python":
        return [sys.executable, "-m", "http.server", str(port), "--directory", str(directory)]
    if app == "busybox-httpd":
        return [BUSYBOX, "httpd", "-f", "-vv", "-p", str(port), "-h", str(directory)]
    if app == "node":
        script = (
            "const fs = require('fs'); const path = require('path');"
            "require('http').createServer((req, res) => {"
            " console.error(`${req.socket.remoteAddress} ${req.method} ${req.url}`);"
            " res.end(fs.readFileSync(path.join(process.argv[2], 'index.html'))); })"
            ".listen(+process.argv[1]);"
        )
        return [tool("node", "nodejs"), "-e", script, str(port), str(directory)]
    raise AssertionError(app)


class MirrordRun:
    """``mirrord run`` in the background, as a user runs a server under it."""

    def __init__(
        self, tmp_path: Path, pid: int, command: Sequence[str], config: dict[str, object]
    ) -> None:
        config_file = tmp_path / f"mirrord-{len(list(tmp_path.iterdir()))}.json"
        config_file.write_text(json.dumps(config))
        mirrord = Path(sys.executable).parent / "mirrord"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}
        self.log = tmp_path / f"{config_file.stem}.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [str(mirrord), "run", "-f", str(config_file), "-t", f"pid/{pid}", "--", *command],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def agent_pids(self) -> list[int]:
        result = subprocess.run(
            ["pgrep", "-f", "-P", str(self.process.pid), "mirrord_core.cli agent"],
            capture_output=True,
            text=True,
        )
        return [int(pid) for pid in result.stdout.split()]

    def kill_everything(self) -> None:
        """``kill -9`` of the agent and of ``mirrord run`` (and its app): nobody cleans up."""
        agents = self.agent_pids()
        assert agents, "the agent runs as a child of mirrord run"
        for pid in agents:
            os.kill(pid, signal.SIGKILL)
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=SETTLE)

    def stop(self, signum: int = signal.SIGINT) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signum)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()
        finally:
            self._log_file.close()


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[list[MirrordRun]]:
    started: list[MirrordRun] = []
    yield started
    for run in started:
        run.stop(signal.SIGKILL)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    directory = tmp_path / "site"
    directory.mkdir()
    (directory / "index.html").write_text(LOCAL_BODY)
    return directory


def steal_config(port: int, **incoming: object) -> dict[str, object]:
    return {
        "feature": {
            # No remote files (no FUSE mount): these apps read nothing from the pod, and the
            # kill -9 tests must not catch mirrord run inside a call on its own mount, where
            # the kernel waits uninterruptibly for the answer only the dead process could give.
            "fs": {"mode": "local"},
            "network": {
                "incoming": {"mode": "steal", "port_mapping": [[port, 8080]], **incoming},
            },
        }
    }


def start_stealing(
    sandbox: Sandbox,
    site: Path,
    tmp_path: Path,
    runs: list[MirrordRun],
    **extra_config: object,
) -> MirrordRun:
    """A Python app under ``mirrord run`` stealing the web pod's port 8080, once it does;
    ``extra_config`` adds top-level config sections (``agent={...}``)."""
    port = free_port()
    config = {**steal_config(port), **extra_config}
    run = MirrordRun(tmp_path, sandbox.pod("web").pid, app_command("python", port, site), config)
    runs.append(run)
    wait_for(lambda: fetch(sandbox, "/index.html") == LOCAL_BODY, "the port to be stolen")
    return run


def wait_until_pod_answers(sandbox: Sandbox) -> None:
    wait_for(lambda: fetch(sandbox) == WEB_BODY, "the pod to answer its own traffic again")


@pytest.mark.parametrize("app", ["python", "busybox-httpd", "node"])
def test_steal_reaches_the_local_app_with_the_real_peer(
    app: str, sandbox: Sandbox, site: Path, tmp_path: Path, runs: list[MirrordRun]
) -> None:
    port = free_port()
    run = MirrordRun(
        tmp_path, sandbox.pod("web").pid, app_command(app, port, site), steal_config(port)
    )
    runs.append(run)
    wait_for(lambda: fetch(sandbox, "/index.html") == LOCAL_BODY, f"{app} to be stolen to")
    assert fetch(sandbox, "/index.html") == LOCAL_BODY
    # The app logs its client: the api pod, not the relay on loopback.
    wait_for(lambda: sandbox.pod("api").ip in run.output(), "the app to log the api pod's IP")
    assert run.stop() in (0, 130, -signal.SIGINT, 1), run.output()
    wait_until_pod_answers(sandbox)
    assert "mirrord" not in nft_tables(sandbox)


def test_mirror_shows_the_local_app_a_copy_while_the_pod_answers(
    sandbox: Sandbox, site: Path, tmp_path: Path, runs: list[MirrordRun]
) -> None:
    port = free_port()
    config = {
        "feature": {"network": {"incoming": {"mode": "mirror", "port_mapping": [[port, 8080]]}}}
    }
    run = MirrordRun(tmp_path, sandbox.pod("web").pid, app_command("python", port, site), config)
    runs.append(run)
    marker = f"/mirrored-{os.getpid()}"

    def seen() -> bool:
        # The pod answers every request itself (busybox httpd: 404 for an unknown path
        # makes wget fail, so ask for a path it serves, with the marker as a query).
        assert fetch(sandbox, f"/index.html?{marker[1:]}") == WEB_BODY
        return marker[1:] in run.output()

    wait_for(seen, "the local app to see the mirrored request")
    assert sandbox.pod("api").ip in run.output()
    run.stop()


def test_header_filter_steals_only_matching_requests(
    sandbox: Sandbox, site: Path, tmp_path: Path, runs: list[MirrordRun]
) -> None:
    port = free_port()
    config = steal_config(port, http_filter={"header_filter": "^X-Mirrord-User: me$"})
    run = MirrordRun(tmp_path, sandbox.pod("web").pid, app_command("python", port, site), config)
    runs.append(run)
    matching = ["X-Mirrord-User: me"]
    wait_for(
        lambda: fetch(sandbox, "/index.html", matching) == LOCAL_BODY,
        "matching requests to be stolen",
    )
    assert fetch(sandbox, "/index.html") == WEB_BODY
    assert fetch(sandbox, "/index.html", ["X-Mirrord-User: someone-else"]) == WEB_BODY
    assert fetch(sandbox, "/index.html", matching) == LOCAL_BODY
    run.stop()
    wait_until_pod_answers(sandbox)


def test_second_session_stealing_the_same_port_gets_a_clear_error(
    sandbox: Sandbox, site: Path, tmp_path: Path, runs: list[MirrordRun]
) -> None:
    first_port, second_port = free_port(), free_port()
    pid = sandbox.pod("web").pid
    first = MirrordRun(
        tmp_path, pid, app_command("python", first_port, site), steal_config(first_port)
    )
    runs.append(first)
    wait_for(lambda: fetch(sandbox, "/index.html") == LOCAL_BODY, "the first session to steal")
    second = MirrordRun(
        tmp_path, pid, app_command("python", second_port, site), steal_config(second_port)
    )
    runs.append(second)
    wait_for(lambda: "already stolen" in second.output(), "the second session's error")
    assert "Traceback" not in second.output()
    assert fetch(sandbox, "/index.html") == LOCAL_BODY
    second.stop()
    first.stop()
    wait_until_pod_answers(sandbox)


def test_kill_9_of_mirrord_and_agent_gives_the_pod_back(
    sandbox: Sandbox, site: Path, tmp_path: Path, runs: list[MirrordRun]
) -> None:
    run = start_stealing(sandbox, site, tmp_path, runs)
    run.kill_everything()
    # Nobody cleans up: the redirect's set elements expire by themselves.
    wait_until_pod_answers(sandbox)


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_pause_freezes_the_target_while_stealing_and_thaws_it_after(
    sandbox: Sandbox, site: Path, tmp_path: Path, runs: list[MirrordRun]
) -> None:
    target = sandbox.pod("web").pid
    run = start_stealing(sandbox, site, tmp_path, runs, agent={"pause": True})
    assert process_state(target) == "T"
    run.stop()
    wait_for(lambda: process_state(target) != "T", "the target to be thawed")
    wait_until_pod_answers(sandbox)


def test_pause_thaws_the_target_when_everything_is_killed(
    sandbox: Sandbox, site: Path, tmp_path: Path, runs: list[MirrordRun]
) -> None:
    target = sandbox.pod("web").pid
    run = start_stealing(sandbox, site, tmp_path, runs, agent={"pause": True})
    assert process_state(target) == "T"
    run.kill_everything()
    wait_for(lambda: process_state(target) != "T", "the watchdog to thaw the target")
    wait_until_pod_answers(sandbox)


def test_pause_with_mirror_is_refused(sandbox: Sandbox, run_cli: object) -> None:
    result = run_cli(  # type: ignore[operator]
        "run", "--pause", "-t", f"pid/{sandbox.pod('web').pid}", "--", "true"
    )
    assert result.returncode == 1
    assert "agent.pause" in result.stderr and "steal" in result.stderr
    assert "Traceback" not in result.stderr


FULL_FD_TABLE_APP = r"""
import errno, os, resource, socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[1])))
listener.listen(8)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
fillers = []
while True:
    try:
        fillers.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        break
print("listening with a full descriptor table", flush=True)
try:
    listener.accept()
except OSError as err:
    print("accept failed:", errno.errorcode[err.errno], flush=True)
os.close(fillers.pop())
connection, peer = listener.accept()
print("request from", peer[0], connection.recv(4096).split(b"\r\n")[0].decode(), flush=True)
"""


def test_a_connection_the_app_cannot_take_yet_waits_for_its_next_accept(
    sandbox: Sandbox, tmp_path: Path, runs: list[MirrordRun]
) -> None:
    # The app's accept fails with EMFILE, as the kernel's would, and the connection stays
    # queued for the next accept instead of being closed by the supervisor.
    port = free_port()
    config = {
        "feature": {"network": {"incoming": {"mode": "mirror", "port_mapping": [[port, 8080]]}}}
    }
    command = [sys.executable, "-c", FULL_FD_TABLE_APP, str(port)]
    run = MirrordRun(tmp_path, sandbox.pod("web").pid, command, config)
    runs.append(run)
    wait_for(lambda: "full descriptor table" in run.output(), "the app to listen")
    marker = f"fd-table-{os.getpid()}"
    assert fetch(sandbox, f"/index.html?{marker}") == WEB_BODY  # one connection, mirrored
    wait_for(lambda: marker in run.output(), "the app to get the mirrored request")
    output = run.output()
    assert "accept failed: EMFILE" in output
    assert f"request from {sandbox.pod('api').ip} GET /index.html?{marker}" in output


CLOSING_APP = r"""
import http.server, os, sys, threading, time
port, stop_file = int(sys.argv[1]), sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"answered by the local app\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.HTTPServer(("0.0.0.0", port), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
while not os.path.exists(stop_file):
    time.sleep(0.1)
server.shutdown()
server.server_close()
print("listener closed", flush=True)
time.sleep(3600)
"""


def test_closing_the_listener_ends_the_steal(
    sandbox: Sandbox, tmp_path: Path, runs: list[MirrordRun]
) -> None:
    port = free_port()
    stop_file = tmp_path / "stop"
    command = [sys.executable, "-c", CLOSING_APP, str(port), str(stop_file)]
    run = MirrordRun(tmp_path, sandbox.pod("web").pid, command, steal_config(port))
    runs.append(run)
    wait_for(lambda: fetch(sandbox, "/index.html") == LOCAL_BODY, "the port to be stolen")
    stop_file.touch()
    wait_for(lambda: "listener closed" in run.output(), "the app to close its listener")
    # The process lives on, but its port is no longer subscribed.
    wait_until_pod_answers(sandbox)
    assert run.process.poll() is None


def test_ignore_localhost_leaves_loopback_listeners_alone(
    sandbox: Sandbox, site: Path, tmp_path: Path, runs: list[MirrordRun]
) -> None:
    wait_until_pod_answers(sandbox)  # a redirect an earlier test's agent left expires
    port = free_port()
    config = steal_config(port, ignore_localhost=True)
    command = [*app_command("python", port, site), "--bind", "127.0.0.1"]
    run = MirrordRun(tmp_path, sandbox.pod("web").pid, command, config)
    runs.append(run)
    wait_for(lambda: "Serving HTTP" in run.output(), "the app to listen")
    # Not subscribed: the pod keeps answering (and keeps answering a while later).
    for _ in range(3):
        assert fetch(sandbox, "/index.html") == WEB_BODY
        time.sleep(0.5)


BLOCKED_IN_ACCEPT = r"""
import signal, socket, sys
port = int(sys.argv[1])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", port))
listener.listen()
def stop(signum, frame):
    print("got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("accepting", flush=True)
listener.accept()
"""


def test_a_signal_reaches_an_app_blocked_in_accept(
    sandbox: Sandbox, tmp_path: Path, runs: list[MirrordRun]
) -> None:
    port = free_port()
    command = [sys.executable, "-c", BLOCKED_IN_ACCEPT, str(port)]
    run = MirrordRun(tmp_path, sandbox.pod("web").pid, command, steal_config(port))
    runs.append(run)
    wait_for(lambda: "accepting" in run.output(), "the app to block in accept")
    time.sleep(0.5)  # let it get into accept
    app = subprocess.run(
        ["pgrep", "-f", "-P", str(run.process.pid), "BLOCKED|import signal"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert app, "the app runs as a child of mirrord run"
    os.kill(int(app[0]), signal.SIGTERM)
    assert run.process.wait(timeout=SETTLE) == 0, run.output()
    assert "got SIGTERM" in run.output()


def test_a_crash_of_mirrord_run_leaves_no_nft_table(
    sandbox: Sandbox, site: Path, tmp_path: Path, runs: list[MirrordRun]
) -> None:
    run = start_stealing(sandbox, site, tmp_path, runs)
    agents = run.agent_pids()
    assert agents and any(f"mirrord_{pid}_" in nft_tables(sandbox) for pid in agents)
    run.process.kill()  # mirrord run alone: its agent notices the client is gone
    run.process.wait()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in agents), "the agent to exit")
    tables = nft_tables(sandbox)
    assert not any(f"mirrord_{pid}_" in tables for pid in agents), tables
    wait_until_pod_answers(sandbox)
