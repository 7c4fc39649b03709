"""Every file operation of a real agent against a sandbox pod's root, errors as errno values,
whole-file streaming, and several clients at once (isolated, concurrent, one vanishing)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mirrord_core.sandbox import Sandbox
from mirrord_core.session import Session
from mirrord_fs.local.remote_files import RemoteFiles
from mirrord_fs.messages import MAX_READ

CONFIG = b"service: web\nport: 8080\nfeature_flags: [checkout-v2]\n"
BIG_SIZE = 6 * 1024 * 1024 + 12345


@pytest.fixture(scope="module")
def big_file(sandbox: Sandbox) -> tuple[str, bytes]:
    """A multi-MiB file placed in the web pod's root (path in the pod, content)."""
    data = os.urandom(BIG_SIZE)
    (sandbox.pod("web").root / "app" / "big.bin").write_bytes(data)
    return "/app/big.bin", data


def web_files(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> Callable[[Callable[[RemoteFiles], Awaitable[Any]]], Any]:
    """Run ``body(files)`` with a fresh agent for the web pod and one session to it."""
    endpoint = agent_for(sandbox.pod("web").pid)

    def call(body: Callable[[RemoteFiles], Awaitable[Any]]) -> Any:
        async def go() -> Any:
            async with open_session(endpoint) as session:
                return await body(RemoteFiles(session))

        return run(go())

    return call


async def expect_errno(number: int, operation: Awaitable[Any]) -> None:
    with pytest.raises(OSError) as caught:
        await operation
    assert caught.value.errno == number, f"expected {errno.errorcode[number]}, got {caught.value!r}"


def test_open_read_by_range_fstat_close(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    host = sandbox.pod("web").root / "app" / "config.yaml"

    async def body(files: RemoteFiles) -> None:
        handle = await files.open("/app/config.yaml")
        assert await files.read(handle, 0, 7) == b"service"
        assert await files.read(handle, 9, 3) == CONFIG[9:12]
        assert await files.read(handle, 0, 1 << 20) == CONFIG  # short read at EOF
        assert await files.read(handle, len(CONFIG), 10) == b""
        assert await files.read(handle, 10**9, 10) == b""
        assert await files.read(handle, 0, 0) == b""
        result = await files.fstat(handle)
        assert stat.S_ISREG(result.mode)
        assert (result.size, result.ino) == (len(CONFIG), host.stat().st_ino)
        await files.close(handle)
        await expect_errno(errno.EBADF, files.read(handle, 0, 1))
        await expect_errno(errno.EBADF, files.close(handle))

    web_files(sandbox, agent_for, open_session, run)(body)


def test_stat_and_lstat_describe_the_pods_files(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    root = sandbox.pod("web").root

    async def body(files: RemoteFiles) -> None:
        config = await files.stat("/app/config.yaml")
        local = (root / "app" / "config.yaml").stat()
        assert (config.ino, config.dev, config.size, config.mode, config.nlink) == (
            local.st_ino,
            local.st_dev,
            local.st_size,
            local.st_mode,
            local.st_nlink,
        )
        assert (config.uid, config.gid, config.mtime_ns) == (
            local.st_uid,
            local.st_gid,
            local.st_mtime_ns,
        )
        # "/" is the pod's root directory, not the agent's.
        top = await files.stat("/")
        assert (top.ino, top.dev) == (root.stat().st_ino, root.stat().st_dev)
        assert top.ino != os.stat("/").st_ino
        # lstat describes the link, stat what it points to (busybox).
        link = await files.lstat("/bin/sh")
        assert stat.S_ISLNK(link.mode)
        assert link.ino == (root / "bin" / "sh").lstat().st_ino
        target = await files.stat("/bin/sh")
        assert stat.S_ISREG(target.mode)
        assert target.ino == (root / "bin" / "busybox").stat().st_ino
        assert stat.S_ISDIR((await files.lstat("/app/")).mode)
        null = await files.stat("/dev/null")
        assert stat.S_ISCHR(null.mode) and null.rdev == os.makedev(1, 3)

    web_files(sandbox, agent_for, open_session, run)(body)


def test_access_readlink_readdir_statfs(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    root = sandbox.pod("web").root

    async def body(files: RemoteFiles) -> None:
        await files.access("/app/config.yaml", os.F_OK)
        await files.access("/app/config.yaml", os.R_OK | os.W_OK)
        await files.access("/bin/busybox", os.X_OK)
        await expect_errno(errno.EACCES, files.access("/app/config.yaml", os.X_OK))
        await expect_errno(errno.ENOENT, files.access("/app/missing", os.F_OK))

        assert await files.readlink("/bin/sh") == os.readlink(root / "bin" / "sh")
        await expect_errno(errno.EINVAL, files.readlink("/app/config.yaml"))

        app = {name: (ino, kind) for name, ino, kind in await files.readdir("/app")}
        assert app["config.yaml"] == ((root / "app/config.yaml").stat().st_ino, stat.S_IFREG)
        assert app["data"] == ((root / "app/data").stat().st_ino, stat.S_IFDIR)
        top = {name for name, _, _ in await files.readdir("/")}
        assert top == set(os.listdir(root))
        assert "proc" not in top and "home" not in top  # the pod's root, not the host's
        dev = {name: kind for name, _, kind in await files.readdir("/dev")}
        assert dev["null"] == stat.S_IFCHR
        bins = {name: kind for name, _, kind in await files.readdir("/bin")}
        assert bins["sh"] == stat.S_IFLNK and bins["busybox"] == stat.S_IFREG

        fs = await files.statfs("/app")
        local = os.statvfs(root / "app")
        assert (fs.bsize, fs.frsize, fs.blocks, fs.files, fs.namemax) == (
            local.f_bsize,
            local.f_frsize,
            local.f_blocks,
            local.f_files,
            local.f_namemax,
        )

    web_files(sandbox, agent_for, open_session, run)(body)


def test_write_create_mkdir_rename_truncate_unlink_rmdir(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    root = sandbox.pod("web").root

    async def body(files: RemoteFiles) -> None:
        await files.mkdir("/tmp/work", 0o750)
        assert stat.S_IMODE((root / "tmp/work").stat().st_mode) == 0o750
        await expect_errno(errno.EEXIST, files.mkdir("/tmp/work"))

        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
        handle = await files.open("/tmp/work/notes.txt", flags, 0o640)
        assert await files.write(handle, 0, b"hello ") == 6
        assert await files.write(handle, 6, b"world\n") == 6
        assert await files.write(handle, 20, b"!") == 1  # past EOF: a hole of zeros
        assert (await files.fstat(handle)).size == 21
        await files.close(handle)
        assert (root / "tmp/work/notes.txt").read_bytes() == b"hello world\n" + b"\0" * 8 + b"!"
        assert stat.S_IMODE((root / "tmp/work/notes.txt").stat().st_mode) == 0o640
        await expect_errno(errno.EEXIST, files.open("/tmp/work/notes.txt", flags))

        await files.truncate("/tmp/work/notes.txt", 5)
        assert (root / "tmp/work/notes.txt").read_bytes() == b"hello"
        await files.truncate("/tmp/work/notes.txt", 8)
        assert (root / "tmp/work/notes.txt").read_bytes() == b"hello\0\0\0"
        await expect_errno(errno.EINVAL, files.truncate("/tmp/work/notes.txt", -1))

        await files.rename("/tmp/work/notes.txt", "/tmp/work/renamed.txt")
        assert sorted(os.listdir(root / "tmp/work")) == ["renamed.txt"]
        await expect_errno(errno.ENOENT, files.rename("/tmp/work/notes.txt", "/tmp/x"))
        await expect_errno(errno.ENOTEMPTY, files.rmdir("/tmp/work"))
        await expect_errno(errno.EISDIR, files.unlink("/tmp/work"))
        await expect_errno(errno.ENOTDIR, files.rmdir("/tmp/work/renamed.txt"))
        await files.unlink("/tmp/work/renamed.txt")
        await files.rmdir("/tmp/work")
        await expect_errno(errno.ENOENT, files.stat("/tmp/work"))
        assert not (root / "tmp/work").exists()

    web_files(sandbox, agent_for, open_session, run)(body)
    # The pod itself sees what the agent wrote and the agent sees what the pod writes.
    sandbox.exec_in("web", ["/bin/sh", "-c", "echo from-the-pod > /tmp/pod.txt"], check=True)

    async def read_back(files: RemoteFiles) -> bytes:
        handle = await files.open("/tmp/agent.txt", os.O_CREAT | os.O_RDWR, 0o644)
        await files.write(handle, 0, b"from-the-agent\n")
        await files.close(handle)
        return await files.read_file("/tmp/pod.txt")

    assert web_files(sandbox, agent_for, open_session, run)(read_back) == b"from-the-pod\n"
    seen = sandbox.exec_in("web", ["/bin/cat", "/tmp/agent.txt"], check=True)
    assert seen.stdout == b"from-the-agent\n"


# (description, operation, expected errno)
ERROR_CASES: list[tuple[str, Callable[[RemoteFiles], Awaitable[Any]], int]] = [
    ("open a missing file", lambda f: f.open("/app/missing"), errno.ENOENT),
    ("open in a missing directory", lambda f: f.open("/nope/x", os.O_CREAT), errno.ENOENT),
    ("open a directory for writing", lambda f: f.open("/app", os.O_WRONLY), errno.EISDIR),
    ("a file used as a directory", lambda f: f.open("/app/config.yaml/x"), errno.ENOTDIR),
    ("O_DIRECTORY on a file", lambda f: f.open("/app/config.yaml", os.O_DIRECTORY), errno.ENOTDIR),
    (
        "O_EXCL on an existing file",
        lambda f: f.open("/app/config.yaml", os.O_CREAT | os.O_EXCL),
        errno.EEXIST,
    ),
    ("a relative path", lambda f: f.open("app/config.yaml"), errno.EINVAL),
    ("an empty path", lambda f: f.stat(""), errno.EINVAL),
    ("a path with NUL", lambda f: f.stat("/app/config.yaml\0/x"), errno.EINVAL),
    ("a name too long", lambda f: f.stat("/app/" + "x" * 300), errno.ENAMETOOLONG),
    ("stat a missing file", lambda f: f.stat("/missing"), errno.ENOENT),
    ("lstat a missing file", lambda f: f.lstat("/missing"), errno.ENOENT),
    ("read an unknown handle", lambda f: f.read(424242, 0, 1), errno.EBADF),
    ("write an unknown handle", lambda f: f.write(424242, 0, b"x"), errno.EBADF),
    ("close an unknown handle", lambda f: f.close(424242), errno.EBADF),
    ("fstat an unknown handle", lambda f: f.fstat(0), errno.EBADF),
    ("mkdir an existing directory", lambda f: f.mkdir("/app"), errno.EEXIST),
    ("mkdir in a missing directory", lambda f: f.mkdir("/nope/x"), errno.ENOENT),
    ("rmdir a non-empty directory", lambda f: f.rmdir("/app"), errno.ENOTEMPTY),
    ("rmdir a file", lambda f: f.rmdir("/app/config.yaml"), errno.ENOTDIR),
    ("rmdir '.'", lambda f: f.rmdir("/app/."), errno.EINVAL),
    ("unlink a directory", lambda f: f.unlink("/app/data"), errno.EISDIR),
    ("unlink a missing file", lambda f: f.unlink("/app/missing"), errno.ENOENT),
    ("rename a missing file", lambda f: f.rename("/app/missing", "/tmp/x"), errno.ENOENT),
    ("readlink of a file", lambda f: f.readlink("/app/config.yaml"), errno.EINVAL),
    ("readlink of a missing file", lambda f: f.readlink("/app/missing"), errno.ENOENT),
    ("readdir of a file", lambda f: f.readdir("/app/config.yaml"), errno.ENOTDIR),
    ("readdir of a missing directory", lambda f: f.readdir("/missing"), errno.ENOENT),
    ("truncate a directory", lambda f: f.truncate("/app", 0), errno.EISDIR),
    ("truncate to a negative length", lambda f: f.truncate("/app/x", -5), errno.EINVAL),
    ("statfs of a missing path", lambda f: f.statfs("/missing"), errno.ENOENT),
    ("access of a missing path", lambda f: f.access("/missing", os.F_OK), errno.ENOENT),
    ("read_file of a directory", lambda f: f.read_file("/app"), errno.EISDIR),
    ("read_file of a missing file", lambda f: f.read_file("/missing"), errno.ENOENT),
]


def test_failures_are_the_errno_of_the_operation_in_the_pod(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    async def body(files: RemoteFiles) -> list[str]:
        wrong = []
        for description, operation, expected in ERROR_CASES:
            try:
                result = await operation(files)
            except OSError as err:
                if err.errno != expected:
                    wrong.append(f"{description}: {err!r}, expected {errno.errorcode[expected]}")
            else:
                wrong.append(f"{description}: succeeded with {result!r}")
        return wrong

    assert web_files(sandbox, agent_for, open_session, run)(body) == []
    # The errors are the builtin OSError subclasses, as locally.
    exceptions = {
        errno.ENOENT: FileNotFoundError,
        errno.EISDIR: IsADirectoryError,
        errno.ENOTDIR: NotADirectoryError,
        errno.EEXIST: FileExistsError,
    }

    async def typed(files: RemoteFiles) -> None:
        for number, exception in exceptions.items():
            case = next(c for c in ERROR_CASES if c[2] == number)
            with pytest.raises(exception):
                await case[1](files)

    web_files(sandbox, agent_for, open_session, run)(typed)


def test_whole_file_streaming_and_ranged_reads_of_a_multi_mib_file(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any, big_file: tuple[str, bytes]
) -> None:
    path, data = big_file

    async def body(files: RemoteFiles) -> None:
        chunks = [chunk async for chunk in files.stream_file(path)]
        assert len(chunks) > 1
        assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()
        assert await files.read_file(path) == data

        handle = await files.open(path)
        assert (await files.fstat(handle)).size == len(data)
        # One read never answers more than MAX_READ (a short read, as read(2) may be).
        first = await files.read(handle, 0, 2 * MAX_READ)
        assert first == data[:MAX_READ]
        pieces, offset = [], 0
        while piece := await files.read(handle, offset, 1 << 20):
            pieces.append(piece)
            offset += len(piece)
        assert b"".join(pieces) == data
        assert await files.read(handle, len(data) - 10, 100) == data[-10:]
        await files.close(handle)
        assert await files.read_file("/app/data/orders.csv") == (b"id,total\n1,9.99\n2,24.50\n")
        empty = await files.open("/tmp/empty", os.O_CREAT | os.O_WRONLY)
        await files.close(empty)
        assert await files.read_file("/tmp/empty") == b""

    web_files(sandbox, agent_for, open_session, run)(body)


def test_a_fifo_in_the_pod_never_blocks_the_agent(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    fifo = sandbox.pod("web").root / "tmp" / "pipe"
    os.mkfifo(fifo)
    try:

        async def body(files: RemoteFiles) -> None:
            ping = files.session.ping
            handle = await asyncio.wait_for(files.open("/tmp/pipe"), 3)
            await expect_errno(errno.ESPIPE, files.read(handle, 0, 10))
            assert stat.S_ISFIFO((await files.fstat(handle)).mode)
            await files.close(handle)
            # Nobody reads the FIFO: opening it for writing cannot succeed without waiting.
            await expect_errno(errno.ENXIO, asyncio.wait_for(files.open("/tmp/pipe", 1), 3))
            await expect_errno(errno.ENXIO, asyncio.wait_for(files.truncate("/tmp/pipe", 0), 3))
            # No writer: the stream ends at once, like `cat` of a FIFO nobody writes.
            assert await asyncio.wait_for(files.read_file("/tmp/pipe"), 3) == b""
            assert await ping(timeout=3) < 3
            kinds = {name: kind for name, _, kind in await files.readdir("/tmp")}
            assert kinds["pipe"] == stat.S_IFIFO

        web_files(sandbox, agent_for, open_session, run)(body)
    finally:
        fifo.unlink()


def test_names_that_are_not_utf8_are_listed_not_fatal(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    tmp = sandbox.pod("web").root / "tmp"
    odd = Path(os.fsdecode(bytes(tmp) + b"/caf\xff"))
    odd.write_text("x")
    link = tmp / "odd-link"
    link.symlink_to(os.fsdecode(b"caf\xff"))
    try:

        async def body(files: RemoteFiles) -> tuple[set[str], str]:
            names = {name for name, _, _ in await files.readdir("/tmp")}
            return names, await files.readlink("/tmp/odd-link")

        names, target = web_files(sandbox, agent_for, open_session, run)(body)
        assert "caf\ufffd" in names and "odd-link" in names
        assert target == "caf\ufffd"
    finally:
        odd.unlink()
        link.unlink()


# -- several clients ---------------------------------------------------------------------


def test_two_clients_have_isolated_handle_tables(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    endpoint = agent_for(sandbox.pod("web").pid)

    async def go() -> None:
        async with open_session(endpoint, "A") as a, open_session(endpoint, "B") as b:
            files_a, files_b = RemoteFiles(a), RemoteFiles(b)
            handle_a = await files_a.open("/app/config.yaml")
            others = [await files_a.open("/app/config.yaml") for _ in range(3)]
            # B holds no handles: A's numbers mean nothing on B's connection.
            for handle in (handle_a, *others):
                await expect_errno(errno.EBADF, files_b.read(handle, 0, 10))
                await expect_errno(errno.EBADF, files_b.fstat(handle))
                await expect_errno(errno.EBADF, files_b.write(handle, 0, b"x"))
                await expect_errno(errno.EBADF, files_b.close(handle))
            # B's own handle may carry the same number, yet names B's file.
            handle_b = await files_b.open("/app/data/orders.csv")
            assert handle_b == handle_a
            assert await files_b.read(handle_b, 0, 8) == b"id,total"
            assert await files_a.read(handle_a, 0, 7) == b"service"
            await files_b.close(handle_b)
            assert await files_a.read(handle_a, 0, 7) == b"service"  # A's is still open

    run(go())


def test_two_clients_stream_big_files_concurrently(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any, big_file: tuple[str, bytes]
) -> None:
    path, data = big_file
    endpoint = agent_for(sandbox.pod("web").pid)

    async def go() -> None:
        async with open_session(endpoint, "A") as a, open_session(endpoint, "B") as b:
            results = await asyncio.gather(
                RemoteFiles(a).read_file(path),
                RemoteFiles(b).read_file(path),
                RemoteFiles(a).read_file(path),
                RemoteFiles(b).read_file("/app/config.yaml"),
            )
            assert results == [data, data, data, CONFIG]

    run(go())


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_client_vanishing_mid_stream_leaves_the_others_and_the_agent_unaffected(
    sandbox: Sandbox,
    agent_for: Any,
    agent_pid: Any,
    open_session: Any,
    run: Any,
    big_file: tuple[str, bytes],
) -> None:
    path, data = big_file
    endpoint = agent_for(sandbox.pod("web").pid)
    pid = agent_pid(endpoint)

    async def go() -> None:
        async with open_session(endpoint, "survivor") as survivor:
            files = RemoteFiles(survivor)
            # A first stream gives the survivor's connection what it keeps for streaming
            # (the agent's splice pipe), so that the baseline counts it.
            assert await files.read_file("/app/config.yaml") == CONFIG
            baseline = open_fds(pid)
            doomed: Session = await Session.connect(endpoint, client_name="doomed")
            doomed_files = RemoteFiles(doomed)
            for _ in range(10):
                await doomed_files.open("/app/config.yaml")
            stream = doomed_files.stream_file(path)
            assert await anext(stream)  # the stream is under way …
            survivor_read = asyncio.ensure_future(files.read_file(path))
            # … when the doomed client disappears without a word (its socket is reset).
            doomed.connection._writer.transport.abort()
            assert await survivor_read == data
            assert await survivor.ping(timeout=5) < 5
            assert await files.read_file("/app/config.yaml") == CONFIG
            # The agent closed the vanished client's descriptors (10 handles and the stream).
            for _ in range(50):
                if open_fds(pid) <= baseline:
                    break
                await asyncio.sleep(0.1)
            assert open_fds(pid) <= baseline
            await stream.aclose()
            await doomed.close()
            assert not _exited(pid)

    run(go())


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
