"""Path traversal through the wire: nothing outside a pod's root is readable or writable.

A ``victim`` pod gets symlinks that escape its root for any naive implementation
(relative ``../..`` chains to a secret on the host, absolute links, a link to the root's
parent, loops, ``/proc/self/root`` with a real procfs mounted in the pod's mount namespace)
and every file operation is tried through a real agent. The test first proves each escape
works when the pod root is opened naively from the host, so a passing test means the
agent — not a missing file — stopped it.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrord_core.sandbox import PodSpec, Sandbox
from mirrord_fs.local.remote_files import RemoteFiles

EXTRA_PODS = [PodSpec("victim", files={"/app/config.txt": "pod config\n"})]
POD_PASSWD_MARK = b"root:x:0:0"
# Errors an escape attempt may end in (never success with the host's data). EACCES: the
# kernel checks ptrace access to /proc/PID before it refuses the magic link itself, and
# PID 1 of this machine may be out of the agent's reach.
REFUSED = {errno.ENOENT, errno.ELOOP, errno.EXDEV, errno.ENOTDIR, errno.EACCES}
DEPTH = "../" * 16


@pytest.fixture(scope="module")
def victim(sandbox: Sandbox, host_secret: Any) -> Iterator[Any]:
    """The victim pod with escaping links in /app and procfs mounted at /proc."""
    pod = sandbox.pod("victim")
    app = pod.root / "app"
    secret = str(host_secret.file).lstrip("/")
    secret_dir = str(host_secret.directory).lstrip("/")
    links = {
        "leak": DEPTH + secret,
        "leakdir": DEPTH + secret_dir,
        "abs-passwd": "/etc/passwd",
        "abs-hostdir": str(host_secret.directory),
        "abs-secret": str(host_secret.file),
        "updir": "../../../../..",
        "loop1": "loop2",
        "loop2": "loop1",
        "self": "self",
        "procroot": "/proc/self/root",
        "proc1root": "/proc/1/root",
        "chain": "/app/hop",
        "hop": "../../../../../../../../" + secret,
    }
    for name, target in links.items():
        (app / name).symlink_to(target)
    (pod.root / "proc").mkdir(exist_ok=True)
    # A real procfs in the pod's own mount namespace (the pod and the agent see it; the
    # host does not).
    subprocess.run(
        [
            "nsenter",
            "-t",
            str(pod.pid),
            "-m",
            "mount",
            "-t",
            "proc",
            "proc",
            str(pod.root / "proc"),
        ],
        check=True,
    )
    try:
        yield pod
    finally:
        subprocess.run(
            ["nsenter", "-t", str(pod.pid), "-m", "umount", "-l", str(pod.root / "proc")],
            check=False,
        )


@pytest.fixture(autouse=True)
def host_untouched(host_secret: Any) -> Iterator[None]:
    """After every test the host's secret directory is exactly as before."""
    before = host_secret.snapshot()
    yield
    assert host_secret.snapshot() == before
    assert host_secret.file.read_bytes() == host_secret.content


def files_call(
    victim: Any, agent_for: Any, open_session: Any, run: Any
) -> Callable[[Callable[[RemoteFiles], Awaitable[Any]]], Any]:
    endpoint = agent_for(victim.pid)

    def call(body: Callable[[RemoteFiles], Awaitable[Any]]) -> Any:
        async def go() -> Any:
            async with open_session(endpoint) as session:
                return await body(RemoteFiles(session))

        return run(go(), 60)

    return call


def escape_paths(host_secret: Any, agent_pid: int | None = None) -> list[str]:
    secret = str(host_secret.file)
    paths = [
        "/app/leak",
        "/app/chain",
        "/app/hop",
        "/app/abs-secret",
        "/app/leakdir/secret.txt",
        "/app/abs-hostdir/secret.txt",
        "/app/updir" + secret,
        "/.." * 20 + secret,
        "/app/../../../../../../.." + secret,
        "/app/updir/../.." + secret,
        "/app/procroot" + secret,
        "/app/proc1root" + secret,
        "/proc/self/root" + secret,
        "/proc/thread-self/root" + secret,
        "/proc/1/root" + secret,
        "/proc/self/cwd" + secret,
        f"/proc/{os.getpid()}/root" + secret,
        "/proc/self/fd/0",
        "/proc/self/fd/3",
    ]
    if agent_pid is not None:
        paths += [f"/proc/{agent_pid}/root" + secret, f"/proc/{agent_pid}/fd/3"]
    return paths


