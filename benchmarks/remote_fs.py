"""Benchmark: reading a remote file through the session's FUSE mount, in the same run as
its baselines (issue 4, item 8c).

Run by hand, as root (it builds a sandbox pod and mounts FUSE):

    python benchmarks/remote_fs.py            # 64 MiB, best of 3
    python benchmarks/remote_fs.py --size 16  # MiB

It builds a sandbox pod holding a file of random bytes, spawns a real local agent for the
pod through the target plugin's hooks, mounts the pod's root with ``RemoteMount`` and
measures, with ``dd bs=1M`` in a separate process as a user's program would read:

1. first read: the file through the mount with nothing cached (read ahead from the agent)
   vs a plain loopback TCP copy of the same number of bytes (sender and receiver threads);
2. cached read: the same file read again through the mount vs a local read of the same
   file (the pod's copy on this machine, in the page cache).

Bars: first read >= 25% of loopback, cached read >= 50% of local. Runs alternate with their
baselines so both see the same background load; each figure is the best of ``--repeat``.
The sandbox, the agent and the mount are removed on every exit path.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mirrord_core.config import resolve
from mirrord_core.plugin_manager import get_plugins
from mirrord_core.sandbox import PodSpec, Sandbox
from mirrord_fs.local.remote_mount import RemoteMount

MIB = 1024 * 1024
FIRST_READ_BAR = 0.25
CACHED_READ_BAR = 0.50


def dd_seconds(path: Path) -> float:
    """Seconds for ``dd`` to read ``path`` whole (1 MiB reads, output discarded)."""
    started = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)
    return time.perf_counter() - started


def loopback_seconds(size: int) -> float:
    """Seconds to copy ``size`` bytes over a 127.0.0.1 TCP connection (1 MiB reads)."""
    payload = memoryview(os.urandom(MIB) * (size // MIB))
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def send() -> None:
            connection, _ = server.accept()
            with connection:
                connection.sendall(payload)

        sender = threading.Thread(target=send)
        sender.start()
        buffer = bytearray(MIB)
        received = 0
        with socket.create_connection(("127.0.0.1", port)) as client:
            started = time.perf_counter()
            while chunk := client.recv_into(buffer):
                received += chunk
            elapsed = time.perf_counter() - started
        sender.join()
    assert received == len(payload)
    return elapsed


def best_pair(
    repeat: int, measured: Callable[[], float], baseline: Callable[[], float]
) -> tuple[float, float]:
    """Best (shortest) of ``repeat`` alternating runs of each, after one warm-up each."""
    measured()
    baseline()
    ours, theirs = [], []
    for _ in range(repeat):
        ours.append(measured())
        theirs.append(baseline())
    return min(ours), min(theirs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="file size in MiB (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    args = parser.parse_args()
    size = args.size * MIB
    if os.geteuid() != 0:
        print("run as root: the benchmark builds a sandbox pod and mounts FUSE", file=sys.stderr)
        return 2

    with Sandbox.create([PodSpec("bench", files={"/data/big.bin": os.urandom(size)})]) as sb:
        pod = sb.pod("bench")
        loaded = get_plugins()
        resolved = resolve(loaded.layout, environ={}, flags={"target": f"pid/{pod.pid}"})
        target = loaded.manager.hook.resolve_target(config=resolved.config)
        endpoint = loaded.manager.hook.spawn_agent(config=resolved.config, target=target)
        try:
            with RemoteMount.for_endpoint(endpoint) as mount:
                remote = mount.path / "data" / "big.bin"
                local = pod.root / "data" / "big.bin"

                def first_read() -> float:
                    # Forget our copy: the next open fetches again and the kernel drops
                    # its pages of the file (a changed version would do the same).
                    mount.cache.clear()
                    return dd_seconds(remote)

                first, loopback = best_pair(args.repeat, first_read, lambda: loopback_seconds(size))
                dd_seconds(remote)  # fetched and cached
                cached, local_read = best_pair(
                    args.repeat, lambda: dd_seconds(remote), lambda: dd_seconds(local)
                )
        finally:
            endpoint.release()

    rows = [
        ("first read via mount", first, "loopback TCP copy", loopback, FIRST_READ_BAR),
        ("cached read via mount", cached, "local read", local_read, CACHED_READ_BAR),
    ]
    print(f"remote file system, {args.size} MiB, best of {args.repeat}")
    print(f"{'measure':<24}{'MiB/s':>10}  {'baseline':<20}{'MiB/s':>10}{'ratio':>8}{'bar':>7}")
    failed = False
    for name, seconds, base_name, base_seconds, bar in rows:
        ratio = base_seconds / seconds
        ok = ratio >= bar
        failed |= not ok
        print(
            f"{name:<24}{size / MIB / seconds:>10.0f}  {base_name:<20}"
            f"{size / MIB / base_seconds:>10.0f}{ratio:>8.2f}{bar:>6.2f}{'' if ok else ' !'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
