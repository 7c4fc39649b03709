"""Reading one remote file from many threads and processes at once never hangs.

The kernel's page cache belongs to the inode, not to an open file: when several opens of a
file read it at once, the kernel sends one FUSE read per page, through whichever open got
there first, and the others wait on that page's lock. So the whole-file fetch must start on
the first read through *any* open of a cache entry — not only through the open that
created it — or that read waits for a fetch nobody starts while the creating open waits
in the kernel for the page (until the mount's timeout).

Covered at three depths: the FUSE operations with a fake agent (deterministic), the real
mount of a sandbox pod's root (8 threads, 8 processes) and ``mirrord run`` (8 threads
resolving ``localhost`` through the pod's ``/etc/hosts``, 8 threads and 8 processes reading a
pod file). Every reader runs with a timeout, so a hang fails the test instead of blocking
the suite. Needs root and /dev/fuse, as ``mirrord run`` does.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mirrord_core.config import resolve
from mirrord_core.plugin_manager import get_plugins
from mirrord_core.sandbox import Sandbox
from mirrord_core.sandbox.demo import demo_pods
from mirrord_core.session import Session
from mirrord_core.target_model import AgentEndpoint
from mirrord_fs.local import mount_lifecycle
from mirrord_fs.local.fuse_operations import AsyncBridge, RemoteOperations
from mirrord_fs.local.read_cache import ReadCache
from mirrord_fs.local.remote_mount import RemoteMount
from mirrord_fs.messages import FsStatResult

READERS = 8
#: Fresh files per test: each is a new cache entry, so each round races anew.
ROUNDS = 6
#: A reader that needs longer than this is hung (a healthy round takes milliseconds).
READER_TIMEOUT = 30.0
#: The mount's own timeout in the mount tests: a read stuck waiting for a fetch that never
#: starts fails with ETIMEDOUT after this long instead of the default minute.
MOUNT_TIMEOUT = 10.0

#: ``readers.py threads|processes COUNT PATH...``: COUNT readers (threads, or forked
#: processes) read each PATH together, released by a barrier; each prints
#: ``<sha256> <path>`` per read. A broken barrier (a reader stuck) or a failed read exits 1.
READER_SCRIPT = """\
import hashlib
import multiprocessing
import os
import sys
import threading

kind, count, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
TIMEOUT = float(os.environ.get("READER_BARRIER_TIMEOUT", "20"))


def reader(barrier):
    for path in paths:
        barrier.wait(TIMEOUT)
        with open(path, "rb") as file:
            digest = hashlib.sha256(file.read()).hexdigest()
        os.write(1, f"{digest} {path}\\n".encode())


if kind == "threads":
    barrier = threading.Barrier(count)
    failures = []

    def run():
        try:
            reader(barrier)
        except BaseException as err:
            failures.append(repr(err))
            barrier.abort()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        sys.exit(f"readers failed: {failures}")
else:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(count)

    def run():
        try:
            reader(barrier)
        except BaseException:
            barrier.abort()
            raise

    processes = [context.Process(target=run) for _ in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    codes = [process.exitcode for process in processes]
    if any(codes):
        sys.exit(f"reader processes failed: {codes}")
"""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_reads(output: str, expected: dict[str, str]) -> None:
    """Every reader read every path, and got exactly the pod's bytes."""
    reads: dict[str, list[str]] = {}
    for line in output.splitlines():
        sha, _, path = line.partition(" ")
        reads.setdefault(path, []).append(sha)
    assert sorted(reads) == sorted(expected), output
    for path, shas in reads.items():
        assert shas == [expected[path]] * READERS, f"{path}: {shas}"


def run_bounded(argv: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    """``argv`` with a hard time limit: on timeout SIGTERM (``mirrord`` unmounts and passes
    it on), then SIGKILL for the whole process group; the test fails either way."""
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **options,  # type: ignore[call-overload]
    )
    try:
        stdout, stderr = process.communicate(timeout=READER_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(
            f"{argv[:4]}… hung for {READER_TIMEOUT:g} s (concurrent reads of one file)\n"
            f"{stdout}\n{stderr}"
        )
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# -- the FUSE operations, with a fake agent -------------------------------------------------------


def stat_result(size: int) -> FsStatResult:
    return FsStatResult(
        mode=0o100644,
        ino=1,
        dev=1,
        nlink=1,
        uid=0,
        gid=0,
        size=size,
        atime_ns=0,
        mtime_ns=5,
        ctime_ns=0,
        blksize=4096,
        blocks=0,
        rdev=0,
    )


class FakeFiles:
    """The RemoteFiles calls an open and a whole-file fetch make, against bytes in memory."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    async def lstat(self, path: str) -> FsStatResult:
        return stat_result(len(self.content))

    async def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
        return 7

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        await asyncio.sleep(0)
        return self.content[offset : offset + size]

    async def file_chunks(self, path: str) -> AsyncIterator[memoryview]:
        view = memoryview(self.content)
        for offset in range(0, len(view), 256 * 1024):
            await asyncio.sleep(0)
            yield view[offset : offset + 256 * 1024]

    async def fstat(self, handle: int) -> FsStatResult:
        return stat_result(len(self.content))

    async def close(self, handle: int) -> None:
        pass


@pytest.fixture
def operations() -> Iterator[RemoteOperations]:
    """FUSE operations over a 3 MiB fake file, on an event loop in its own thread; a
    fetch that never starts fails reads after 3 s."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    files = FakeFiles(os.urandom(3 * 1024 * 1024 + 123))
    try:
        yield RemoteOperations(
            files,  # type: ignore[arg-type]
            AsyncBridge(loop, timeout=3.0),
            ReadCache(),
            writable=False,
        )
    finally:
        # As a session's loop ends: fetches still running are cancelled first.
        asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _cancel_tasks() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def open_file(operations: RemoteOperations) -> types.SimpleNamespace:
    fi = types.SimpleNamespace(flags=os.O_RDONLY, fh=0, keep_cache=0, direct_io=0)
    operations.open("/etc/hosts", fi)
    return fi


def read_in_thread(
    operations: RemoteOperations, fi: types.SimpleNamespace, size: int, offset: int
) -> bytes:
    """One FUSE read on a worker thread, as libfuse makes it; fails if it takes > 10 s."""
    result: list[bytes | BaseException] = []

    def read() -> None:
        try:
            result.append(operations.read(None, size, offset, fi.fh))
        except BaseException as err:
            result.append(err)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the read hung"
    assert not isinstance(result[0], BaseException), f"the read failed: {result[0]!r}"
    return result[0]


def test_the_first_read_through_any_open_starts_the_fetch(operations: RemoteOperations) -> None:
    """The kernel's read for a page comes through whichever open got there first: here the
    second open of an entry the first open created, which never reads itself (its read
    waits in the kernel for that very page)."""
    content = operations.files.content  # type: ignore[attr-defined]
    creator = open_file(operations)
    other = open_file(operations)
    assert operations.cache.misses == 1 and operations.cache.hits == 1
    started = time.monotonic()
    assert read_in_thread(operations, other, 4096, 0) == content[:4096]
    assert time.monotonic() - started < 2.5, "served only after the timeout"
    # Far ahead, through the creating open: served from the same (single) fetch.
    far = 2 * 1024 * 1024
    assert read_in_thread(operations, creator, 65536, far) == content[far : far + 65536]
    assert operations.stats.fetches == 1
    operations.release(None, creator.fh)
    operations.release(None, other.fh)
    assert operations.open_handles() == 0


def race_reads(
    operations: RemoteOperations, handles: list[types.SimpleNamespace], size: int
) -> list[bytes | BaseException]:
    """One read per open, each on its own thread, released together (the order left to
    the scheduler); reader ``i`` reads ``size`` bytes at ``(i % 4)`` MiB."""
    barrier = threading.Barrier(len(handles))
    results: list[bytes | BaseException] = [b""] * len(handles)

    def read(index: int) -> None:
        try:
            barrier.wait(10)
            offset = (index % 4) * 1024 * 1024
            results[index] = operations.read(None, size, offset, handles[index].fh)
        except BaseException as err:
            results[index] = err

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(handles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), "a read hung"
    return results


def test_concurrent_opens_and_reads_on_fuse_threads(operations: RemoteOperations) -> None:
    """Eight opens of one file, read at once from their own threads: every read gets the
    file's bytes, from one fetch per round."""
    content = operations.files.content  # type: ignore[attr-defined]
    size = 131072
    for _ in range(ROUNDS):
        operations.cache.clear()
        handles = [open_file(operations) for _ in range(READERS)]
        results = race_reads(operations, handles, size)
        for index, result in enumerate(results):
            offset = (index % 4) * 1024 * 1024
            assert result == content[offset : offset + size], repr(result)[:200]
        for fi in handles:
            operations.release(None, fi.fh)
    assert operations.stats.fetches == ROUNDS


# -- the mount of a sandbox pod ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """The demo pods; the web pod gets, per round, a small and a multi-chunk file under
    /app/concurrency/ (a new cache entry each)."""
    with Sandbox.create(demo_pods()) as sb:
        root = sb.pod("web").root
        directory = root / "app" / "concurrency"
        directory.mkdir()
        for index in range(ROUNDS):
            (directory / f"small-{index}.txt").write_bytes(os.urandom(300 + index))
            (directory / f"big-{index}.bin").write_bytes(os.urandom(2 * 1024 * 1024 + index))
        yield sb


@pytest.fixture(scope="module")
def pod_root(sandbox: Sandbox) -> Path:
    return sandbox.pod("web").root


@pytest.fixture
def agent(sandbox: Sandbox) -> Iterator[AgentEndpoint]:
    """A real agent for the web pod, kept up by an idle session; released after."""
    loaded = get_plugins()
    flags = {"target": f"pid/{sandbox.pod('web').pid}"}
    resolved = resolve(loaded.layout, environ={}, flags=flags)
    target = loaded.manager.hook.resolve_target(config=resolved.config)
    endpoint = loaded.manager.hook.spawn_agent(config=resolved.config, target=target)
    assert isinstance(endpoint, AgentEndpoint)
    loop = asyncio.new_event_loop()
    keeper = threading.Thread(target=loop.run_forever, daemon=True)
    keeper.start()
    try:
        session = asyncio.run_coroutine_threadsafe(Session.connect(endpoint), loop).result(30)
        try:
            yield endpoint
        finally:
            asyncio.run_coroutine_threadsafe(session.close(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        keeper.join(10)
        loop.close()
        endpoint.release()


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    """The mounts' state root for this test; nothing may stay mounted under it."""
    root = tmp_path / "mounts"
    yield root
    leftovers = [p for p in mount_lifecycle.mounted_paths() if p.startswith(str(root))]
    for path in leftovers:
        mount_lifecycle.force_unmount(path)
    assert not leftovers, f"mounts left behind: {leftovers}"


def round_files() -> list[str]:
    """The pod paths each round's readers read together, small then big, per round."""
    return [
        f"/app/concurrency/{name}-{index}.{suffix}"
        for index in range(ROUNDS)
        for name, suffix in (("small", "txt"), ("big", "bin"))
    ]


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_many_readers_of_one_file_through_the_mount(
    kind: str, agent: AgentEndpoint, state_root: Path, pod_root: Path, tmp_path: Path
) -> None:
    script = tmp_path / "readers.py"
    script.write_text(READER_SCRIPT)
    paths = ["/etc/hosts", *round_files()]
    with RemoteMount.for_endpoint(agent, state_root=state_root, timeout=MOUNT_TIMEOUT) as mount:
        local = {str(mount.local_path(p)): p for p in paths}
        started = time.monotonic()
        result = run_bounded([sys.executable, str(script), kind, str(READERS), *local])
        elapsed = time.monotonic() - started
        expected = {
            path: digest((pod_root / pod.lstrip("/")).read_bytes()) for path, pod in local.items()
        }
        check_reads(ok(result), expected)
        # Each file was fetched once, whichever reader's request came first.
        assert mount.stats.fetches == len(paths), mount.stats
    # A read that waited for the mount's timeout would have failed; a slow one is a bug too.
    assert elapsed < MOUNT_TIMEOUT, f"{elapsed:.1f} s for {len(paths)} rounds"


# -- mirrord run ------------------------------------------------------------------------------

GETADDRINFO = """\
import socket
import threading

barrier = threading.Barrier({readers})
answers = []
failures = []


def resolve():
    try:
        barrier.wait(20)
        answers.append(sorted({{a[4][0] for a in socket.getaddrinfo("localhost", 80)}}))
    except BaseException as err:
        failures.append(repr(err))
        barrier.abort()


threads = [threading.Thread(target=resolve) for _ in range({readers})]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
assert not failures, failures
print(len(answers), answers[0])
"""


def mirrord_run(
    sandbox: Sandbox, cwd: Path, *command: str, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``mirrord run -t pid/<web> [args] -- command`` (default fs mode: read), bounded."""
    mirrord = Path(sys.executable).parent / "mirrord"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}
    pid = sandbox.pod("web").pid
    argv = [str(mirrord), "run", "-t", f"pid/{pid}", *args, "--", *command]
    return run_bounded(argv, env=env, cwd=cwd)


def test_threads_resolving_localhost_under_mirrord_run(sandbox: Sandbox, tmp_path: Path) -> None:
    """The reported hang: the pod's /etc/hosts (remote, read-only) read by several threads'
    getaddrinfo at once. Repeated: each run is a new mount, so each run races anew."""
    code = GETADDRINFO.format(readers=READERS)
    for _ in range(3):
        result = mirrord_run(
            sandbox, tmp_path, sys.executable, "-c", code, args=("--no-remote-dns",)
        )
        assert ok(result).strip().split(maxsplit=1) == [str(READERS), "['127.0.0.1', '::1']"]


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_many_readers_of_one_file_under_mirrord_run(
    kind: str, sandbox: Sandbox, pod_root: Path, tmp_path: Path
) -> None:
    script = tmp_path / "readers.py"
    script.write_text(READER_SCRIPT)
    paths = ["/app/config.yaml", *round_files()]
    result = mirrord_run(sandbox, tmp_path, sys.executable, str(script), kind, str(READERS), *paths)
    check_reads(ok(result), {p: digest((pod_root / p.lstrip("/")).read_bytes()) for p in paths})
