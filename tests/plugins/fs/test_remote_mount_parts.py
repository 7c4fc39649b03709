"""The remote mount's parts without FUSE: symlink confinement, the read-ahead cache, the
attribute cache, and the stale-mount bookkeeping."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirrord_fs.local import mount_lifecycle
from mirrord_fs.local.fuse_operations import AttrCache, confine_link
from mirrord_fs.local.read_cache import (
    CacheEntry,
    ReadCache,
    _FileStorage,
    _MemoryStorage,
    fill_entry,
)
from mirrord_fs.messages import FsStatResult

# -- confine_link -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "target", "shown"),
    [
        # Safe relative targets are shown as stored.
        ("/app/current", "config.yaml", "config.yaml"),
        ("/usr/lib/libc.so", "x86_64/libc.so.6", "x86_64/libc.so.6"),
        ("/app/dot", "./config.yaml", "./config.yaml"),
        ("/usr/bin/tool", "../lib/tool", "../lib/tool"),
        # Absolute targets become relative to the link's directory.
        ("/app/hostname", "/etc/hostname", "../etc/hostname"),
        ("/lib", "/usr/lib", "usr/lib"),
        ("/a/b/c/link", "/a/b/x", "../x"),
        ("/app/root", "/", ".."),
        ("/root-link", "/", "."),
        ("/app/dir", "/etc/", "../etc/"),
        # ".." above the target's root stays at its root.
        ("/app/escape", "../../../../etc/shadow", "../etc/shadow"),
        ("/app/up", "../../..", ".."),
        ("/app/escape", "/../../etc/shadow", "../etc/shadow"),
        ("/a/b/link", "../../../../a/b/c", "c"),
        # ".." after a name is resolved by name (the only way to be sure it stays inside).
        ("/app/x", "sub/../../../etc/passwd", "../etc/passwd"),
        ("/app/empty", "", ""),
    ],
)
def test_confine_link(link: str, target: str, shown: str) -> None:
    assert confine_link(link, target) == shown


def test_confined_links_never_climb_above_the_root() -> None:
    for link in ("/l", "/a/l", "/a/b/c/d/l"):
        depth = link.count("/") - 1
        for target in ("/", "/x/y", "../" * 9, "a/../../../../b", "/../x", "../x/../../y"):
            shown = confine_link(link, target)
            climbs = 0
            position = depth
            for part in shown.split("/"):
                if part == "..":
                    position -= 1
                elif part not in ("", "."):
                    position += 1
                climbs = min(climbs, position)
            assert climbs >= 0, (link, target, shown)
            assert not shown.startswith("/")


# -- the read-ahead cache -----------------------------------------------------------------------


class FakeFiles:
    """The RemoteFiles calls fill_entry makes, against bytes in memory: the stream gives
    ``piece`` bytes at a time (not aligned with the entry's chunks)."""

    def __init__(
        self,
        content: bytes,
        *,
        fail_at: int | None = None,
        mtime_ns: int = 5,
        size: int | None = None,
        piece: int = 700,
    ) -> None:
        self.content = content
        self.mtime_ns = mtime_ns
        self.size = len(content) if size is None else size
        self.fail_at = fail_at
        self.piece = piece
        self.streamed = 0
        #: (offset, bytes streamed when the request came) of each fs.read request.
        self.reads: list[tuple[int, int]] = []
        self.closed = False

    async def file_chunks(self, path: str) -> AsyncIterator[memoryview]:
        if path == "/missing":
            raise OSError(errno.ENOENT, "no such file")
        view = memoryview(self.content)
        for offset in range(0, len(view), self.piece):
            if self.fail_at is not None and offset >= self.fail_at:
                raise OSError(errno.EIO, "disk error in the target")
            await asyncio.sleep(0)
            self.streamed = offset + len(view[offset : offset + self.piece])
            yield view[offset : offset + self.piece]

    async def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
        return 7

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        self.reads.append((offset, self.streamed))
        await asyncio.sleep(0)
        return self.content[offset : offset + size]

    async def lstat(self, path: str) -> FsStatResult:
        return stat_result(self.size, mtime_ns=self.mtime_ns)

    async def close(self, handle: int) -> None:
        self.closed = True


def stat_result(size: int, mtime_ns: int = 5) -> FsStatResult:
    return FsStatResult(
        mode=0o100644,
        ino=1,
        dev=1,
        nlink=1,
        uid=0,
        gid=0,
        size=size,
        atime_ns=0,
        mtime_ns=mtime_ns,
        ctime_ns=0,
        blksize=4096,
        blocks=0,
        rdev=0,
    )


def fill(entry: CacheEntry, files: FakeFiles, parallel: int = 3) -> None:
    entry.begin_fill()
    asyncio.run(fill_entry(entry, files, parallel=parallel))  # type: ignore[arg-type]


def test_entry_fills_from_the_stream_and_serves_any_range() -> None:
    content = os.urandom(10_000)
    entry = CacheEntry(("/f", 5, len(content)), _MemoryStorage(len(content)), chunk_size=1024)
    files = FakeFiles(content)
    fill(entry, files)
    assert entry.complete and entry.reusable
    assert files.reads == []  # the stream brought everything
    assert entry.read(0, 20_000) == content
    assert entry.read(9_000, 5_000) == content[9_000:]
    assert entry.read(10_000, 10) == b""
    assert entry.read(1_500, 100) == content[1_500:1_600]
    assert entry.read_location(1_500, 100) == (None, 100)  # in memory: read() it


def test_a_file_on_disk_is_read_from_its_descriptor(tmp_path: Path) -> None:
    content = os.urandom(5_000)
    entry = CacheEntry(("/f", 5, len(content)), _FileStorage(str(tmp_path)), chunk_size=1024)
    fill(entry, FakeFiles(content))
    fd, length = entry.read_location(4_000, 2_000)
    assert fd is not None and length == 1_000
    assert os.pread(fd, length, 4_000) == content[4_000:]
    entry.close()


def test_the_copy_stays_open_while_writes_are_queued(tmp_path: Path) -> None:
    """The writer thread may still hold a chunk when the last reader leaves: the file is
    closed after that write, which finds the entry abandoned and writes nothing."""
    entry = CacheEntry(("/f", 5, 10), _FileStorage(str(tmp_path)), chunk_size=4)
    entry.begin_fill()
    entry.queue_append()
    entry.close()  # abandoned: the last user left
    entry.end_fill()
    assert not entry._closed
    assert entry.append(b"0123") is False
    assert entry._closed


@pytest.mark.parametrize(
    ("offset", "requested"),
    [
        (60_000, [58 * 1024]),  # far ahead: its chunk comes by request, before the stream's
        (3_000, []),  # near the stream: it waits for the stream
    ],
)
def test_a_read_far_ahead_is_fetched_first(offset: int, requested: list[int]) -> None:
    content = os.urandom(64 * 1024)
    entry = CacheEntry(("/f", 5, len(content)), _MemoryStorage(len(content)), chunk_size=1024)
    files = FakeFiles(content)
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(entry.read(offset, 100, 10)))
    reader.start()
    while requested and not entry._demand:  # the reader has asked for its chunk
        threading.Event().wait(0.01)
    fill(entry, files, parallel=1)
    reader.join()
    assert result == [content[offset : offset + 100]]
    assert [at for at, _ in files.reads] == requested
    assert all(streamed < at for at, streamed in files.reads), "the stream got there first"
    assert entry.complete and entry.reusable


