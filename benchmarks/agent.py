"""Benchmark: the agent next to a plain loopback socket, in the same run.

Run by hand, as root (it builds a sandbox pod):

    python benchmarks/agent.py           # 64 MiB transfers, best of 5
    python benchmarks/agent.py --quick   # 8 MiB transfers, fewer pings

It builds a sandbox with one pod, spawns a real local agent for the pod's process through
the target plugin's hooks, connects a :class:`~mirrord_core.session.Session`, and measures,
each next to the same work done directly over 127.0.0.1:

1. ping round trip: ``Session.ping`` vs a small request/response over a plain TCP socket
   to an echo server (median of N);
2. whole-file read of a remote file (``RemoteFiles.stream_file``; ``read_file`` in the
   checked run) vs the same file sent over a plain loopback TCP socket by a sender task,
   with the same chunk size;
3. bytes echoed through an outgoing TCP connection (``connect_tcp`` to an echo server that
   listens on the pod IP inside the pod's network namespace, reachable only through the
   agent) vs the same bytes through the same echo server code on 127.0.0.1.

Throughput is printed in MiB/s (best and median of ``--repeat`` alternating runs) with the
ratio mirrord / direct. The bar (issue 3): bulk throughput at least 50% of the direct
loopback figure; the exit status is 1 when it is missed. Traffic goes only to loopback and
to the sandbox's own namespaces; the sandbox, the agent and the echo servers are removed on
every exit path, Ctrl-C and SIGTERM included. Results: docs/benchmarks.md.
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Imported lazily at run time: the echo server child runs this file with nothing but
    # the standard library (inside the pod's network namespace).
    from mirrord_core.session import Session
    from mirrord_core.target_model import AgentEndpoint
    from mirrord_fs.local.remote_files import RemoteFiles

MIB = 1024 * 1024
#: Chunk size of every bulk sender and receiver, on both sides of the comparison (the fs
#: agent streams files in 1 MiB reads: ``mirrord_fs.agent.confined_fs.STREAM_CHUNK``).
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
    """One measurement: mirrord's figure next to the direct one (best and median run)."""

    name: str
    unit: str
    mirrord: float
    direct: float
    bulk: bool
    mirrord_median: float | None = None
    direct_median: float | None = None

    @property
    def ratio(self) -> float:
        return self.mirrord / self.direct

    @property
    def median_ratio(self) -> float | None:
        if self.mirrord_median is None or self.direct_median is None:
            return None
        return self.mirrord_median / self.direct_median

    @classmethod
    def throughput(
        cls, name: str, size: int, remote_times: list[float], direct_times: list[float]
    ) -> Row:
        """MiB/s of the fastest and of the median run of each side."""
        mib = size / MIB
        return cls(
            name,
            "MiB/s",
            mib / min(remote_times),
            mib / min(direct_times),
            True,
            mib / statistics.median(remote_times),
            mib / statistics.median(direct_times),
        )


async def alternate_runs(
    repeat: int,
    remote: Callable[[bytes | None], Awaitable[float]],
    direct: Callable[[bytes | None], Awaitable[float]],
    digest: bytes,
) -> tuple[list[float], list[float]]:
    """The times (seconds) of ``repeat`` runs of each, after one checked run of each.

    The checked runs (also the warm-up) keep every byte and compare it with what was sent
    (``digest``). The timed runs only count the bytes, on both sides alike: 64 MiB kept
    in memory would time the allocator's page faults (about 1 ms per MiB on the VM of
    docs/benchmarks.md, more or less depending on what the heap held before) as much as
    the transfer. The runs alternate (remote, direct, remote, …) so that both see the same
    background load.
    """
    await remote(digest)
    await direct(digest)
    remote_times, direct_times = [], []
    for _ in range(repeat):
        remote_times.append(await remote(None))
        direct_times.append(await direct(None))
    return remote_times, direct_times


