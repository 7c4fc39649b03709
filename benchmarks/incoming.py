"""Benchmark: incoming traffic (issue 5, item 8) — stolen requests/s, mirror fidelity.

Run by hand, as root (it builds sandbox pods):

    python benchmarks/incoming.py            # best of 3
    python benchmarks/incoming.py --quick    # best of 1, fewer requests

Two sandbox pods: ``web`` (the target) and ``client``. The same small HTTP/1.1 keep-alive
server (``http.server`` with a fixed body) is the "local app" everywhere.

(a) steal: the client pod sends N sequential keep-alive GETs to web's IP:8080 while
    ``mirrord run --steal`` runs the app locally (port_mapping local port → 8080), so every
    request crosses the pod's nft redirect, the agent, the session and the local relay;
    versus the same app run directly in web's namespace on port 8081, asked the same way.
    Bar: ≥ 50% of direct.
(b) mirror fidelity: ``mirrord run`` (mirror) runs an app that records every request it
    gets; the client pod opens RATE new connections per second to web's own server
    (busybox httpd on 8080) for a few seconds, each sending a GET whose path names the
    connection and carries a random payload with its checksum. Share of connections whose
    request reached the local app intact. Bar: 100% at 200 connections/s.

Traffic goes only to the sandbox's namespaces and loopback. The sandbox and every process
started here are removed on every exit path. Exit status 1 when a bar is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from mirrord_core.sandbox import PodSpec, Sandbox

DIRECT_PORT = 8081
RESULT_MARK = "BENCH-RESULT "

APP = r"""
import http.server, sys
port, record = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "")
out = open(record, "a", buffering=1) if record else None
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle and the client's delayed
    # ACK make every request wait ~40 ms, and both sides would measure only that.
    disable_nagle_algorithm = True
    def do_GET(self):
        if out is not None:
            out.write(self.path + "\n")
        body = b"stolen ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("0.0.0.0", port), Handler).serve_forever()
"""

KEEPALIVE_CLIENT = r"""
import http.client, json, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conn = http.client.HTTPConnection(host, port, timeout=10)
started = time.perf_counter()
for _ in range(count):
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200, response.status
    response.read()
print("BENCH-RESULT " + json.dumps({"rps": count / (time.perf_counter() - started)}))
"""

PACED_CLIENT = r"""
import asyncio, hashlib, json, os, sys, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sent, failed = [], 0
async def one(index):
    global failed
    payload = os.urandom(64).hex()
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    path = f"/index.html?c={index}&p={payload}&d={digest}"
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        await reader.read()
        writer.close()
        sent.append(path)
    except OSError:
        failed += 1
async def main():
    tasks, started = [], time.perf_counter()
    total = int(rate * seconds)
    for index in range(total):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(index)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    print("BENCH-RESULT " + json.dumps({"sent": sent, "failed": failed, "rate": total / elapsed}))