def test_the_escapes_are_real_for_a_naive_open(victim: Any, host_secret: Any) -> None:
    """Opening the same paths naively under /proc/PID/root does reach the host secret."""
    base = Path(f"/proc/{victim.pid}/root")
    secret = str(host_secret.file)
    for path in ("/app/leak", "/app/leakdir/secret.txt", "/proc/self/root" + secret):
        assert (base / path.lstrip("/")).read_bytes() == host_secret.content, path
    # … while the pod's absolute links point into the pod (as they must).
    assert POD_PASSWD_MARK in (base / "app/abs-passwd").read_bytes()


def test_nothing_outside_the_root_is_readable(
    victim: Any, host_secret: Any, agent_for: Any, agent_pid: Any, open_session: Any, run: Any
) -> None:
    endpoint = agent_for(victim.pid)
    secret_stat = host_secret.file.stat()
    paths = escape_paths(host_secret, agent_pid(endpoint))

    async def body(files: RemoteFiles) -> list[str]:
        leaks = []
        for path in paths:
            for name, attempt in (
                ("open", lambda p: files.open(p)),
                ("read_file", lambda p: files.read_file(p)),
                ("stat", lambda p: files.stat(p)),
                ("access", lambda p: files.access(p, os.R_OK)),
                ("statfs", lambda p: files.statfs(p)),
            ):
                try:
                    result = await attempt(path)
                except OSError as err:
                    if err.errno not in REFUSED:
                        leaks.append(f"{name} {path}: unexpected {err!r}")
                    continue
                if name == "open":
                    data = await files.read(result, 0, 1 << 20)
                    await files.close(result)
                    result = data
                if isinstance(result, bytes) and host_secret.content in result:
                    leaks.append(f"{name} {path}: READ THE HOST SECRET")
                elif name == "stat" and (result.ino, result.dev) == (
                    secret_stat.st_ino,
                    secret_stat.st_dev,
                ):
                    leaks.append(f"{name} {path}: STAT OF THE HOST SECRET")
                elif name in ("open", "read_file", "stat", "access"):
                    leaks.append(f"{name} {path}: succeeded ({result!r:.80})")
        return leaks

    async def session_body(files: RemoteFiles) -> list[str]:
        return await body(files)

    async def go() -> list[str]:
        async with open_session(endpoint) as session:
            return await session_body(RemoteFiles(session))

    assert run(go(), 60) == []


def test_symlink_loops_and_magic_links_are_eloop(
    victim: Any, agent_for: Any, agent_pid: Any, open_session: Any, run: Any
) -> None:
    endpoint = agent_for(victim.pid)
    paths = (
        "/app/loop1",
        "/app/self",
        "/app/loop2/x",
        "/app/procroot",
        "/proc/self/root",
        "/proc/self/exe",
        "/proc/thread-self/cwd/etc",
        f"/proc/{victim.pid}/root/etc",
        f"/proc/{agent_pid(endpoint)}/root/etc",
        f"/proc/{agent_pid(endpoint)}/fd/0",
    )

    async def body(files: RemoteFiles) -> dict[str, int | None]:
        results: dict[str, int | None] = {}
        for path in paths:
            try:
                await files.stat(path)
                results[path] = None
            except OSError as err:
                results[path] = err.errno
        return results

    async def go() -> dict[str, int | None]:
        async with open_session(endpoint) as session:
            return await body(RemoteFiles(session))

    results = run(go())
    assert results == dict.fromkeys(paths, errno.ELOOP)


