"""The per-session FUSE mount of a sandbox pod's root, used by real programs.

Each test spawns a real agent for the web pod through the target plugin's hooks and mounts
the pod's root with :class:`RemoteMount` (state under the test's tmp dir). Needs root and
/dev/fuse, as ``mirrord run`` does; CI has both.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrord_core.config import resolve
from mirrord_core.plugin_manager import get_plugins
from mirrord_core.sandbox import Sandbox
from mirrord_core.sandbox.demo import demo_pods
from mirrord_core.session import Session
from mirrord_core.target_model import AgentEndpoint
from mirrord_fs.local import mount_lifecycle
from mirrord_fs.local.remote_mount import RemoteMount

CONFIG = b"service: web\nport: 8080\nfeature_flags: [checkout-v2]\n"
BIG_SIZE = 32 * 1024 * 1024
BUSYBOX = "/usr/bin/busybox"
HOST_SECRET_DIR = "/tmp/mirrord-remote-mount-host-secret"
HOST_SECRET = b"HOST SECRET - must never be read through the mount\n"
POD_DECOY = b"the pod's own file at the same path\n"


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """The demo pods; the web pod's root gets a big file and symlinks of every kind."""
    host_secret = Path(HOST_SECRET_DIR)
    host_secret.mkdir(exist_ok=True)
    (host_secret / "secret.txt").write_bytes(HOST_SECRET)
    try:
        with Sandbox.create(demo_pods()) as sb:
            root = sb.pod("web").root
            (root / "app" / "big.bin").write_bytes(os.urandom(BIG_SIZE))
            # The same path as the host's secret, inside the pod.
            decoy = root / HOST_SECRET_DIR.lstrip("/") / "secret.txt"
            decoy.parent.mkdir(parents=True)
            decoy.write_bytes(POD_DECOY)
            links = {
                "current": "config.yaml",
                "data-link": "data",
                "abs-hostname": "/etc/hostname",
                "escape-abs": f"{HOST_SECRET_DIR}/secret.txt",
                "escape-rel": "../" * 12 + f"{HOST_SECRET_DIR.lstrip('/')}/secret.txt",
                "root-link": "/",
                "up-link": "../../../../..",
                "dangling": "/no/such/file",
            }
            for name, target in links.items():
                os.symlink(target, root / "app" / name)
            yield sb
    finally:
        shutil.rmtree(host_secret, ignore_errors=True)


@pytest.fixture
def agent(sandbox: Sandbox) -> Iterator[AgentEndpoint]:
    """A real agent for the web pod, spawned as ``mirrord run`` does; released after.

    The agent ends when its last client leaves: an idle session keeps it up between the
    test's mounts.
    """
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


def fusermount_children() -> list[int]:
    """This process's ``fusermount3`` children (libfuse's auto-unmount helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            command = (entry / "comm").read_text().strip()
        except (OSError, ValueError):
            continue
        if int(fields[1]) == os.getpid() and command == "fusermount3":
            found.append(int(entry.name))
    return found


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    """The mounts' state root for this test; nothing may stay mounted under it, and no
    auto-unmount helper may outlive its mount."""
    root = tmp_path / "mounts"
    yield root
    assert fusermount_children() == []
    leftovers = [p for p in mount_lifecycle.mounted_paths() if p.startswith(str(root))]
    for path in leftovers:
        mount_lifecycle.force_unmount(path)
    assert not leftovers, f"mounts left behind: {leftovers}"
    assert not list(root.rglob("owner.json")), "mount directories left behind"


MountFactory = Callable[..., RemoteMount]


@pytest.fixture
def mount(agent: AgentEndpoint, state_root: Path) -> Iterator[MountFactory]:
    """``mount(writable=False, **options)``: the web pod's root, closed after the test."""
    mounts: list[RemoteMount] = []

    def start(**options: Any) -> RemoteMount:
        options.setdefault("state_root", state_root)
        started = RemoteMount.for_endpoint(agent, **options)
        mounts.append(started)
        return started

    yield start
    for started in mounts:
        started.close()


def run(*argv: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.fspath(a) for a in argv], capture_output=True, text=True, timeout=60, check=check
    )