def test_a_failed_fetch_gives_readers_the_targets_errno() -> None:
    content = os.urandom(8192)
    entry = CacheEntry(("/f", 5, len(content)), _MemoryStorage(len(content)), chunk_size=1024)
    fill(entry, FakeFiles(content, fail_at=4096))
    assert entry.failed and not entry.reusable
    with pytest.raises(OSError) as caught:
        entry.read(5000, 10)
    assert caught.value.errno == errno.EIO
    missing = CacheEntry(("/missing", 5, 10), _MemoryStorage(10))
    fill(missing, FakeFiles(b""))
    with pytest.raises(FileNotFoundError):
        missing.read(0, 10)


def test_a_file_that_shrank_while_fetched_is_not_reused() -> None:
    content = os.urandom(3000)
    entry = CacheEntry(("/f", 5, 5000), _MemoryStorage(5000), chunk_size=1024)
    fill(entry, FakeFiles(content, size=5000))
    assert entry.complete and not entry.reusable
    assert entry.read(0, 10_000) == content


def test_a_file_that_grew_or_changed_while_fetched_is_not_reused() -> None:
    content = os.urandom(6000)
    grown = CacheEntry(("/f", 5, 5000), _MemoryStorage(5000), chunk_size=1024)
    fill(grown, FakeFiles(content, size=5000))
    assert grown.complete and not grown.reusable
    assert grown.read(0, 10_000) == content[:5000]
    touched = CacheEntry(("/f", 5, 6000), _MemoryStorage(6000), chunk_size=1024)
    fill(touched, FakeFiles(content, mtime_ns=6))  # the mtime moved on meanwhile
    assert touched.complete and not touched.reusable
    assert touched.read(0, 10_000) == content


