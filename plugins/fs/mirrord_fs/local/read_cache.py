"""Whole-file read-ahead of remote files into a local cache.

A file opened read-only is fetched once, whole, on the session's event loop
(:func:`fill_entry`) into a :class:`CacheEntry`: RAM for small files, an anonymous
temporary file for large ones. The bytes come in order through one ``fs.read_file``
stream, written where they belong as they arrive (no copies on the way: the stream hands
out views of its receive buffers). FUSE threads wait only for the bytes they need; a read
far ahead of the stream has its chunks fetched at once with ``fs.read`` requests. Entries
are keyed by ``(path, mtime_ns, size)``, so a second open of an unchanged file is served
locally, and any change on the target makes a new key.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import functools
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator

from mirrord_fs.local.remote_files import RemoteFiles

log = logging.getLogger("mirrord.fs.cache")

#: (path in the target, mtime in ns, size): one version of one file.
CacheKey = tuple[str, int, int]

#: Unit of bookkeeping, and of the ``fs.read`` requests that fetch what a read far ahead of
#: the stream needs. (The stream itself carries 1 MiB frames: on a busy 2-CPU machine it
#: moved 64 MiB at ~1500 MiB/s where eight 512 KiB requests in flight managed ~350.)
CHUNK_SIZE = 512 * 1024
#: ``fs.read`` requests in flight for reads far ahead of the stream.
PARALLEL_READS = 8
#: A read starting this many chunks or more beyond what the stream has delivered has its
#: chunks fetched by requests; nearer ones wait for the stream, which gets there first.
DEMAND_AHEAD = 8
#: Stream chunks handed to the writer thread and not written yet, at most: the event loop
#: receives the next chunk while the previous ones are written into the copy.
WRITES_IN_FLIGHT = 2
#: Writes stream chunks into the copies, in the order they arrived (one thread).
_WRITER = concurrent.futures.ThreadPoolExecutor(1, "mirrord-fs-cache-writer")


class _Storage:
    """Where an entry's bytes live."""

    #: A descriptor holding the bytes at their offsets (for reads that need no copy in
    #: Python: FUSE splices from it), or ``None`` when they live in memory.
    fd: int | None = None

    def write(self, offset: int, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def read(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Release the memory or the temporary file."""


class _MemoryStorage(_Storage):
    def __init__(self, size: int) -> None:
        self._buffer = bytearray(size)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self._buffer[offset : offset + len(data)] = data

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self._buffer[offset : offset + size])

    def close(self) -> None:
        self._buffer = bytearray()


class _FileStorage(_Storage):
    def __init__(self, directory: str | None) -> None:
        # O_TMPFILE where supported: nameless, so nothing is left behind even on SIGKILL.
        self._file = tempfile.TemporaryFile(prefix="mirrord-fs-", dir=directory)  # noqa: SIM115
        self.fd = self._file.fileno()

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)  # type: ignore[arg-type]
            view = view[written:]
            offset += written

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)  # type: ignore[arg-type]

    def close(self) -> None:
        self._file.close()


class CacheEntry:
    """One version of one file, fetched in chunks; readable while it fills.

    Written by the fill task on the event loop, read by FUSE threads, which block in
    :meth:`read` until the chunks they need are there.
    """

    def __init__(self, key: CacheKey, storage: _Storage, chunk_size: int = CHUNK_SIZE) -> None:
        self.key = key
        self.path, _, self.size = key
        self.chunk_size = chunk_size
        self._storage = storage
        self._chunks = max(1, -(-self.size // chunk_size))
        self._have = bytearray(self._chunks)
        self._missing = self._chunks if self.size else 0
        #: Bytes the stream has written so far, from offset 0.
        self._streamed = 0
        self._claimed = bytearray(self._chunks)
        self._demand: collections.deque[int] = collections.deque()
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        # Readers waiting for the stream, each on its own condition (of the same lock) with
        # the offset it waits for: the stream wakes only those it reached, not every
        # waiting FUSE thread at every chunk (each wake-up takes the GIL).
        self._waiters: dict[threading.Condition, int] = {}
        self._error: OSError | None = None
        #: Where the file really ended, if it was shorter than its size said.
        self._end = self.size
        #: False once the file changed while it was fetched: not served to later opens.
        self.reusable = True
        #: Open handles reading this entry (the cache's own reference not counted).
        self.users = 0
        self.cached = False
        self.fill: concurrent.futures.Future[None] | None = None
        #: Set by the fetch while it runs: wakes its request fetchers for demanded chunks.
        self.on_demand: Callable[[], None] | None = None
        # The storage is closed once nobody reads it and no fetch writes into it.
        self._filling = False
        self._writes = 0
        self._abandoned = False
        self._closed = False

    # -- state ------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """Every byte is here."""
        with self._condition:
            return self._missing == 0 and self._error is None

    @property
    def failed(self) -> bool:
        with self._condition:
            return self._error is not None

    # -- reader side (FUSE threads) ---------------------------------------------------------

    def read(self, offset: int, size: int, timeout: float | None = None) -> bytes:
        """Up to ``size`` bytes at ``offset``, waiting until they are fetched.

        Raises the fetch's :class:`OSError`, or ETIMEDOUT after ``timeout`` seconds.
        """
        length = self.wait(offset, size, timeout)
        return self._storage.read(offset, length) if length else b""

    def read_location(
        self, offset: int, size: int, timeout: float | None = None
    ) -> tuple[int | None, int]:
        """``(fd, length)``: where up to ``size`` bytes at ``offset`` are, once fetched —
        at that offset of ``fd``, or ``(None, length)`` when they are in memory (use
        :meth:`read`). The descriptor stays open while the entry has users."""
        return self._storage.fd, self.wait(offset, size, timeout)

    def wait(self, offset: int, size: int, timeout: float | None = None) -> int:
        """Wait until the bytes at ``offset`` (up to ``size``) are here; how many there are.

        Raises the fetch's :class:`OSError`, or ETIMEDOUT after ``timeout`` seconds.
        """
        with self._condition:
            end = min(offset + size, self._end)
            if end <= offset:
                return 0
            wanted = range(offset // self.chunk_size, (end - 1) // self.chunk_size + 1)
            if end > self._streamed and not all(self._have[i] for i in wanted):
                # Far ahead of the stream: fetch these chunks before the rest of the file.
                ahead = self._streamed // self.chunk_size + DEMAND_AHEAD
                demanded = [
                    index
                    for index in wanted
                    if index >= ahead and not self._have[index] and not self._claimed[index]
                ]
                if demanded:
                    self._demand.extend(demanded)
                    if self.on_demand is not None:
                        self.on_demand()
            waiter = threading.Condition(self._lock)
            self._waiters[waiter] = end
            try:
                ready = waiter.wait_for(
                    lambda: (
                        self._error is not None
                        or self._abandoned
                        or self._streamed >= end
                        or all(self._have[i] for i in wanted)
                    ),
                    timeout,
                )
            finally:
                del self._waiters[waiter]
            if not ready:
                raise OSError(errno.ETIMEDOUT, "timed out waiting for the remote file")
            if self._error is not None:
                raise self._error
            if self._abandoned:
                # Released while a read was still in flight (kernel read-ahead): nobody
                # wants its answer.
                raise OSError(errno.EIO, "the file was closed")
            return max(0, min(offset + size, self._end) - offset)

    # -- filler side (event loop) ------------------------------------------------------------

    def begin_fill(self) -> None:
        """A fetch is about to write into this entry (call before scheduling it)."""
        with self._condition:
            self._filling = True

    def end_fill(self) -> None:
        """The fetch is over (called by :func:`fill_entry`, whatever happened)."""
        with self._condition:
            self._filling = False
            if self._missing and self._error is None:
                self._error = OSError(errno.EIO, "the fetch ended early")
                self.reusable = False
                self._wake_all()
            close = self._abandoned and not self._writes
        if close:
            self._close_storage()

    def claim(self) -> int | None:
        """The next demanded chunk to fetch by request; ``None`` when there is none (or the
        entry was abandoned)."""
        with self._condition:
            if self._abandoned or self._error is not None:
                return None
            while self._demand:
                index = self._demand.popleft()
                if not self._claimed[index] and not self._have[index]:
                    self._claimed[index] = 1
                    return index
            return None

    def queue_append(self) -> None:
        """An :meth:`append` is about to be scheduled (the storage stays open for it)."""
        with self._condition:
            self._writes += 1

    def append(self, data: bytes | memoryview) -> bool:
        """The stream's next bytes, written where they belong (after :meth:`queue_append`;
        calls in the order of the stream); ``False`` once nothing more is wanted: the entry
        was abandoned or failed, or the bytes go past its size (the file grew while fetched:
        it changed)."""
        try:
            return self._append(data)
        finally:
            with self._condition:
                self._writes -= 1
                close = self._abandoned and not self._filling and not self._writes
            if close:
                self._close_storage()

    def _append(self, data: bytes | memoryview) -> bool:
        with self._condition:
            if self._abandoned or self._error is not None:
                return False
            offset = self._streamed
        room = self.size - offset
        longer = len(data) > room
        if longer:
            data = memoryview(data)[:room]
        if len(data):
            self._storage.write(offset, data)
        with self._condition:
            self._streamed = offset + len(data)
            complete = (
                self._chunks if self._streamed >= self.size else self._streamed // self.chunk_size
            )
            for index in range(offset // self.chunk_size, complete):
                if not self._have[index]:
                    self._have[index] = 1
                    self._missing -= 1
            if longer:
                self.reusable = False
            streamed = self._streamed
            for waiter, end in self._waiters.items():
                if end <= streamed:
                    waiter.notify()
        return not longer

    def _wake_all(self) -> None:
        """Wake every waiting reader (with the lock held): something besides the stream's
        progress happened (a chunk came by request, a failure, the end)."""
        for waiter in self._waiters:
            waiter.notify()

    def stream_ended(self) -> None:
        """The stream ended; short of the size, the file changed (shrank) meanwhile."""
        with self._condition:
            if self._streamed >= self.size or self._error is not None:
                return
            self._end = min(self._end, self._streamed)
            self.reusable = False
            # What lies past the real end will never come: count it as here (empty).
            for index in range(self._streamed // self.chunk_size, self._chunks):
                if not self._have[index]:
                    self._have[index] = 1
                    self._claimed[index] = 1
                    self._missing -= 1
            self._wake_all()

    def put(self, index: int, data: bytes) -> None:
        """Store chunk ``index``; a short chunk means the file ended early (it changed)."""
        offset = index * self.chunk_size
        expected = min(self.chunk_size, self.size - offset)
        self._storage.write(offset, data)
        with self._condition:
            if len(data) < expected:
                self._end = min(self._end, offset + len(data))
                self.reusable = False
                # Chunks past the real end will never come: count them as here (empty).
                for later in range(index + 1, self._chunks):
                    if not self._have[later]:
                        self._have[later] = 1
                        self._claimed[later] = 1
                        self._missing -= 1
            if not self._have[index]:
                self._have[index] = 1
                self._missing -= 1
            self._wake_all()

    def fail(self, error: OSError) -> None:
        """The fetch failed: every waiting and later read raises ``error``."""
        with self._condition:
            if self._missing == 0:
                return
            self._error = error
            self.reusable = False
            self._wake_all()

    def close(self) -> None:
        """Nobody needs the bytes any more: stop fetching and free the storage (at once, or
        when the running fetch stops, which it does at its next chunk)."""
        with self._condition:
            self._abandoned = True
            self._wake_all()
            if self._filling or self._writes:
                return
        self._close_storage()

    def _close_storage(self) -> None:
        with self._condition:
            if self._closed:
                return
            self._closed = True
        self._storage.close()


async def fill_entry(
    entry: CacheEntry, files: RemoteFiles, *, parallel: int = PARALLEL_READS
) -> None:
    """Fetch ``entry``'s file through one stream, with up to ``parallel`` requests for
    chunks that reads far ahead of the stream demand.

    Runs on the session's event loop; call ``entry.begin_fill()`` before scheduling it.
    Failures are recorded in the entry (readers get the target's errno); if the file
    changed meanwhile, the entry is marked not reusable.
    """
    loop = asyncio.get_running_loop()
    wakeup = asyncio.Event()
    wakeup.set()  # reads may have demanded chunks before the fetch started
    entry.on_demand = functools.partial(loop.call_soon_threadsafe, wakeup.set)
    fetcher = asyncio.create_task(_fetch_demanded(entry, files, wakeup, parallel))
    try:
        await _stream(entry, files)
        if entry.complete and entry.reusable:
            await _check_version(entry, files)
    finally:
        entry.on_demand = None
        fetcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fetcher
        entry.end_fill()


async def _stream(entry: CacheEntry, files: RemoteFiles) -> None:
    loop = asyncio.get_running_loop()
    # Each chunk is written by the writer thread while the loop receives the next ones.
    writes: collections.deque[asyncio.Future[bool]] = collections.deque()
    try:
        async with contextlib.aclosing(files.file_chunks(entry.path)) as chunks:
            async for chunk in chunks:
                entry.queue_append()
                writes.append(loop.run_in_executor(_WRITER, entry.append, chunk))
                while len(writes) > WRITES_IN_FLIGHT or (writes and writes[0].done()):
                    if not await writes.popleft():
                        return  # leaving the stream resets it: the agent stops sending
        while writes:
            if not await writes.popleft():
                return
        entry.stream_ended()
    except OSError as err:
        entry.fail(err)
    except asyncio.CancelledError:
        entry.fail(OSError(errno.EIO, f"the fetch of {entry.path} was cancelled"))
        raise
    except Exception as err:  # the session is gone, or broke
        entry.fail(OSError(errno.EIO, f"cannot read {entry.path}: {err}"))
    finally:
        # Writes still queued find the entry failed or abandoned and write nothing.
        for write in writes:
            write.add_done_callback(_ignore_outcome)


def _ignore_outcome(future: asyncio.Future[bool]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: nobody waits for it any more


async def _check_version(entry: CacheEntry, files: RemoteFiles) -> None:
    """A file that changed while it was streamed may mix two versions: not kept."""
    try:
        after = await files.lstat(entry.path)
    except Exception:
        entry.reusable = False
        return
    if (after.mtime_ns, after.size) != (entry.key[1], entry.key[2]):
        entry.reusable = False


async def _fetch_demanded(
    entry: CacheEntry, files: RemoteFiles, wakeup: asyncio.Event, parallel: int
) -> None:
    """Fetch the chunks readers far ahead of the stream wait for, until cancelled."""
    handle: int | None = None

    async def fetch(index: int) -> None:
        assert handle is not None
        offset = index * entry.chunk_size
        wanted = min(entry.chunk_size, entry.size - offset)
        pieces = []
        while wanted:
            data = await files.read(handle, offset, wanted)
            if not data:
                break
            pieces.append(data)
            offset += len(data)
            wanted -= len(data)
        entry.put(index, b"".join(pieces))

    try:
        while True:
            await wakeup.wait()
            wakeup.clear()
            batch: list[int] = []
            while len(batch) < parallel and (index := entry.claim()) is not None:
                batch.append(index)
            if not batch:
                continue
            if handle is None:
                handle = await files.open(entry.path, os.O_RDONLY)
            for result in await asyncio.gather(*map(fetch, batch), return_exceptions=True):
                if isinstance(result, OSError):
                    entry.fail(result)
                elif isinstance(result, Exception):
                    entry.fail(OSError(errno.EIO, f"cannot read {entry.path}: {result}"))
            wakeup.set()  # more may have been demanded meanwhile
    except OSError as err:
        entry.fail(err)
    except asyncio.CancelledError:
        raise
    except Exception as err:  # the session is gone, or broke
        entry.fail(OSError(errno.EIO, f"cannot read {entry.path}: {err}"))
    finally:
        if handle is not None:
            try:
                await files.close(handle)
            except Exception as err:  # the session may be gone; the agent closes it then
                log.debug("closing the remote handle of %s failed: %s", entry.path, err)


class ReadCache:
    """Entries by key, least recently used first out, within RAM and disk budgets.

    Files up to ``memory_threshold`` bytes are kept in RAM (``memory_budget`` in all),
    larger ones in anonymous temporary files under ``directory`` (``disk_budget``).
    Entries in use are never dropped; a dropped entry is freed when its last user leaves.
    """

    def __init__(
        self,
        *,
        memory_threshold: int = 4 * 1024 * 1024,
        memory_budget: int = 256 * 1024 * 1024,
        disk_budget: int = 4 * 1024 * 1024 * 1024,
        directory: str | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.memory_threshold = memory_threshold
        self.memory_budget = memory_budget
        self.disk_budget = disk_budget
        self.directory = directory
        self.chunk_size = chunk_size
        self._entries: collections.OrderedDict[CacheKey, CacheEntry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def acquire(self, key: CacheKey) -> tuple[CacheEntry, bool]:
        """The entry for ``key`` (new if none is usable) with one more user; and whether it
        needs fetching. Release it with :meth:`release`."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (entry.failed or not entry.reusable):
                self._drop(entry)
                entry = None
            if entry is not None:
                self._entries.move_to_end(key)
                entry.users += 1
                self.hits += 1
                return entry, False
            self.misses += 1
            in_memory = key[2] <= self.memory_threshold
            storage: _Storage = (
                _MemoryStorage(key[2]) if in_memory else _FileStorage(self.directory)
            )
            entry = CacheEntry(key, storage, self.chunk_size)
            entry.users = 1
            entry.cached = True
            self._entries[key] = entry
            self._evict()
            return entry, True

    def release(self, entry: CacheEntry) -> None:
        """One user less; an incomplete entry nobody reads any more is dropped (its fetch
        stops), so a huge file opened and closed unread is not fetched whole."""
        with self._lock:
            entry.users -= 1
            if entry.users > 0:
                return
            if not entry.cached:
                entry.close()
            elif not entry.complete or not entry.reusable:
                self._drop(entry)
            self._evict()

    def invalidate(self, path: str) -> None:
        """Forget every version of ``path`` and of anything below it (it changed)."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            for entry in [
                e for e in self._entries.values() if e.path == path or e.path.startswith(prefix)
            ]:
                self._drop(entry)

    def clear(self) -> None:
        """Drop everything (closing the mount)."""
        with self._lock:
            for entry in list(self._entries.values()):
                self._drop(entry)

    def entries(self) -> Iterator[CacheEntry]:
        with self._lock:
            return iter(list(self._entries.values()))

    # -- internals (with the lock held) -------------------------------------------------------

    def _drop(self, entry: CacheEntry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        entry.cached = False
        if entry.users == 0:
            entry.close()

    def _evict(self) -> None:
        memory = disk = 0
        for entry in self._entries.values():
            if entry.size <= self.memory_threshold:
                memory += entry.size
            else:
                disk += entry.size
        for entry in list(self._entries.values()):
            if memory <= self.memory_budget and disk <= self.disk_budget:
                return
            if entry.users:
                continue
            in_memory = entry.size <= self.memory_threshold
            if in_memory and memory > self.memory_budget:
                memory -= entry.size
                self._drop(entry)
            elif not in_memory and disk > self.disk_budget:
                disk -= entry.size
                self._drop(entry)
