"""Benchmark: the agent next to a plain loopback socket, in the same run.

Run by hand, as root (it builds a sandbox pod):

    python benchmarks/agent.py           # 64 MiB transfers, best of 3
    python benchmarks/agent.py --quick   # 8 MiB transfers, fewer pings

It builds a sandbox with one pod, spawns a real local agent for the pod's process through
the target plugin's hooks, connects a :class:`~mirrord_core.session.Session`, and measures,
each next to the same work done directly over 127.0.0.1:

1. ping round trip: ``Session.ping`` vs a small request/response over a plain TCP socket
   to an echo server (median of N);
2. whole-file read of a remote file (``RemoteFiles.read_file``) vs the same file sent over a
   plain loopback TCP socket by a sender task, with the same chunk size;
3. bytes echoed through an outgoing TCP connection (``connect_tcp`` to an echo server that
   listens on the pod IP inside the pod's network namespace, reachable only through the
   agent) vs the same bytes through the same echo server code on 127.0.0.1.

Throughput is printed in MiB/s with the ratio mirrord / direct. The bar (issue 3): bulk
throughput at least 50% of the direct loopback figure. Traffic goes only to loopback and to
the sandbox's own namespaces; the sandbox, the agent and the echo servers are removed on
every exit path, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
#: Chunk size of every bulk sender and receiver, on both sides of the comparison (the fs
#: agent reads files in chunks of this size too: ``mirrord_fs.agent.confined_fs.STREAM_CHUNK``).
CHUNK = 256 * 1024
#: Bytes of one ping message over the plain socket.
PING_SIZE = 16
#: Path of the big file inside the pod.
REMOTE_FILE = "/data/big.bin"
BAR = 0.5


# -- the echo server (run as a child process: ``agent.py --echo-server HOST``) ----------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _serve_echo(host: str) -> None:
    server = await asyncio.start_server(_echo, host, 0, limit=CHUNK)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    # The parent closes our stdin when it is done (or dies): that ends the server.
    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: stdin_closed.done() or stdin_closed.set_result(0))
    async with server:
        await stdin_closed


@contextlib.contextmanager
def echo_server(host: str, netns: str | None = None) -> Iterator[int]:
    """Run the echo server on ``host`` (inside ``netns`` if given); yields its port."""
    argv = [sys.executable, os.path.abspath(__file__), "--echo-server", host]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the echo server ({' '.join(argv)}) did not start")
        yield int(json.loads(line)["port"])
    finally:
        _stop_process(process)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- measurements ----------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    unit: str
    mirrord: float
    direct: float
    higher_is_better: bool
    bulk: bool

    @property
    def ratio(self) -> float:
        return self.mirrord / self.direct


async def best_of(repeat: int, run: Callable[[], Awaitable[float]]) -> float:
    """The shortest of ``repeat`` runs of ``run`` (which returns seconds)."""
    return min([await run() for _ in range(repeat)])


async def ping_direct(port: int, count: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    message = b"p" * PING_SIZE
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(message)
            await reader.readexactly(PING_SIZE)
            times.append(time.perf_counter() - started)
    finally:
        writer.close()
        await writer.wait_closed()
    return statistics.median(times)


async def ping_mirrord(session: object, count: int) -> float:
    from mirrord_core.session import Session

    assert isinstance(session, Session)
    for _ in range(min(count, 50)):
        await session.ping()  # warm up
    return statistics.median([await session.ping() for _ in range(count)])


async def read_file_direct(path: Path, size: int, digest: bytes) -> float:
    """A sender task reads the file and writes it to a loopback socket; we read it back."""
    received: asyncio.Future[tuple[float, bytes]] = asyncio.get_running_loop().create_future()

    async def receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunks = []
        while chunk := await reader.read(CHUNK):
            chunks.append(chunk)
        received.set_result((time.perf_counter(), b"".join(chunks)))
        writer.close()

    server = await asyncio.start_server(receive, "127.0.0.1", 0, limit=CHUNK)
    port = server.sockets[0].getsockname()[1]
    async with server:
        started = time.perf_counter()
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        fd = os.open(path, os.O_RDONLY)
        try:
            while data := os.read(fd, CHUNK):
                writer.write(data)
                await writer.drain()
        finally:
            os.close(fd)
        writer.close()
        finished, data = await received
        await writer.wait_closed()
    _check(data, size, digest, "direct file read")
    return finished - started


async def read_file_mirrord(files: object, size: int, digest: bytes) -> float:
    from mirrord_fs.local.remote_files import RemoteFiles

    assert isinstance(files, RemoteFiles)
    started = time.perf_counter()
    data = await files.read_file(REMOTE_FILE)
    elapsed = time.perf_counter() - started
    _check(data, size, digest, "mirrord file read")
    return elapsed


async def _pump(
    write: Callable[[bytes], Awaitable[None]],
    end: Callable[[], Awaitable[None]],
    read: Callable[[], Awaitable[bytes]],
    payload: bytes,
) -> bytes:
    """Write ``payload`` in chunks while reading the echo concurrently; returns the echo."""
    view = memoryview(payload)

    async def writer() -> None:
        for offset in range(0, len(view), CHUNK):
            await write(view[offset : offset + CHUNK])
        await end()

    async def reader() -> bytes:
        chunks = []
        while chunk := await read():
            chunks.append(chunk)
        return b"".join(chunks)

    _, echoed = await asyncio.gather(writer(), reader())
    return echoed


async def echo_direct(port: int, payload: bytes, digest: bytes) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=CHUNK)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def end() -> None:
        writer.write_eof()

    try:
        started = time.perf_counter()
        echoed = await _pump(write, end, lambda: reader.read(CHUNK), payload)
        elapsed = time.perf_counter() - started
    finally:
        writer.close()
        await writer.wait_closed()
    _check(echoed, len(payload), digest, "direct echo")
    return elapsed


async def echo_mirrord(
    session: object, host: str, port: int, payload: bytes, digest: bytes
) -> float:
    from mirrord_core.session import Session
    from mirrord_network.local.remote_network import connect_tcp

    assert isinstance(session, Session)
    stream = await connect_tcp(session, host, port)
    async with stream:
        started = time.perf_counter()
        echoed = await _pump(stream.write, stream.end, stream.read, payload)
        elapsed = time.perf_counter() - started
    _check(echoed, len(payload), digest, "mirrord echo")
    return elapsed


def _check(data: bytes, size: int, digest: bytes, what: str) -> None:
    if len(data) != size or hashlib.blake2b(data).digest() != digest:
        raise RuntimeError(f"{what}: got {len(data)} bytes that differ from the {size} sent")


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Settings:
    size: int
    repeat: int
    pings: int


async def measure(
    settings: Settings,
    endpoint: object,
    file_path: Path,
    pod_ip: str,
    pod_echo_port: int,
    local_echo_port: int,
) -> list[Row]:
    from mirrord_core.session import Session
    from mirrord_core.target_model import AgentEndpoint
    from mirrord_fs.local.remote_files import RemoteFiles

    assert isinstance(endpoint, AgentEndpoint)
    payload = os.urandom(settings.size)
    digest = hashlib.blake2b(payload).digest()
    file_path.write_bytes(payload)
    mib = settings.size / MIB
    rows = []

    session = await Session.connect(endpoint, client_name="benchmark")
    try:
        files = RemoteFiles(session)

        direct = await ping_direct(local_echo_port, settings.pings)
        remote = await ping_mirrord(session, settings.pings)
        rows.append(Row("ping round trip (median)", "µs", remote * 1e6, direct * 1e6, False, False))

        # Warm-up (page cache, code paths), then best of N.
        await read_file_direct(file_path, settings.size, digest)
        await read_file_mirrord(files, settings.size, digest)
        direct = await best_of(
            settings.repeat, lambda: read_file_direct(file_path, settings.size, digest)
        )
        remote = await best_of(
            settings.repeat, lambda: read_file_mirrord(files, settings.size, digest)
        )
        rows.append(
            Row(f"whole-file read, {mib:g} MiB", "MiB/s", mib / remote, mib / direct, True, True)
        )

        await echo_direct(local_echo_port, payload, digest)
        await echo_mirrord(session, pod_ip, pod_echo_port, payload, digest)
        direct = await best_of(
            settings.repeat, lambda: echo_direct(local_echo_port, payload, digest)
        )
        remote = await best_of(
            settings.repeat,
            lambda: echo_mirrord(session, pod_ip, pod_echo_port, payload, digest),
        )
        rows.append(
            Row(f"outgoing TCP echo, {mib:g} MiB", "MiB/s", mib / remote, mib / direct, True, True)
        )
    finally:
        await session.close()
    return rows


def print_table(rows: list[Row], settings: Settings, elapsed: float) -> bool:
    print()
    print(
        f"mirrord agent benchmark — {settings.size / MIB:g} MiB transfers, best of "
        f"{settings.repeat}, {settings.pings} pings; {os.cpu_count()} CPUs, "
        f"Linux {os.uname().release}, Python {sys.version.split()[0]}"
    )
    header = f"{'measurement':<30} {'unit':>6} {'mirrord':>10} {'direct':>10} {'ratio':>7}  bar"
    print(header)
    print("-" * len(header))
    ok = True
    for row in rows:
        if row.bulk:
            passed = row.ratio >= BAR
            ok = ok and passed
            verdict = f"{'ok' if passed else 'MISSED'} (>= {BAR:.0%})"
        else:
            verdict = "-"
        print(
            f"{row.name:<30} {row.unit:>6} {row.mirrord:>10.1f} {row.direct:>10.1f} "
            f"{row.ratio:>7.2f}  {verdict}"
        )
    print(f"\nbulk throughput bar (>= {BAR:.0%} of direct loopback): {'met' if ok else 'NOT met'}")
    print(f"total time {elapsed:.1f} s")
    return ok


def run(settings: Settings) -> int:
    from mirrord_core.config.resolver import resolve
    from mirrord_core.plugin_manager import get_plugins
    from mirrord_core.sandbox import PodSpec, Sandbox

    started = time.perf_counter()
    print("building the sandbox …", file=sys.stderr)
    with Sandbox.create([PodSpec("bench")], name=f"bench-{os.getpid()}") as sandbox:
        pod = sandbox.pod("bench")
        file_path = pod.root / REMOTE_FILE.lstrip("/")
        file_path.parent.mkdir(parents=True, exist_ok=True)

        loaded = get_plugins()
        resolved = resolve(loaded.layout, environ={}, flags={"target": f"pid/{pod.pid}"})
        target = loaded.manager.hook.resolve_target(config=resolved.config)
        print("starting the agent and the echo servers …", file=sys.stderr)
        endpoint = loaded.manager.hook.spawn_agent(config=resolved.config, target=target)
        try:
            with (
                echo_server(pod.ip, netns=pod.netns) as pod_echo_port,
                echo_server("127.0.0.1") as local_echo_port,
            ):
                print("measuring …", file=sys.stderr)
                rows = asyncio.run(
                    measure(settings, endpoint, file_path, pod.ip, pod_echo_port, local_echo_port)
                )
        finally:
            endpoint.release()
    ok = print_table(rows, settings, time.perf_counter() - started)
    return 0 if ok else 1


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 MiB transfers, fewer pings")
    parser.add_argument("--size", type=int, help="MiB per transfer (default 64, quick 8)")
    parser.add_argument("--repeat", type=int, help="runs per measurement; the best counts")
    parser.add_argument("--pings", type=int, help="ping round trips (median)")
    parser.add_argument("--echo-server", metavar="HOST", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.echo_server:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_echo(args.echo_server))
        return 0

    if os.geteuid() != 0:
        parser.error("run as root: the benchmark builds a sandbox pod")
    settings = Settings(
        size=(args.size or (8 if args.quick else 64)) * MIB,
        repeat=args.repeat or 3,
        pings=args.pings or (300 if args.quick else 2000),
    )
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(settings)
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