def test_cache_keys_lru_budgets_and_release() -> None:
    cache = ReadCache(memory_threshold=100, memory_budget=250, disk_budget=1000)
    first, fetch = cache.acquire(("/a", 1, 100))
    assert fetch
    # Not fetched, nobody uses it: dropped at release (a huge file opened and closed).
    cache.release(first)
    assert len(cache) == 0

    entries = []
    for name in ("/a", "/b"):
        entry, _ = cache.acquire((name, 1, 100))
        fill(entry, FakeFiles(b"x" * 100, mtime_ns=1))
        cache.release(entry)
        entries.append(entry)
    again, fetch = cache.acquire(("/a", 1, 100))
    assert again is entries[0] and not fetch and cache.hits == 1
    cache.release(again)
    # Another version of /a is another key.
    changed, fetch = cache.acquire(("/a", 2, 100))
    assert changed is not entries[0] and fetch
    fill(changed, FakeFiles(b"y" * 100, mtime_ns=2))
    cache.release(changed)
    # 300 bytes > 250: the least recently used (/b) went.
    keys = {entry.key for entry in cache.entries()}
    assert keys == {("/a", 1, 100), ("/a", 2, 100)}
    cache.invalidate("/a")
    assert len(cache) == 0

    big, _ = cache.acquire(("/dir/big", 1, 500))
    fill(big, FakeFiles(b"z" * 500, mtime_ns=1))  # above the memory threshold: a temporary file
    cache.release(big)
    assert big.read(0, 3) == b"zzz"
    cache.invalidate("/dir")
    assert len(cache) == 0


# -- the attribute cache ------------------------------------------------------------------------


def test_attr_cache_ttl_negative_entries_and_invalidation(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("mirrord_fs.local.fuse_operations.time.monotonic", lambda: now[0])
    cache = AttrCache(ttl=1.0, negative_ttl=0.5)
    cache.put("/app/a", stat_result(1))
    cache.put("/app/missing", None)
    cache.put("/app", stat_result(4096))
    cache.put("/app/sub/deep", stat_result(2))
    assert cache.get("/app/a") == (True, stat_result(1))
    assert cache.get("/app/missing") == (True, None)
    now[0] += 0.6
    assert cache.get("/app/missing") == (False, None)
    assert cache.get("/app/a")[0]
    cache.invalidate("/app/a")
    assert not cache.get("/app/a")[0]
    assert not cache.get("/app")[0]  # the parent's mtime changed too
    cache.invalidate("/app/sub", tree=True)
    assert not cache.get("/app/sub/deep")[0]
    cache.put("/x", stat_result(1))
    now[0] += 1.1
    assert not cache.get("/x")[0]


# -- stale mounts -------------------------------------------------------------------------------


def test_stale_directories_of_dead_owners_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "mounts"
    live = mount_lifecycle.MountDirectory(root, "live", None)
    assert json.loads((live.directory / "owner.json").read_text())["pid"] == os.getpid()
    assert live.mountpoint.is_dir() and oct(live.directory.stat().st_mode & 0o777) == "0o700"
    dead = root / "dead"
    (dead / "mnt").mkdir(parents=True)
    (dead / "owner.json").write_text(
        json.dumps({"pid": os.getpid(), "start_time": 1, "mountpoint": str(dead / "mnt")})
    )
    debris = root / "debris"
    debris.mkdir()
    cleaned = mount_lifecycle.clean_stale_mounts(root)
    assert sorted(cleaned) == [str(dead / "mnt"), str(debris / "mnt")]
    assert live.directory.exists() and not dead.exists() and not debris.exists()
    live.remove()
    assert not live.directory.exists()


def test_an_owner_is_one_process_not_a_recycled_pid() -> None:
    start = mount_lifecycle.process_start_time(os.getpid())
    assert start is not None
    assert mount_lifecycle.MountOwner(os.getpid(), start, "/x").alive()
    assert not mount_lifecycle.MountOwner(os.getpid(), start + 1, "/x").alive()
    assert mount_lifecycle.process_start_time(2**22 + 12345) is None
