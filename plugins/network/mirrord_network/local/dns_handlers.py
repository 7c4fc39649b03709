"""Remote DNS: the user's process resolves names with the target's configuration.

With ``feature.network.dns`` on, opens of exactly ``/etc/resolv.conf`` and ``/etc/hosts``
are served from copies of the target's files (read once per run through the session),
and ``/etc/nsswitch.conf`` from a copy of the local one whose ``hosts:`` line is
``files dns`` (so a local systemd-resolved, mDNS or similar module is not asked). The
resolver's queries then go to the target's nameserver, which the outgoing handler routes
through the agent; the nscd socket is refused by the outgoing handler so a local cache
does not answer either. Resolvers that read these files (glibc, musl, Go's pure
resolver, busybox) thus resolve as the pod does, search domains included.

Only absolute paths are recognised; any other open is "not mine" (``None``), so an fs
handler asked before or after this one decides for every other path.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import Future
from pathlib import Path

from mirrord_core.interception import (
    CONTINUE,
    DEFERRED,
    Answer,
    Errno,
    InjectFd,
    Notification,
    TraceeMemoryError,
)
from mirrord_core.session import Session

log = logging.getLogger(__name__)

RESOLV_CONF = b"/etc/resolv.conf"
HOSTS = b"/etc/hosts"
NSSWITCH = b"/etc/nsswitch.conf"
#: Files copied from the target.
REMOTE_FILES = (RESOLV_CONF, HOSTS)
OPEN_SYSCALLS = frozenset({"open", "openat", "openat2"})
#: How long the resolver files may take to arrive; opens then fail with EIO.
FETCH_TIMEOUT = 15.0
_HOSTS_LINE = re.compile(rb"^\s*hosts\s*:.*$", re.MULTILINE)
_LONGEST = max(len(RESOLV_CONF), len(HOSTS), len(NSSWITCH)) + 1
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def nsswitch_for_dns(local: bytes) -> bytes:
    """The local nsswitch.conf with ``hosts: files dns`` (added when missing)."""
    if _HOSTS_LINE.search(local):
        return _HOSTS_LINE.sub(b"hosts: files dns", local, count=1)
    return local.rstrip(b"\n") + (b"\n" if local else b"") + b"hosts: files dns\n"


def target_files_available() -> bool:
    """Whether the fs plugin's client, which reads the target's files, is installed."""
    return importlib.util.find_spec("mirrord_fs") is not None


async def fetch_target_files(session: Session) -> dict[bytes, bytes | None]:
    """The target's resolv.conf and hosts (``None`` for a file the target lacks)."""
    # The fs plugin's client: the agent serves files from the target's root whatever
    # the fs mode; the network plugin only reads through it.
    from mirrord_fs.local.remote_files import RemoteFiles

    files = RemoteFiles(session)
    contents: dict[bytes, bytes | None] = {}
    for path in REMOTE_FILES:
        try:
            contents[path] = await files.read_file(os.fsdecode(path))
        except OSError as error:
            log.debug("the target has no readable %s: %s", os.fsdecode(path), error)
            contents[path] = None
    return contents


class DnsFiles:
    """Serves the resolver's configuration files from the target (one per run)."""

    syscalls = OPEN_SYSCALLS

    def __init__(self, session: Session, loop: asyncio.AbstractEventLoop) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mirrord-dns-"))
        self._paths: dict[bytes, Path | None] = {}
        self._warned = False
        try:
            local = Path("/etc/nsswitch.conf").read_bytes()
        except OSError:
            local = b""
        self._write(NSSWITCH, nsswitch_for_dns(local))
        self.ready: Future[None] = (
            asyncio.run_coroutine_threadsafe(self._fetch(session), loop)
            if not _in_loop(loop)
            else _wrap(loop.create_task(self._fetch(session)))
        )

    def __repr__(self) -> str:
        return "<DnsFiles>"

    def _write(self, path: bytes, content: bytes | None) -> None:
        if content is None:
            self._paths[path] = None
            return
        file = self.directory / os.fsdecode(path).rsplit("/", 1)[1]
        file.write_bytes(content)
        file.chmod(0o444)
        self._paths[path] = file

    async def _fetch(self, session: Session) -> None:
        contents = await asyncio.wait_for(fetch_target_files(session), FETCH_TIMEOUT)
        for path, content in contents.items():
            self._write(path, content)

    def handle(self, notification: Notification) -> Answer | None:
        try:
            return self._handle(notification)
        except (TraceeMemoryError, ProcessLookupError):
            return None  # a bad pointer (the kernel reports it), or the tracee is gone

    def _handle(self, notification: Notification) -> Answer | None:
        args = notification.args
        if notification.syscall == "open":
            path_pointer, flags = args[0], args[1]
        else:
            path_pointer = args[1]
            if notification.syscall == "openat2":
                flags = int.from_bytes(notification.read_memory(args[2], 8), sys.byteorder)
            else:
                flags = args[2]
        try:
            path = notification.read_string(path_pointer, _LONGEST)
        except TraceeMemoryError as error:
            if error.errno == errno.ENAMETOOLONG:
                return None  # longer than any of ours
            raise
        if path not in (RESOLV_CONF, HOSTS, NSSWITCH) or flags & _WRITE_FLAGS:
            return None
        cloexec = bool(flags & os.O_CLOEXEC)
        if path == NSSWITCH or self.ready.done():
            return self._answer(path, cloexec)

        def later(_: object) -> None:
            try:
                self._answer(path, cloexec).deliver(notification)
            except OSError as error:
                log.debug("answering %r failed: %s", notification, error)

        self.ready.add_done_callback(later)
        return DEFERRED

    def _answer(self, path: bytes, cloexec: bool) -> Answer:
        if path != NSSWITCH and (self.ready.cancelled() or self.ready.exception() is not None):
            if not self._warned:
                self._warned = True
                error = None if self.ready.cancelled() else self.ready.exception()
                log.warning(
                    "could not read the target's resolv.conf and hosts (%s): "
                    "this machine's are used",
                    error or "cancelled",
                )
            return CONTINUE
        file = self._paths.get(path)
        if file is None:
            return Errno(errno.ENOENT)
        return InjectFd(os.open(file, os.O_RDONLY | os.O_CLOEXEC), cloexec=cloexec)

    def close(self) -> None:
        self.ready.cancel()
        shutil.rmtree(self.directory, ignore_errors=True)


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _wrap(task: asyncio.Task[None]) -> Future[None]:
    """A thread-safe future that completes with ``task`` (callbacks run in any thread)."""
    future: Future[None] = Future()

    def copy(done: asyncio.Task[None]) -> None:
        error = None if done.cancelled() else done.exception()  # retrieved in every case
        if future.done():
            return  # the waiter gave up (cancelled it) while the task finished
        if done.cancelled():
            future.cancel()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(None)

    task.add_done_callback(copy)
    return future