def test_absolute_links_and_dotdot_stay_in_the_pod(
    victim: Any, agent_for: Any, open_session: Any, run: Any
) -> None:
    pod_passwd = (victim.root / "etc/passwd").read_bytes()
    assert pod_passwd != Path("/etc/passwd").read_bytes()
    root_ino = victim.root.stat().st_ino

    async def body(files: RemoteFiles) -> None:
        for path in (
            "/app/abs-passwd",
            "/etc/passwd",
            "/../../../etc/passwd",
            "/app/../../etc/passwd",
        ):
            assert await files.read_file(path) == pod_passwd, path
            handle = await files.open(path)
            assert await files.read(handle, 0, 1 << 16) == pod_passwd, path
            await files.close(handle)
        for path in ("/app/updir", "/..", "/app/updir/../..", "/app/leakdir/../../../.."):
            try:
                assert (await files.stat(path)).ino == root_ino, path
            except FileNotFoundError:
                assert path.startswith("/app/leakdir"), path  # leakdir dangles in the pod
        # The links themselves are readable, as text (that reveals nothing of the host).
        assert (await files.readlink("/app/leak")).endswith("secret.txt")
        assert await files.readlink("/app/abs-passwd") == "/etc/passwd"
        assert stat.S_ISLNK((await files.lstat("/app/leak")).mode)

    files_call(victim, agent_for, open_session, run)(body)


def test_no_host_directory_can_be_listed(
    victim: Any, host_secret: Any, agent_for: Any, open_session: Any, run: Any
) -> None:
    pod_root = set(os.listdir(victim.root))
    secret_dir = str(host_secret.directory)

    async def names(files: RemoteFiles, path: str) -> set[str] | int:
        try:
            return {name for name, _, _ in await files.readdir(path)}
        except OSError as err:
            return err.errno if err.errno is not None else -1

    async def body(files: RemoteFiles) -> None:
        for path in ("/", "/..", "/app/updir", "/app/updir/..", "/" + "../" * 20):
            assert await names(files, path) == pod_root, path
        for path in (
            "/app/leakdir",
            "/app/abs-hostdir",
            secret_dir,
            "/app/updir" + secret_dir,
            "/proc/self/root",
            "/proc/self/root/tmp",
            "/proc/1/root",
        ):
            listing = await names(files, path)
            assert listing in REFUSED, (path, listing)
        tmp = await names(files, "/tmp")
        assert isinstance(tmp, set) and host_secret.directory.name not in tmp
        assert await names(files, "/etc") == set(os.listdir(victim.root / "etc"))
        assert await names(files, "/etc") != set(os.listdir("/etc"))

    files_call(victim, agent_for, open_session, run)(body)


def test_nothing_outside_the_root_is_writable(
    victim: Any, host_secret: Any, agent_for: Any, open_session: Any, run: Any
) -> None:
    secret_dir = str(host_secret.directory)
    create = os.O_CREAT | os.O_WRONLY | os.O_TRUNC

    async def body(files: RemoteFiles) -> list[str]:
        attempts: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("truncating open via leak", lambda: files.open("/app/leak", create)),
            (
                "truncating open via chain",
                lambda: files.open("/app/chain", os.O_WRONLY | os.O_TRUNC),
            ),
            (
                "append via abs-secret",
                lambda: files.open("/app/abs-secret", os.O_WRONLY | os.O_APPEND),
            ),
            ("create in leakdir", lambda: files.open("/app/leakdir/new.txt", create)),
            ("create in abs-hostdir", lambda: files.open("/app/abs-hostdir/new.txt", create)),
            (
                "create via updir",
                lambda: files.open("/app/updir" + secret_dir + "/new.txt", create),
            ),
            ("create via /proc", lambda: files.open("/proc/self/root" + secret_dir + "/n", create)),
            ("mkdir in leakdir", lambda: files.mkdir("/app/leakdir/newdir")),
            ("mkdir via dotdot", lambda: files.mkdir("/.." * 20 + secret_dir + "/newdir")),
            ("rename into leakdir", lambda: files.rename("/app/config.txt", "/app/leakdir/stolen")),
            ("rename out of leakdir", lambda: files.rename("/app/leakdir/secret.txt", "/app/got")),
            ("rename via abs-hostdir", lambda: files.rename("/app/abs-hostdir/secret.txt", "/x")),
            ("truncate via leak", lambda: files.truncate("/app/leak", 0)),
            (
                "truncate via /proc",
                lambda: files.truncate("/proc/1/root" + str(host_secret.file), 0),
            ),
            ("unlink in leakdir", lambda: files.unlink("/app/leakdir/secret.txt")),
            ("unlink via updir", lambda: files.unlink("/app/updir" + str(host_secret.file))),
            ("rmdir via leakdir", lambda: files.rmdir("/app/leakdir/../" + Path(secret_dir).name)),
            ("rmdir of host dir", lambda: files.rmdir(secret_dir)),
        ]
        failures = []
        for description, attempt in attempts:
            try:
                result = await attempt()
            except OSError as err:
                if err.errno not in REFUSED:
                    failures.append(f"{description}: unexpected {err!r}")
            else:
                failures.append(f"{description}: succeeded ({result!r})")
        return failures

    assert files_call(victim, agent_for, open_session, run)(body) == []
    assert (victim.root / "app/config.txt").read_text() == "pod config\n"


