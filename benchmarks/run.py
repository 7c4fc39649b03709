"""Benchmark: ``mirrord run`` end to end, each row next to its native figure (issue 4, item 8).

Run by hand, as root (it builds a sandbox pod, and ``mirrord run`` mounts FUSE):

    python benchmarks/run.py            # best of 5 (about 1-2 minutes)
    python benchmarks/run.py --quick    # best of 2, smaller loops (well under a minute)

One sandbox pod (``mirrord_core.sandbox``) holds a 64 MiB file of random bytes at
``/app/big.bin``; a small HTTP/1.1 server runs in the pod's network namespace on the pod IP.
Every mirrord figure comes from a command started through the CLI,
``mirrord run -t pid/<pod pid> --fs-mode read -- python3 -c ...``, and is measured *inside*
that command (``time.perf_counter``), so that ``mirrord run``'s own start-up (agent spawn,
session, FUSE mount) is not counted; the whole-command time of (b) is printed for
information. The native figure is the same child code run directly, in the same run.

(a) a ``stat`` loop on a local path (a file under /tmp, always local): µs per call under
    ``mirrord run`` (the syscall is trapped, the handler decides "local" and continues) vs
    natively. Bar: at most 10 µs extra per call.
(b) ``import`` of 30 stdlib modules in a fresh ``python3 -c``: time around the imports, under
    ``mirrord run`` (every open/stat of the interpreter is trapped) vs natively. Bar: ≤ 1.5x.
(c) the first read of the pod's /app/big.bin (through the agent and the FUSE mount, nothing
    cached) vs a plain loopback TCP copy of 64 MiB; then a second read in the same child
    (cached) vs a local read of a 64 MiB file (the pod's copy, in the page cache), by the same
    code natively. Bars: first read ≥ 25% of loopback, cached read ≥ 50% of local.
(d) HTTP requests/s: N sequential keep-alive HTTP/1.1 GETs (``http.client``) to the server on
    the pod IP, under ``mirrord run`` (outgoing through the agent: the host has no route to
    the pod network) vs the same client run directly in the pod's namespace
    (``ip netns exec``). Bar: ≥ 30%.

Runs alternate mirrord and native so both see the same background load; each figure is the
best of ``--repeat``. Traffic goes only to loopback and to the sandbox's namespaces. The
sandbox, the HTTP server and any ``mirrord run`` still running are removed on every exit
path, Ctrl-C and SIGTERM included (exit status 130). Exit status 1 when a bar is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType

from remote_fs import loopback_seconds  # the same loopback baseline as the mount benchmark

from mirrord_core.sandbox import PodSpec, Sandbox

MIB = 1024 * 1024
BIG_FILE = "/app/big.bin"
HTTP_PORT = 9090
RESULT_MARK = "BENCH-RESULT "
COMMAND_TIMEOUT = 120.0

MODULES = (
    "json",
    "csv",
    "decimal",
    "fractions",
    "statistics",
    "email.message",
    "http.client",
    "urllib.request",
    "xml.etree.ElementTree",
    "logging",
    "argparse",
    "subprocess",
    "tempfile",
    "shutil",
    "pathlib",
    "dataclasses",
    "typing",
    "datetime",
    "calendar",
    "textwrap",
    "difflib",
    "pprint",
    "uuid",
    "hashlib",
    "base64",
    "zipfile",
    "tarfile",
    "sqlite3",
    "configparser",
    "gettext",
)
assert len(MODULES) == 30

# Each child prints one line: RESULT_MARK + JSON.
STAT_CHILD = """
import json, os, sys, time
batches, size, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
stat = os.stat
results = []
for _ in range(batches):
    start = time.perf_counter()
    for _ in range(size):
        stat(path)
    results.append((time.perf_counter() - start) / size * 1e6)
print(MARK + json.dumps({"per_call_us": min(results)}), flush=True)
"""

IMPORT_CHILD = """
import json, time
start = time.perf_counter()
import MODULES
elapsed = time.perf_counter() - start
print(MARK + json.dumps({"import_s": elapsed}), flush=True)
"""

READ_CHILD = """
import json, os, sys, time
path, reads = sys.argv[1], int(sys.argv[2])
buffer = bytearray(1024 * 1024)
view = memoryview(buffer)
times = []
for _ in range(reads):
    start = time.perf_counter()
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while count := os.readv(fd, [view]):
            total += count
    finally:
        os.close(fd)
    times.append(time.perf_counter() - start)