asyncio.run(main())
"""


class Processes:
    """Every process started here; all stopped on exit."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[str]] = []

    def start(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        process = subprocess.Popen(list(argv), text=True, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        self.live.append(process)
        return process

    def stop(self, process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process in self.live:
            self.live.remove(process)

    def stop_all(self) -> None:
        for process in list(self.live):
            self.stop(process)


def in_netns(netns: str, code: str, *args: object) -> list[str]:
    return ["ip", "netns", "exec", netns, sys.executable, "-c", code, *map(str, args)]


def result_of(argv: Sequence[str]) -> dict[str, object]:
    finished = subprocess.run(list(argv), capture_output=True, text=True, timeout=300)
    for line in finished.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    raise RuntimeError(f"{argv[:6]} failed: {finished.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def answers(sandbox: Sandbox, port: int, body: str) -> bool:
    url = f"http://{sandbox.pod('web').ip}:{port}/"
    argv = ["/bin/busybox", "timeout", "5", "/bin/busybox", "wget", "-qO-", url]
    result = sandbox.exec_in("client", argv, text=True, timeout=20)
    return result.returncode == 0 and result.stdout == body


def mirrord_run(
    processes: Processes, workdir: Path, pid: int, config: dict[str, object], argv: Sequence[str]
) -> subprocess.Popen[str]:
    config_file = workdir / f"mirrord-{len(processes.live)}-{time.monotonic_ns()}.json"
    config_file.write_text(json.dumps(config))
    log = (workdir / f"{config_file.stem}.log").open("w")
    return processes.start(
        [
            *(sys.executable, "-m", "mirrord_core.cli", "run", "-f", str(config_file)),
            *("-t", f"pid/{pid}", "--", *argv),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def steal_ratio(
    sandbox: Sandbox, processes: Processes, workdir: Path, requests: int, repeat: int
) -> tuple[float, float, list[str]]:
    web, client = sandbox.pod("web"), sandbox.pod("client")
    port = free_port()
    config = {
        "feature": {"network": {"incoming": {"mode": "steal", "port_mapping": [[port, 8080]]}}}
    }
    app = [sys.executable, "-c", APP, str(port)]
    stolen = mirrord_run(processes, workdir, web.pid, config, app)
    direct = processes.start(
        in_netns(web.netns, APP, DIRECT_PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    details: list[str] = []
    try:
        wait_until(lambda: answers(sandbox, 8080, "stolen ok\n"), "the steal to take effect")
        wait_until(lambda: answers(sandbox, DIRECT_PORT, "stolen ok\n"), "the direct app")
        ours, native = [], []
        for _ in range(repeat):
            ours.append(
                float(
                    result_of(in_netns(client.netns, KEEPALIVE_CLIENT, web.ip, 8080, requests))[
                        "rps"
                    ]
                )
            )  # type: ignore[arg-type]
            native.append(
                float(
                    result_of(
                        in_netns(client.netns, KEEPALIVE_CLIENT, web.ip, DIRECT_PORT, requests)
                    )["rps"]
                )
            )  # type: ignore[arg-type]
        details.append(f"steal req/s: mirrord {ours} | direct {native}")
        return max(ours), max(native), details
    finally:
        processes.stop(stolen)
        processes.stop(direct)


def mirror_fidelity(
    sandbox: Sandbox, processes: Processes, workdir: Path, rate: int, seconds: float
) -> tuple[float, float, list[str]]:
    web, client = sandbox.pod("web"), sandbox.pod("client")
    port = free_port()
    record = workdir / "mirrored-requests.txt"
    record.write_text("")
    config = {
        "feature": {"network": {"incoming": {"mode": "mirror", "port_mapping": [[port, 8080]]}}}
    }
    mirrored = mirrord_run(
        processes, workdir, web.pid, config, [sys.executable, "-c", APP, str(port), str(record)]
    )
    try:
        probe = "/index.html?probe"

        def subscribed() -> bool:
            sandbox.exec_in(
                "client",
                ["/bin/busybox", "wget", "-qO-", f"http://{web.ip}:8080{probe}"],
                timeout=20,
            )
            return probe in record.read_text()

        wait_until(subscribed, "the mirror subscription")
        outcome = result_of(in_netns(client.netns, PACED_CLIENT, web.ip, 8080, rate, seconds))
        sent: list[str] = outcome["sent"]  # type: ignore[assignment]
        # Give the last mirrored connections a moment to be delivered.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            received = set(record.read_text().splitlines())
            if all(path in received for path in sent):
                break
            time.sleep(0.5)
        received = set(record.read_text().splitlines())
        intact = sum(1 for path in sent if path in received)
        share = intact / len(sent) if sent else 0.0
        details = [
            f"mirror: {len(sent)} connections at {outcome['rate']:.0f}/s "
            f"({outcome['failed']} failed at the pod), {intact} reached the local app intact"
        ]
        return share, float(outcome["rate"]), details  # type: ignore[arg-type]
    finally:
        processes.stop(mirrored)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mirrord-incoming-bench-") as directory:
        yield Path(directory)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run, fewer requests")
    parser.add_argument("--rate", type=int, default=200, help="mirror: connections per second")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: the benchmark builds sandbox pods", file=sys.stderr)
        return 2
    repeat, requests, seconds = (1, 500, 3.0) if args.quick else (3, 2000, 5.0)
    signal.signal(signal.SIGTERM, _terminate)
    load = os.getloadavg()[0]
    print(f"incoming benchmark; {os.cpu_count()} CPUs, load average {load:.2f} at the start")
    processes = Processes()
    try:
        with workspace() as workdir, Sandbox.create([PodSpec("web"), PodSpec("client")]) as sb:
            try:
                ours, direct, details = steal_ratio(sb, processes, workdir, requests, repeat)
                share, rate, more = mirror_fidelity(sb, processes, workdir, args.rate, seconds)
            finally:
                processes.stop_all()
    except KeyboardInterrupt:
        print("interrupted; sandbox and children removed", file=sys.stderr)
        return 130
    ratio = ours / direct
    steal_ok, mirror_ok = ratio >= 0.5, share >= 1.0
    print(
        f"steal: {ours:.0f} req/s through mirrord vs {direct:.0f} direct = {ratio:.2f}x "
        f"({'ok' if steal_ok else 'MISSED'}: bar 0.5x)"
    )
    print(
        f"mirror: {share * 100:.1f}% intact at {rate:.0f} connections/s "
        f"({'ok' if mirror_ok else 'MISSED'}: bar 100% at {args.rate}/s)"
    )
    for line in details + more:
        print(f"  {line}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0 if steal_ok and mirror_ok else 1


if __name__ == "__main__":
    sys.exit(main())
