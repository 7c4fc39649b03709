"""Facts about a tracee task read from ``/proc``, and a cache keyed by task id.

A notification names the *thread* (task id) that made the syscall. Task ids are
recycled (``pid_max`` may be as low as 32768), so anything cached per task id carries the
task's start time and is checked again when it has not been checked for a while: a task
id can only be reused after the pid space wrapped around, which takes far longer than
that interval.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


def start_time(tid: int) -> int | None:
    """When task ``tid`` started (clock ticks since boot), or ``None`` if it is gone."""
    try:
        with open(f"/proc/{tid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])  # field 22 of proc(5), counting from field 3


def status_fields(tid: int) -> dict[str, str]:
    """``/proc/TID/status`` as a dict (empty if the task is gone)."""
    try:
        with open(f"/proc/{tid}/status", "rb") as status:
            lines = status.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def thread_group_id(tid: int) -> int | None:
    """The process (thread group) id of task ``tid``, or ``None`` if it is gone.

    ``pidfd_open`` needs it: before Linux 6.9 a pidfd can only refer to a whole process.
    """
    tgid = status_fields(tid).get("Tgid")
    return int(tgid) if tgid else None


def command_name(pid: int) -> str | None:
    """The kernel's name of process ``pid`` (``comm``, at most 15 bytes), or ``None``."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as comm:
            return comm.read().rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return None


def argv0_basename(pid: int) -> str | None:
    """The base name of ``argv[0]`` of process ``pid`` (``None`` if gone or empty)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv0 = cmdline.read().split(b"\0", 1)[0]
    except OSError:
        return None
    if not argv0:
        return None
    return os.path.basename(argv0.decode("utf-8", "replace"))


class TaskCache(Generic[V]):
    """A bounded, thread-safe cache of per-task values that notices recycled task ids.

    ``load(tid)`` computes a value; ``drop(value)`` releases one that leaves the cache
    (closing an fd, say). An entry is trusted for ``revalidate_after`` seconds, then the
    task's start time is compared with the one recorded when it was loaded.
    """

    def __init__(
        self,
        load: Callable[[int], V],
        drop: Callable[[V], None] | None = None,
        capacity: int = 256,
        revalidate_after: float = 0.25,
    ) -> None:
        self._load = load
        self._drop = drop
        self._capacity = capacity
        self._revalidate_after = revalidate_after
        # tid -> [value, start time, monotonic time of the last check]
        self._entries: OrderedDict[int, list] = OrderedDict()  # type: ignore[type-arg]
        self._lock = threading.Lock()

    def get(self, tid: int) -> V:
        """The value for ``tid``, loading (or reloading) it when needed."""
        return self.lookup(tid)[0]

    def lookup(self, tid: int) -> tuple[V, bool]:
        """The value for ``tid`` and whether it was loaded by this call."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(tid)
            if entry is not None:
                if now - entry[2] < self._revalidate_after:
                    self._entries.move_to_end(tid)
                    return entry[0], False
                if start_time(tid) == entry[1]:
                    entry[2] = now
                    self._entries.move_to_end(tid)
                    return entry[0], False
                self._discard(tid)
        started = start_time(tid)
        value = self._load(tid)
        with self._lock:
            if tid in self._entries:
                self._discard(tid)
            self._entries[tid] = [value, started, now]
            while len(self._entries) > self._capacity:
                self._discard(next(iter(self._entries)))
        return value, True

    def forget(self, tid: int) -> None:
        """Drop the entry of ``tid`` (it exec'd, or its value turned out stale)."""
        with self._lock:
            self._discard(tid)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            for tid in list(self._entries):
                self._discard(tid)

    def __len__(self) -> int:
        return len(self._entries)

    def _discard(self, tid: int) -> None:
        entry = self._entries.pop(tid, None)
        if entry is not None and self._drop is not None:
            self._drop(entry[0])