def agent_bytes_read(endpoint: AgentEndpoint) -> int:
    """Bytes the connections to the agent received from it so far (the kernel's TCP
    counters, as ``ss`` shows them: the agent splices files into its sockets, so its own
    read counters do not see them)."""
    shown = subprocess.run(
        ["ss", "-tinH", "dst", f"{endpoint.host}:{endpoint.port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(count) for count in re.findall(r"bytes_received:(\d+)", shown))


def pod_root(sandbox: Sandbox) -> Path:
    return sandbox.pod("web").root


# -- reading ------------------------------------------------------------------------------------


def test_coreutils_and_busybox_read_the_pod_root(sandbox: Sandbox, mount: MountFactory) -> None:
    m = mount()
    config = m.path / "app" / "config.yaml"
    assert run("cat", config).stdout.encode() == CONFIG
    assert run(BUSYBOX, "cat", config).stdout.encode() == CONFIG
    assert m.local_path("/app/../app/./config.yaml") == config

    listing = run("ls", "-1A", m.path / "app").stdout.split()
    assert sorted(listing) == sorted(os.listdir(pod_root(sandbox) / "app"))
    assert "orders.csv" in run(BUSYBOX, "ls", m.path / "app" / "data").stdout

    expected = os.stat(pod_root(sandbox) / "app" / "config.yaml")
    shown = run("stat", "-c", "%s %a %F %u %Y", config).stdout.split()
    assert shown == [
        str(expected.st_size),
        f"{stat.S_IMODE(expected.st_mode):o}",
        "regular",
        "file",
        str(expected.st_uid),
        str(int(expected.st_mtime)),
    ]
    assert run("stat", "-c", "%F", m.path / "app" / "data").stdout.strip() == "directory"

    # Relative links without ".." are shown as stored, and followed.
    assert run("readlink", m.path / "app" / "current").stdout.strip() == "config.yaml"
    assert run("cat", m.path / "app" / "current").stdout.encode() == CONFIG
    assert "orders.csv" in run("ls", m.path / "app" / "data-link/").stdout
    # The raw target, for a process's readlink, comes from the API.
    assert m.readlink("/app/abs-hostname") == "/etc/hostname"

    # The pod's own /etc/hostname, not this machine's.
    assert run("cat", m.path / "etc" / "hostname").stdout.strip() == "web"
    assert run("df", m.path).returncode == 0
    assert os.statvfs(m.path).f_bsize > 0


def test_big_file_read_twice_second_read_is_local(
    sandbox: Sandbox, mount: MountFactory, agent: AgentEndpoint
) -> None:
    m = mount()
    big = m.path / "app" / "big.bin"
    expected = hashlib.sha256((pod_root(sandbox) / "app" / "big.bin").read_bytes()).hexdigest()

    before = agent_bytes_read(agent)
    assert run("sha256sum", big).stdout.split()[0] == expected
    first = agent_bytes_read(agent) - before
    # The agent read the file once: 32 MiB (plus small requests).
    assert BIG_SIZE <= first < BIG_SIZE + 1024 * 1024, first
    assert m.stats.fetches == 1

    before = agent_bytes_read(agent)
    assert run("sha256sum", big).stdout.split()[0] == expected
    assert agent_bytes_read(agent) - before < 64 * 1024, "second read went to the agent"
    assert m.stats.fetches == 1
    assert m.stats.cache_hits == 1
    served = m.stats.cached_bytes_served

    # Drop the kernel's pages of the file: now our own cache serves the reads.
    with open(big, "rb") as file:
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    before = agent_bytes_read(agent)
    served = m.stats.cached_bytes_served
    with open(big, "rb") as file:
        data = file.read()
    assert hashlib.sha256(data).hexdigest() == expected
    assert agent_bytes_read(agent) - before < 64 * 1024, "third read went to the agent"
    assert m.stats.cached_bytes_served - served == BIG_SIZE
    assert m.stats.fetches == 1
    assert m.stats.cache_hits == 3  # the second read, the fadvise, the third read
    # A 32 MiB file is kept in a temporary file, not in memory; it stays cached.
    assert [entry.size for entry in m.cache.entries()].count(BIG_SIZE) == 1


def test_random_access_reads_and_a_changed_file(sandbox: Sandbox, mount: MountFactory) -> None:
    m = mount()
    host = pod_root(sandbox) / "app" / "big.bin"
    content = host.read_bytes()
    with open(m.path / "app" / "big.bin", "rb") as file:
        # A read far ahead is fetched before the rest of the file.
        file.seek(BIG_SIZE - 5000)
        assert file.read(5000) == content[-5000:]
        file.seek(12345)
        assert file.read(100) == content[12345:12445]

    changed = pod_root(sandbox) / "app" / "changing.txt"
    changed.write_bytes(b"version one\n")
    assert run("cat", m.path / "app" / "changing.txt").stdout == "version one\n"
    changed.write_bytes(b"version two, longer\n")
    os.utime(changed, ns=(1, 2_000_000_000))
    time.sleep(1.2)  # the attribute cache's TTL: changes by others are seen after it
    assert run("cat", m.path / "app" / "changing.txt").stdout == "version two, longer\n"


def test_a_session_on_the_callers_event_loop(agent: AgentEndpoint, state_root: Path) -> None:
    async def main() -> None:
        session = await Session.connect(agent)
        try:
            m = await RemoteMount.start_async(session, state_root=state_root, timeout=20)
            try:
                # Other threads use the mount while this loop answers it.
                data = await asyncio.to_thread((m.path / "app" / "config.yaml").read_bytes)
                assert data == CONFIG
                # This loop's own thread must not block on the mount: it fails at once.
                started = time.monotonic()
                with pytest.raises(OSError) as caught:
                    (m.path / "app" / "not-looked-up-before").stat()
                assert caught.value.errno == errno.EDEADLK
                assert time.monotonic() - started < 10
            finally:
                await asyncio.to_thread(m.close)
        finally:
            await session.close()

    asyncio.run(asyncio.wait_for(main(), 60))


# -- errors --------------------------------------------------------------------------------------


def test_errors_are_the_targets_errno(sandbox: Sandbox, mount: MountFactory) -> None:
    m = mount()
    missing = run("cat", m.path / "app" / "missing.txt", check=False)
    assert missing.returncode == 1
    assert "No such file or directory" in missing.stderr
    with pytest.raises(FileNotFoundError):
        (m.path / "no" / "such" / "dir").stat()
    with pytest.raises(NotADirectoryError):
        (m.path / "app" / "config.yaml" / "x").stat()
    with pytest.raises(IsADirectoryError):
        (m.path / "app").read_bytes()
    with pytest.raises(FileNotFoundError):
        (m.path / "app" / "dangling").read_bytes()
    assert os.readlink(m.path / "app" / "dangling") == "../no/such/file"
    # A negative answer is cached briefly, a file created by the pod shows up after it.
    late = pod_root(sandbox) / "app" / "late.txt"
    with pytest.raises(FileNotFoundError):
        (m.path / "app" / "late.txt").stat()
    late.write_text("here now\n")
    time.sleep(1.2)
    assert (m.path / "app" / "late.txt").read_text() == "here now\n"


# -- security -----------------------------------------------------------------------------------


def test_symlinks_that_escape_resolve_inside_the_pod(sandbox: Sandbox, mount: MountFactory) -> None:
    m = mount()
    app = m.path / "app"
    for name in ("escape-abs", "escape-rel"):
        assert (app / name).read_bytes() == POD_DECOY, name
        assert run("cat", app / name).stdout.encode() == POD_DECOY
        assert run(BUSYBOX, "cat", app / name).stdout.encode() == POD_DECOY
    # Absolute targets point into the pod's root.
    assert run("cat", app / "abs-hostname").stdout.strip() == "web"
    assert os.readlink(app / "abs-hostname") == "../etc/hostname"
    # A link to the pod's "/" is the mount's root, and ".." above it stays there.
    assert os.path.realpath(app / "root-link") == str(m.path)
    assert os.path.realpath(app / "up-link") == str(m.path)
    assert (app / "root-link" / "etc" / "hostname").read_text().strip() == "web"
    assert run(
        "cat", app / "up-link" / HOST_SECRET_DIR.lstrip("/") / "secret.txt"
    ).stdout.encode() == (POD_DECOY)
    for path in (app / "escape-abs", app / "escape-rel", app / "root-link", app / "up-link"):
        resolved = os.path.realpath(path)
        assert resolved == str(m.path) or resolved.startswith(f"{m.path}/"), (path, resolved)


def test_device_nodes_and_setuid_do_not_act_on_this_machine(
    sandbox: Sandbox, mount: MountFactory
) -> None:
    m = mount()
    # nodev: the pod's device nodes cannot be opened through the mount.
    with pytest.raises(PermissionError):
        (m.path / "dev" / "null").open("rb")
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    options = next(line.split()[5] for line in mountinfo if f" {m.path} " in line)
    assert {"nosuid", "nodev", "ro"} <= set(options.split(","))


# -- writing ------------------------------------------------------------------------------------


def test_write_mode_creates_renames_and_deletes_in_the_pod(
    sandbox: Sandbox, mount: MountFactory
) -> None:
    m = mount(writable=True)
    root = pod_root(sandbox)
    work = m.path / "tmp" / "work"
    run("mkdir", work)
    assert (root / "tmp" / "work").is_dir()

    run("sh", "-c", f"echo first line > {work}/notes.txt && echo second >> {work}/notes.txt")
    assert (root / "tmp" / "work" / "notes.txt").read_text() == "first line\nsecond\n"
    assert run("cat", work / "notes.txt").stdout == "first line\nsecond\n"

    run("mv", work / "notes.txt", work / "renamed.txt")
    assert not (root / "tmp" / "work" / "notes.txt").exists()
    assert (root / "tmp" / "work" / "renamed.txt").read_text() == "first line\nsecond\n"
    assert run("cat", work / "renamed.txt").stdout == "first line\nsecond\n"

    run("chmod", "600", work / "renamed.txt")
    assert stat.S_IMODE((root / "tmp" / "work" / "renamed.txt").stat().st_mode) == 0o600
    run("touch", "-d", "2001-02-03 04:05:06 UTC", work / "renamed.txt")
    assert (root / "tmp" / "work" / "renamed.txt").stat().st_mtime == 981173106
    # Only the access time: the modification time is left as it was (UTIME_OMIT).
    run("touch", "-a", "-d", "2002-02-03 04:05:06 UTC", work / "renamed.txt")
    times = (root / "tmp" / "work" / "renamed.txt").stat()
    assert (times.st_atime, times.st_mtime) == (1012709106, 981173106)
    run("touch", work / "new-empty")
    assert (root / "tmp" / "work" / "new-empty").stat().st_size == 0
    run("truncate", "-s", "5", work / "renamed.txt")
    assert (root / "tmp" / "work" / "renamed.txt").read_bytes() == b"first"
    assert (work / "renamed.txt").read_bytes() == b"first"

    # Overwriting a file that was read (and cached) shows the new content.
    (work / "renamed.txt").write_bytes(b"rewritten\n")
    assert (work / "renamed.txt").read_bytes() == b"rewritten\n"

    with open(work / "open-then-unlinked", "w+b") as file:
        file.write(b"still readable")
        file.flush()
        os.fsync(file.fileno())
        os.unlink(work / "open-then-unlinked")
        file.seek(0)
        assert file.read() == b"still readable"
    assert not any(p.name.startswith(".fuse_hidden") for p in (root / "tmp" / "work").iterdir())

    failed = run("rmdir", work, check=False)
    assert failed.returncode != 0 and "not empty" in failed.stderr
    with pytest.raises(FileExistsError):
        (work / "renamed.txt").mkdir()
    run("rm", work / "renamed.txt", work / "new-empty")
    run("rmdir", work)
    assert not (root / "tmp" / "work").exists()


def test_read_only_mode_refuses_every_write(sandbox: Sandbox, mount: MountFactory) -> None:
    m = mount(writable=False)
    root = pod_root(sandbox)
    before = sorted(os.listdir(root / "app"))
    config = m.path / "app" / "config.yaml"
    for argv in (
        ["touch", m.path / "app" / "new"],
        ["mkdir", m.path / "app" / "dir"],
        ["rm", config],
        ["mv", config, m.path / "app" / "moved"],
        ["chmod", "777", config],
        ["sh", "-c", f"echo x >> {config}"],
        ["truncate", "-s", "0", config],
    ):
        result = run(*argv, check=False)
        assert result.returncode != 0, argv
        assert "Read-only file system" in result.stderr, (argv, result.stderr)
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
        with pytest.raises(OSError) as caught:
            os.open(config, flags)
        assert caught.value.errno == errno.EROFS
    assert not os.access(config, os.W_OK)
    with pytest.raises(OSError) as caught:
        os.open(m.path / "app" / "x", os.O_CREAT | os.O_WRONLY)
    assert caught.value.errno == errno.EROFS
    assert sorted(os.listdir(root / "app")) == before
    assert (root / "app" / "config.yaml").read_bytes() == CONFIG


# -- lifecycle ----------------------------------------------------------------------------------


def test_close_and_exceptions_remove_the_mount(mount: MountFactory, state_root: Path) -> None:
    m = mount()
    path = m.path
    assert mount_lifecycle.is_mounted(path)
    assert len(fusermount_children()) == 1  # auto_unmount's helper, for a SIGKILL
    m.close()
    m.close()
    assert not mount_lifecycle.is_mounted(path)
    assert not path.exists()
    assert fusermount_children() == []

    with pytest.raises(RuntimeError, match="boom"), mount() as inner:
        inner_path = inner.path
        assert (inner_path / "app" / "config.yaml").read_bytes() == CONFIG
        raise RuntimeError("boom")
    assert not mount_lifecycle.is_mounted(inner_path)
    assert not inner_path.exists()


def test_close_with_a_file_still_open_detaches(mount: MountFactory) -> None:
    m = mount()
    file = open(m.path / "app" / "config.yaml", "rb")  # noqa: SIM115 - held across close
    try:
        cwd_holder = subprocess.Popen(["sleep", "60"], cwd=m.path / "app")
        try:
            m.close()
            assert not mount_lifecycle.is_mounted(m.path)
        finally:
            cwd_holder.kill()
            cwd_holder.wait()
    finally:
        file.close()


OWNER_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from mirrord_core.target_model import AgentEndpoint
    from mirrord_fs.local.remote_mount import RemoteMount
    host, port, state_root, auto_unmount = sys.argv[1:5]
    endpoint = AgentEndpoint(host=host, port=int(port), token=os.environ["AGENT_TOKEN"])
    mount = RemoteMount.for_endpoint(
        endpoint, state_root=state_root, auto_unmount=auto_unmount == "1"
    )
    print(mount.path, flush=True)
    time.sleep(120)
    """
)


def start_owner(
    agent: AgentEndpoint, state_root: Path, *, auto_unmount: bool
) -> tuple[subprocess.Popen[str], Path]:
    """Another process owning a mount of the pod (as a `mirrord run` would)."""
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            OWNER_SCRIPT,
            agent.host,
            str(agent.port),
            str(state_root),
            "1" if auto_unmount else "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "AGENT_TOKEN": agent.token},
    )
    assert owner.stdout is not None
    path = Path(owner.stdout.readline().strip())
    assert mount_lifecycle.is_mounted(path), path
    assert (path / "app" / "config.yaml").read_bytes() == CONFIG
    return owner, path


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_stale_mount_of_a_sigkilled_owner_is_cleaned_at_the_next_start(
    agent: AgentEndpoint, mount: MountFactory, state_root: Path
) -> None:
    keeper = mount(state_root=state_root / "keeper")
    owner, stale = start_owner(agent, state_root, auto_unmount=False)
    owner.kill()
    owner.wait()
    # Nobody unmounted it: a dead FUSE mount stays, and using it fails.
    assert mount_lifecycle.is_mounted(stale)
    with pytest.raises(OSError) as caught:
        os.listdir(stale / "app")
    assert caught.value.errno == errno.ENOTCONN

    fresh = mount()
    assert not mount_lifecycle.is_mounted(stale)
    assert not stale.parent.exists()
    assert (fresh.path / "app" / "config.yaml").read_bytes() == CONFIG
    assert mount_lifecycle.is_mounted(keeper.path)


def test_sigkilled_owner_with_auto_unmount_leaves_nothing_mounted(
    agent: AgentEndpoint, state_root: Path
) -> None:
    owner, path = start_owner(agent, state_root, auto_unmount=True)
    owner.kill()
    owner.wait()
    # libfuse's helper notices the owner is gone and unmounts.
    assert wait_until(lambda: not mount_lifecycle.is_mounted(path))
    assert mount_lifecycle.clean_stale_mounts(state_root) == [str(path)]
    assert not path.parent.exists()


def test_sigterm_of_the_owner_unmounts(agent: AgentEndpoint, state_root: Path) -> None:
    owner, path = start_owner(agent, state_root, auto_unmount=False)
    owner.send_signal(signal.SIGTERM)
    assert owner.wait(timeout=30) == -signal.SIGTERM
    assert not mount_lifecycle.is_mounted(path)
    assert not path.parent.exists()


def test_a_live_owners_mount_is_left_alone(
    agent: AgentEndpoint, mount: MountFactory, state_root: Path
) -> None:
    owner, path = start_owner(agent, state_root, auto_unmount=True)
    try:
        mine = mount()
        assert mount_lifecycle.is_mounted(path)
        assert mount_lifecycle.clean_stale_mounts(state_root) == []
        mine.close()
    finally:
        owner.terminate()
        owner.wait(timeout=30)
    assert not mount_lifecycle.is_mounted(path)
