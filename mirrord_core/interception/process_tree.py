"""``skip_processes``: the processes of the tree whose syscalls are left alone.

A process is skipped when its name — the kernel's ``comm`` or the base name of its
``argv[0]`` — is one of the configured names, as mirrord's ``skip_processes`` does. Its
children are judged by their own names. The answer is cached per task and forgotten when
the task calls ``execve`` (the engine then traps ``execve``/``execveat`` too), because a
process's name is that of the program it runs.

One race remains: while a thread of a multi-threaded process execs, another thread of it
may make a trapped syscall that caches the old name for the process id again; that
process is then judged by its old name until the cache entry is checked again.
"""

from __future__ import annotations

from collections.abc import Iterable

from mirrord_core.interception.tasks import (
    TaskCache,
    argv0_basename,
    command_name,
    status_fields,
)

#: ``comm`` holds at most this many bytes of the program name (TASK_COMM_LEN - 1).
COMM_LENGTH = 15
#: Syscalls after which a process may have another name.
EXEC_SYSCALLS = frozenset({"execve", "execveat"})


class ProcessSkipper:
    """Decides, per task id, whether a tracee belongs to a skipped process."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(name for name in names if name)
        self._comms = frozenset(name[:COMM_LENGTH] for name in self.names)
        self._cache: TaskCache[bool] = TaskCache(self._matches, capacity=4096)

    def __bool__(self) -> bool:
        return bool(self.names)

    def skips(self, tid: int) -> bool:
        """Whether task ``tid`` belongs to a process whose name is to be skipped."""
        return self._cache.get(tid)

    def skips_exec(self, tid: int) -> bool:
        """Like :meth:`skips`, for an ``execve`` of ``tid``: decided on the current name,
        which is then forgotten (after the exec the process has its new program's name)."""
        skipped = self._matches(tid)
        self._cache.forget(tid)
        tgid = status_fields(tid).get("Tgid")
        if tgid and int(tgid) != tid:
            # A thread that execs takes over the process id.
            self._cache.forget(int(tgid))
        return skipped

    def process_name(self, tid: int) -> tuple[str | None, str | None]:
        """``(comm, argv[0] base name)`` of the process of task ``tid``."""
        tgid = status_fields(tid).get("Tgid")
        # A thread's own comm may be a thread name (Go and Java name their threads): the
        # process is named by its leader.
        pid = int(tgid) if tgid else tid
        return command_name(pid), argv0_basename(pid)

    def _matches(self, tid: int) -> bool:
        comm, argv0 = self.process_name(tid)
        return comm in self._comms or argv0 in self.names