def test_an_escaping_link_resolves_inside_the_pod_when_its_target_exists_there(
    victim: Any, host_secret: Any, agent_for: Any, open_session: Any, run: Any
) -> None:
    """Creating the link's target path inside the pod makes the link work — in the pod."""
    inside = victim.root / str(host_secret.directory).lstrip("/")

    async def body(files: RemoteFiles) -> bytes:
        await files.mkdir("/tmp/" + host_secret.directory.name)
        handle = await files.open("/app/leak", os.O_CREAT | os.O_WRONLY, 0o600)
        await files.write(handle, 0, b"written in the pod\n")
        await files.close(handle)
        await files.unlink("/app/leakdir/secret.txt")  # the pod's copy, not the host's
        handle = await files.open("/app/leakdir/secret.txt", os.O_CREAT | os.O_WRONLY)
        await files.write(handle, 0, b"again in the pod\n")
        await files.close(handle)
        data = await files.read_file("/app/chain")
        await files.unlink("/app/leak")  # removes the link only
        return data

    try:
        assert files_call(victim, agent_for, open_session, run)(body) == b"again in the pod\n"
        assert (inside / "secret.txt").read_bytes() == b"again in the pod\n"
        assert not (victim.root / "app/leak").is_symlink()
    finally:
        if inside.is_dir():
            for entry in inside.iterdir():
                entry.unlink()
            inside.rmdir()
        if not (victim.root / "app/leak").is_symlink():
            (victim.root / "app/leak").symlink_to(DEPTH + str(host_secret.file).lstrip("/"))


def test_swapping_a_file_for_an_escaping_link_never_leaks(
    victim: Any, host_secret: Any, agent_for: Any, open_session: Any, run: Any
) -> None:
    """A pod racing the agent (file ↔ escaping symlink, atomically) never wins."""
    app = victim.root / "app"
    (app / "race").write_bytes(b"pod data\n")
    stop = threading.Event()
    swaps = 0

    def swap() -> None:
        nonlocal swaps
        while not stop.is_set():
            (app / "race-link").symlink_to(DEPTH + str(host_secret.file).lstrip("/"))
            os.replace(app / "race-link", app / "race")
            (app / "race-file").write_bytes(b"pod data\n")
            os.replace(app / "race-file", app / "race")
            swaps += 1

    async def body(files: RemoteFiles) -> dict[str, int]:
        outcomes = {"pod data": 0, "refused": 0}
        for _ in range(300):
            for read in (files.read_file, _read_by_handle(files)):
                try:
                    data = await read("/app/race")
                except OSError as err:
                    assert err.errno in REFUSED, err
                    outcomes["refused"] += 1
                else:
                    assert host_secret.content not in data
                    assert data in (b"pod data\n", b"")
                    outcomes["pod data"] += 1
        return outcomes

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    try:
        outcomes = files_call(victim, agent_for, open_session, run)(body)
    finally:
        stop.set()
        swapper.join(5)
        for name in ("race", "race-link", "race-file"):
            (app / name).unlink(missing_ok=True)
    assert swaps > 10
    assert outcomes["pod data"] > 0 and outcomes["refused"] > 0, outcomes


def _read_by_handle(files: RemoteFiles) -> Callable[[str], Awaitable[bytes]]:
    async def read(path: str) -> bytes:
        handle = await files.open(path)
        try:
            return await files.read(handle, 0, 1 << 16)
        finally:
            await files.close(handle)

    return read