print(MARK + json.dumps({"bytes": total, "times": times}), flush=True)
"""

HTTP_CLIENT = """
import http.client, json, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
connection = http.client.HTTPConnection(host, port, timeout=30)
def get():
    connection.request("GET", "/")
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200 and body == b"ok\\n", (response.status, body)
for _ in range(20):
    get()
start = time.perf_counter()
for _ in range(count):
    get()
elapsed = time.perf_counter() - start
connection.close()
print(MARK + json.dumps({"rps": count / elapsed}), flush=True)
"""

HTTP_SERVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\\n")
    def log_message(self, *args):
        pass
if sys.argv[3] == "one-write":
    Handler.wbufsize = 65536  # the response leaves in one write (flushed after do_GET)
server = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler)
print("ready", flush=True)
server.serve_forever()
"""


def child_code(template: str) -> str:
    return template.replace("MARK", repr(RESULT_MARK)).replace(
        "import MODULES", "import " + ", ".join(MODULES)
    )


@dataclass
class Settings:
    repeat: int
    stat_batches: int
    stat_size: int
    import_runs: int
    requests: int


class Runner:
    """Starts commands (natively or under ``mirrord run``) and stops any still running."""

    def __init__(self, pid: int) -> None:
        self.target = f"pid/{pid}"
        self.live: set[subprocess.Popen[str]] = set()

    def mirrord_argv(self, argv: Sequence[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mirrord_core.cli",
            "run",
            "-t",
            self.target,
            "--fs-mode",
            "read",
            "--",
            *argv,
        ]

    def run(self, argv: Sequence[str]) -> tuple[dict[str, object], float]:
        """Run ``argv``; return the child's result line and the whole command's seconds."""
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.live.add(process)
        try:
            stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT)
        finally:
            self.stop(process)
        elapsed = time.perf_counter() - started
        for line in stdout.splitlines():
            if line.startswith(RESULT_MARK):
                if process.returncode != 0:
                    break
                return json.loads(line[len(RESULT_MARK) :]), elapsed
        raise RuntimeError(
            f"{argv[:8]}... exited with {process.returncode}\n"
            f"stdout: {stdout[-2000:]}\nstderr: {stderr[-4000:]}"
        )

    def stop(self, process: subprocess.Popen[str]) -> None:
        """SIGTERM first (``mirrord run`` then removes its mount and agent), then SIGKILL."""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.live.discard(process)

    def stop_all(self) -> None:
        for process in list(self.live):
            self.stop(process)


def python(code: str, *args: object) -> list[str]:
    return [sys.executable, "-c", code, *map(str, args)]


def alternate(
    repeat: int, ours: Callable[[], float], native: Callable[[], float]
) -> tuple[list[float], list[float]]:
    a, b = [], []
    for _ in range(repeat):
        a.append(ours())
        b.append(native())
    return a, b


@contextlib.contextmanager
def http_server(netns: str, ip: str, port: int, writes: str) -> Iterator[subprocess.Popen[str]]:
    """The HTTP/1.1 server, on the pod IP inside the pod's network namespace.

    ``writes``: "two-writes" sends the status line and headers, then the body, in two
    writes (``http.server``'s default; TCP_NODELAY on); "one-write" buffers the response.
    """
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, *python(HTTP_SERVER, ip, port, writes)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the HTTP server did not start")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def runs(label: str, unit: str, ours: Sequence[float], native: Sequence[float]) -> str:
    """One line with every run of a row, mirrord then native, in the order they ran."""

    def fmt(values: Sequence[float]) -> str:
        return " ".join(f"{value:.4g}" for value in values)

    return f"{label} ({unit}): mirrord {fmt(ours)} | native {fmt(native)}"


def rps(runner: Runner, argv: Sequence[str]) -> float:
    return float(runner.run(argv)[0]["rps"])  # type: ignore[arg-type]


