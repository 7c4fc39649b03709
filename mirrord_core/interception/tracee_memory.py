"""Reading and writing a tracee's memory through ``/proc/TID/mem``.

One fd per task stays open (``pread``/``pwrite`` need no seek and no further syscalls).
Reads go page by page: a read that crosses into an unmapped page fails as a whole with
EIO, although the string being read ended before it.

An fd keeps referring to the address space it was opened on. After the task exec'd (or
died and its id was recycled) that address space is gone and reads return 0 bytes: the
fd is then reopened once. A task id recycled while the old address space still lives (a
thread died, its process did not) is caught by comparing the task's start time, checked
again when the fd has not been checked for a quarter of a second.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import time

from mirrord_core.interception.tasks import start_time

PAGE_SIZE = mmap.PAGESIZE
_OFFSET_MASK = PAGE_SIZE - 1
_FIRST_READ = 256
# Bound once: read_string runs for nearly every trapped syscall.
_pread = os.pread
_monotonic = time.monotonic
#: The longest path the kernel accepts, terminating NUL included.
PATH_MAX = 4096


class TraceeMemoryError(OSError):
    """The tracee's memory could not be read or written.

    ``errno`` is ``EFAULT`` for an address the tracee has not mapped (the syscall should
    fail with EFAULT), ``ESRCH`` when the task is gone, ``EACCES``/``EPERM`` when this
    process may not access it (see the Yama note in ``docs/interception.md``),
    ``ENAMETOOLONG`` for a string without a NUL within the limit.
    """


class TraceeMemory:
    """Access to the memory of tracee tasks, by task id (thread-safe)."""

    def __init__(self, capacity: int = 64, revalidate_after: float = 0.25) -> None:
        self._capacity = capacity
        self._revalidate_after = revalidate_after
        # tid -> [fd, start time, monotonic time of the last check]; oldest first. This is
        # on every handler's hot path, hence no TaskCache (see tasks.py for the idea).
        self._entries: dict[int, list[int | float | None]] = {}
        # Accesses hold the lock so that no other thread closes an fd (which the kernel
        # could then reuse for another file) between the lookup and the pread.
        self._lock = threading.Lock()
        #: How many fds were opened so far: a caller that sees it change across an access
        #: checks that its notification is still valid (the task id could be recycled).
        self.opens = 0

    def read(self, tid: int, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``address`` of task ``tid``."""
        chunks = []
        remaining = size
        with self._lock:
            while remaining:
                length = min(remaining, PAGE_SIZE - address % PAGE_SIZE)
                chunk = self._pread(tid, length, address)
                chunks.append(chunk)
                address += len(chunk)
                remaining -= len(chunk)
        return b"".join(chunks)

    def read_string(self, tid: int, address: int, max_length: int = PATH_MAX) -> bytes:
        """The NUL-terminated string at ``address`` (without the NUL).

        Raises :class:`TraceeMemoryError` with ``ENAMETOOLONG`` when no NUL comes within
        ``max_length`` bytes, ``EFAULT`` when the string runs into unmapped memory.
        """
        if not address:
            raise TraceeMemoryError(errno.EFAULT, "NULL string pointer")
        # Most strings are short paths: one small read from a known fd usually holds the
        # NUL. This path runs for nearly every trapped syscall, hence written out inline
        # (explicit acquire/release and partition cost about half of ``with`` and
        # find + slice).
        length = PAGE_SIZE - (address & _OFFSET_MASK)
        if length > _FIRST_READ:
            length = _FIRST_READ
        if length > max_length:
            length = max_length
        lock = self._lock
        lock.acquire()
        try:
            entry = self._entries.get(tid)
            if entry is not None and _monotonic() - entry[2] < self._revalidate_after:  # type: ignore[operator]
                try:
                    string, nul, _ = _pread(entry[0], length, address).partition(b"\0")  # type: ignore[arg-type]
                except OSError:
                    nul = b""  # the careful path below reports it
                if nul:
                    return string
            return self._read_string(tid, address, max_length, length)
        finally:
            lock.release()

    def _read_string(self, tid: int, address: int, max_length: int, length: int) -> bytes:
        chunks = []
        total = 0
        while True:
            chunk = self._pread(tid, length, address)
            end = chunk.find(b"\0")
            if end >= 0:
                chunks.append(chunk[:end])
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            address += len(chunk)
            if total >= max_length:
                raise TraceeMemoryError(errno.ENAMETOOLONG, "string longer than the limit")
            length = min(max_length - total, PAGE_SIZE - address % PAGE_SIZE)

    def write(self, tid: int, address: int, data: bytes) -> None:
        """Write ``data`` at ``address`` of task ``tid``."""
        view = memoryview(data)
        with self._lock:
            while view:
                length = min(len(view), PAGE_SIZE - address % PAGE_SIZE)
                written = self._pwrite(tid, view[:length], address)
                view = view[written:]
                address += written

    def forget(self, tid: int) -> None:
        """Close the fd of ``tid`` (it is about to exec or has exited)."""
        with self._lock:
            self._discard(tid)

    def close(self) -> None:
        """Close every fd."""
        with self._lock:
            for tid in list(self._entries):
                self._discard(tid)

    # -- internals (called with the lock held) -----------------------------------------

    def _fd(self, tid: int) -> int:
        entry = self._entries.get(tid)
        if entry is not None:
            now = time.monotonic()
            if now - entry[2] < self._revalidate_after:  # type: ignore[operator]
                return entry[0]  # type: ignore[return-value]
            # Not checked for a while: is it still the task the fd was opened for?
            if start_time(tid) == entry[1]:
                entry[2] = now
                return entry[0]  # type: ignore[return-value]
            self._discard(tid)
        return self._open(tid)

    def _open(self, tid: int) -> int:
        started = start_time(tid)
        try:
            fd = os.open(f"/proc/{tid}/mem", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TraceeMemoryError(errno.ESRCH, f"task {tid} is gone") from None
        except OSError as error:
            raise TraceeMemoryError(
                error.errno, f"cannot open the memory of task {tid}: {error.strerror}"
            ) from None
        self.opens += 1
        self._entries[tid] = [fd, started, time.monotonic()]
        while len(self._entries) > self._capacity:
            self._discard(next(iter(self._entries)))
        return fd

    def _discard(self, tid: int) -> None:
        entry = self._entries.pop(tid, None)
        if entry is not None:
            os.close(entry[0])  # type: ignore[arg-type]

    def _pread(self, tid: int, length: int, address: int) -> bytes:
        for _ in range(2):
            try:
                data = os.pread(self._fd(tid), length, address)
            except OSError as error:
                raise _translate(error) from None
            if data:
                return data
            self._discard(tid)  # 0 bytes: the fd's address space is gone
        raise TraceeMemoryError(errno.ESRCH, f"task {tid} has no address space")

    def _pwrite(self, tid: int, data: memoryview, address: int) -> int:
        for _ in range(2):
            try:
                written = os.pwrite(self._fd(tid), data, address)
            except OSError as error:
                raise _translate(error) from None
            if written:
                return written
            self._discard(tid)
        raise TraceeMemoryError(errno.ESRCH, f"task {tid} has no address space")


def _translate(error: OSError) -> TraceeMemoryError:
    if error.errno == errno.EIO:
        return TraceeMemoryError(errno.EFAULT, "unmapped tracee address")
    return TraceeMemoryError(error.errno, error.strerror)