async def ping_both(session: Session, port: int, count: int) -> tuple[float, float]:
    """Median round trip of ``Session.ping`` and of a small message over a plain socket.

    The two alternate, one round trip each, after a warm-up of both.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    message = b"p" * PING_SIZE

    async def direct() -> float:
        started = time.perf_counter()
        writer.write(message)
        await reader.readexactly(PING_SIZE)
        return time.perf_counter() - started

    try:
        for _ in range(min(count, 50)):
            await session.ping()
            await direct()
        remote_times, direct_times = [], []
        for _ in range(count):
            remote_times.append(await session.ping())
            direct_times.append(await direct())
    finally:
        writer.close()
        await writer.wait_closed()
    return statistics.median(remote_times), statistics.median(direct_times)


async def read_file_direct(path: Path, size: int, digest: bytes | None) -> float:
    """A sender task reads the file and writes it to a loopback socket; we receive it.

    With a ``digest`` the received bytes are kept and checked (outside the timing);
    without, they are only counted, as :func:`read_file_mirrord` does.
    """
    received: asyncio.Future[tuple[float, bytes | int]] = asyncio.get_running_loop().create_future()

    async def receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunks, count = [], 0
        while chunk := await reader.read(CHUNK):
            if digest is not None:
                chunks.append(chunk)
            count += len(chunk)
        if not received.done():  # (cancelled when interrupted)
            received.set_result(
                (time.perf_counter(), b"".join(chunks) if digest is not None else count)
            )
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
        finished, result = await received
        await writer.wait_closed()
    _check(result, size, digest, "direct file read")
    return finished - started


async def read_file_mirrord(files: RemoteFiles, size: int, digest: bytes | None) -> float:
    """``RemoteFiles.read_file`` (checked) with a ``digest``, else ``stream_file`` (counted)."""
    started = time.perf_counter()
    result: bytes | int
    if digest is not None:
        result = await files.read_file(REMOTE_FILE)
    else:
        result = 0
        async for chunk in files.stream_file(REMOTE_FILE):
            result += len(chunk)
    elapsed = time.perf_counter() - started
    _check(result, size, digest, "mirrord file read")
    return elapsed


async def _pump(
    write: Callable[[bytes], Awaitable[None]],
    end: Callable[[], Awaitable[None]],
    read: Callable[[], Awaitable[bytes]],
    payload: bytes,
    keep: bool,
) -> bytes | int:
    """Write ``payload`` in chunks while reading the echo concurrently.

    Returns the echo if ``keep``, else the number of bytes echoed.
    """
    view = memoryview(payload)

    async def writer() -> None:
        for offset in range(0, len(view), CHUNK):
            await write(view[offset : offset + CHUNK])
        await end()

    async def reader() -> bytes | int:
        chunks, count = [], 0
        while chunk := await read():
            if keep:
                chunks.append(chunk)
            count += len(chunk)
        return b"".join(chunks) if keep else count

    _, echoed = await asyncio.gather(writer(), reader())
    return echoed


async def echo_direct(port: int, payload: bytes, digest: bytes | None) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=CHUNK)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def end() -> None:
        writer.write_eof()

    try:
        started = time.perf_counter()
        echoed = await _pump(write, end, lambda: reader.read(CHUNK), payload, digest is not None)
        elapsed = time.perf_counter() - started
    finally:
        writer.close()
        await writer.wait_closed()
    _check(echoed, len(payload), digest, "direct echo")
    return elapsed


async def echo_mirrord(
    session: Session, host: str, port: int, payload: bytes, digest: bytes | None
) -> float:
    from mirrord_network.local.remote_network import connect_tcp

    stream = await connect_tcp(session, host, port)
    async with stream:
        started = time.perf_counter()
        # Reads of at most CHUNK, as on the direct side (a read of everything buffered would
        # allocate differently sized results: up to a 4 MiB window at once).
        echoed = await _pump(
            stream.write, stream.end, lambda: stream.read(CHUNK), payload, digest is not None
        )
        elapsed = time.perf_counter() - started
    _check(echoed, len(payload), digest, "mirrord echo")
    return elapsed


def _check(result: bytes | int, size: int, digest: bytes | None, what: str) -> None:
    """The bytes (or their count) are what was sent."""
    if isinstance(result, int):
        if result != size:
            raise RuntimeError(f"{what}: got {result} bytes of the {size} sent")
    elif len(result) != size or hashlib.blake2b(result).digest() != digest:
        raise RuntimeError(f"{what}: got {len(result)} bytes that differ from the {size} sent")


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Settings:
    size: int
    repeat: int
    pings: int


async def measure(
    settings: Settings,
    endpoint: AgentEndpoint,
    file_path: Path,
    pod_ip: str,
    pod_echo_port: int,
    local_echo_port: int,
) -> list[Row]:
    from mirrord_core.session import Session
    from mirrord_fs.local.remote_files import RemoteFiles

    payload = os.urandom(settings.size)
    digest = hashlib.blake2b(payload).digest()
    file_path.write_bytes(payload)
    mib = settings.size / MIB
    rows = []

    session = await Session.connect(endpoint, client_name="benchmark")
    try:
        files = RemoteFiles(session)

        remote, direct = await ping_both(session, local_echo_port, settings.pings)
        rows.append(Row("ping round trip (median)", "µs", remote * 1e6, direct * 1e6, False))

        remote_times, direct_times = await alternate_runs(
            settings.repeat,
            lambda check: read_file_mirrord(files, settings.size, check),
            lambda check: read_file_direct(file_path, settings.size, check),
            digest,
        )
        rows.append(
            Row.throughput(
                f"whole-file read, {mib:g} MiB", settings.size, remote_times, direct_times
            )
        )

        remote_times, direct_times = await alternate_runs(
            settings.repeat,
            lambda check: echo_mirrord(session, pod_ip, pod_echo_port, payload, check),
            lambda check: echo_direct(local_echo_port, payload, check),
            digest,
        )
        rows.append(
            Row.throughput(
                f"outgoing TCP echo, {mib:g} MiB", settings.size, remote_times, direct_times
            )
        )
    finally:
        await session.close()
    return rows


def print_table(rows: list[Row], settings: Settings, elapsed: float, load: float) -> bool:
    print()
    print(
        f"mirrord agent benchmark — {settings.size / MIB:g} MiB transfers, best of "
        f"{settings.repeat}, {settings.pings} pings; {os.cpu_count()} CPUs, "
        f"Linux {os.uname().release}, Python {sys.version.split()[0]}; "
        f"load average {load:.2f} at the start"
    )
    header = (
        f"{'measurement':<30} {'unit':>6} {'mirrord':>9} {'direct':>9} {'ratio':>6}"
        f" {'median ratio':>12}  bar (best runs)"
    )
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
        median = "-" if row.median_ratio is None else f"{row.median_ratio:.2f}"
        print(
            f"{row.name:<30} {row.unit:>6} {row.mirrord:>9.1f} {row.direct:>9.1f} "
            f"{row.ratio:>6.2f} {median:>12}  {verdict}"
        )
    print(f"\nbulk throughput bar (>= {BAR:.0%} of direct loopback): {'met' if ok else 'NOT met'}")
    print(f"total time {elapsed:.1f} s")
    return ok


def run(settings: Settings) -> int:
    from mirrord_core.config.resolver import resolve
    from mirrord_core.plugin_manager import get_plugins
    from mirrord_core.sandbox import PodSpec, Sandbox

    started = time.perf_counter()
    load = os.getloadavg()[0]
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
    ok = print_table(rows, settings, time.perf_counter() - started, load)
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
        repeat=args.repeat or 5,
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