@dataclass
class Row:
    name: str
    unit: str
    mirrord: float
    native: float
    baseline: str
    bar: str
    ok: bool | None


def measure(
    sandbox: Sandbox, settings: Settings, runner: Runner, details: list[str]
) -> tuple[list[Row], float]:
    pod = sandbox.pod("bench")
    rows: list[Row] = []
    s = settings
    # (a) stat loop on a local path.
    with tempfile.NamedTemporaryFile(prefix="mirrord-bench-") as local_file:
        stat_argv = python(child_code(STAT_CHILD), s.stat_batches, s.stat_size, local_file.name)
        ours, native = alternate(
            s.repeat,
            lambda: float(runner.run(runner.mirrord_argv(stat_argv))[0]["per_call_us"]),  # type: ignore[arg-type]
            lambda: float(runner.run(stat_argv)[0]["per_call_us"]),  # type: ignore[arg-type]
        )
    a_ours, a_native = min(ours), min(native)
    details.append(runs("(a)", "µs per call", ours, native))
    rows.append(
        Row(
            "(a) stat, local path, per call",
            "µs",
            a_ours,
            a_native,
            "native",
            f"≤ 10 µs extra ({a_ours - a_native:+.2f})",
            a_ours - a_native <= 10,
        )
    )

    # (b) import of 30 stdlib modules.
    import_argv = python(child_code(IMPORT_CHILD))
    runner.run(import_argv)  # warm the page cache and __pycache__
    whole_ours: list[float] = []
    whole_native: list[float] = []

    def import_ours() -> float:
        result, whole = runner.run(runner.mirrord_argv(import_argv))
        whole_ours.append(whole)
        return float(result["import_s"])  # type: ignore[arg-type]

    def import_native() -> float:
        result, whole = runner.run(import_argv)
        whole_native.append(whole)
        return float(result["import_s"])  # type: ignore[arg-type]

    ours, native = alternate(s.import_runs, import_ours, import_native)
    b_ours, b_native = min(ours) * 1e3, min(native) * 1e3
    details.append(runs("(b)", "ms", [x * 1e3 for x in ours], [x * 1e3 for x in native]))
    details.append(
        runs("(b) whole", "ms", [x * 1e3 for x in whole_ours], [x * 1e3 for x in whole_native])
    )
    rows.append(
        Row(
            "(b) import 30 stdlib modules",
            "ms",
            b_ours,
            b_native,
            "native",
            f"≤ 1.5x ({b_ours / b_native:.2f}x)",
            b_ours / b_native <= 1.5,
        )
    )
    rows.append(
        Row(
            "    whole command (info)",
            "ms",
            min(whole_ours) * 1e3,
            min(whole_native) * 1e3,
            "native",
            f"{min(whole_ours) / min(whole_native):.1f}x (mirrord run start-up)",
            None,
        )
    )

    # (c) first and cached read of the 64 MiB remote file.
    size = (pod.root / BIG_FILE.lstrip("/")).stat().st_size
    read_argv = python(child_code(READ_CHILD), BIG_FILE, 2)
    local_argv = python(child_code(READ_CHILD), pod.root / BIG_FILE.lstrip("/"), 2)
    firsts: list[float] = []
    cached: list[float] = []
    loopbacks: list[float] = []
    locals_: list[float] = []
    for _ in range(s.repeat):
        result, _ = runner.run(runner.mirrord_argv(read_argv))
        if result["bytes"] != size:
            raise RuntimeError(f"read {result['bytes']} bytes of {size} through mirrord run")
        times = result["times"]
        firsts.append(times[0])  # type: ignore[index]
        cached.append(times[1])  # type: ignore[index]
        loopbacks.append(loopback_seconds(size))
        result, _ = runner.run(local_argv)
        locals_.append(result["times"][1])  # type: ignore[index]
    mib = size / MIB
    details.append(
        runs("(c) first", "MiB/s", [mib / x for x in firsts], [mib / x for x in loopbacks])
    )
    details.append(
        runs("(c) cached", "MiB/s", [mib / x for x in cached], [mib / x for x in locals_])
    )
    first_rate, loop_rate = mib / min(firsts), mib / min(loopbacks)
    cached_rate, local_rate = mib / min(cached), mib / min(locals_)
    rows.append(
        Row(
            f"(c) first read, {mib:.0f} MiB remote",
            "MiB/s",
            first_rate,
            loop_rate,
            "loopback TCP",
            f"≥ 25% ({first_rate / loop_rate:.0%})",
            first_rate / loop_rate >= 0.25,
        )
    )
    rows.append(
        Row(
            f"    cached read, {mib:.0f} MiB",
            "MiB/s",
            cached_rate,
            local_rate,
            "local read",
            f"≥ 50% ({cached_rate / local_rate:.0%})",
            cached_rate / local_rate >= 0.5,
        )
    )

    # (d) HTTP requests/s through outgoing; the bar row uses http.server's default two
    # writes per response, the info row a server that sends each response in one write.
    for port, writes, label in (
        (HTTP_PORT, "two-writes", f"(d) HTTP GETs, keep-alive, {s.requests}"),
        (HTTP_PORT + 1, "one-write", "    same, 1-write responses (info)"),
    ):
        with http_server(pod.netns, pod.ip, port, writes):
            client = python(child_code(HTTP_CLIENT), pod.ip, port, s.requests)
            in_pod = ["ip", "netns", "exec", pod.netns, *client]
            ours, native = alternate(
                s.repeat,
                functools.partial(rps, runner, runner.mirrord_argv(client)),
                functools.partial(rps, runner, in_pod),
            )
        d_ours, d_native = max(ours), max(native)
        details.append(runs(f"(d) {writes}", "req/s", ours, native))
        is_bar = writes == "two-writes"
        rows.append(
            Row(
                label,
                "req/s",
                d_ours,
                d_native,
                "in pod netns",
                f"≥ 30% ({d_ours / d_native:.0%})" if is_bar else f"{d_ours / d_native:.0%}",
                d_ours / d_native >= 0.3 if is_bar else None,
            )
        )
    return rows, size


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def print_table(rows: list[Row]) -> None:
    header = f"{'measurement':<34}{'unit':>6}{'mirrord':>10}{'native':>10}  {'native is':<14}bar"
    print(header)
    print("-" * (len(header) + 30))
    for row in rows:
        verdict = "" if row.ok is None else ("ok  " if row.ok else "MISSED  ")
        print(
            f"{row.name:<34}{row.unit:>6}{row.mirrord:>10.2f}{row.native:>10.2f}  "
            f"{row.baseline:<14}{verdict}{row.bar}"
        )


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="best of 2, smaller loops")
    parser.add_argument("--repeat", type=int, help="runs per figure (default 5, --quick 2)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: the benchmark builds a sandbox pod and mounts FUSE", file=sys.stderr)
        return 2
    if args.quick:
        settings = Settings(repeat=2, stat_batches=5, stat_size=2000, import_runs=3, requests=500)
    else:
        settings = Settings(repeat=5, stat_batches=10, stat_size=5000, import_runs=7, requests=2000)
    if args.repeat:
        settings.repeat = args.repeat
        settings.import_runs = max(args.repeat, settings.import_runs)

    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    print(
        f"mirrord run benchmark — best of {settings.repeat} (imports: {settings.import_runs}); "
        f"{machine()} at the start",
        flush=True,
    )
    runner: Runner | None = None
    details: list[str] = []
    try:
        spec = PodSpec("bench", files={BIG_FILE: os.urandom(64 * MIB)})
        with Sandbox.create([spec]) as sandbox:
            runner = Runner(sandbox.pod("bench").pid)
            try:
                rows, _ = measure(sandbox, settings, runner, details)
            finally:
                runner.stop_all()
    except KeyboardInterrupt:
        print("interrupted; sandbox and children removed", file=sys.stderr)
        return 130
    print_table(rows)
    print()
    print("every run:")
    for line in details:
        print(f"  {line}")
    missed = [row.name.strip() for row in rows if row.ok is False]
    print()
    print(f"bars: {'all ok' if not missed else 'MISSED: ' + '; '.join(missed)}")
    print(
        f"load average at the end {os.getloadavg()[0]:.2f}; "
        f"total time {time.perf_counter() - started:.1f} s"
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
