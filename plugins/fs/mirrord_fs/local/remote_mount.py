"""A per-session FUSE mount of the target's root file system.

``mirrord run`` mounts the target's root privately for the session; the supervisor then
opens ``<mount>/<path>`` for the user's process and injects the descriptor, so reads,
``mmap`` and ``getdents`` run natively against FUSE::

    with RemoteMount.start(lambda: Session.connect(endpoint), writable=False) as mount:
        mount.path                              # /run/mirrord/mounts/<session id>/mnt
        mount.local_path("/app/config.yaml")    # <mount>/app/config.yaml

Requests are answered by libfuse worker threads that call the agent session on its event
loop (the mount's own loop thread, or the caller's loop given with the session). The
mount is removed on every exit path; see :mod:`mirrord_fs.local.mount_lifecycle`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import posixpath
import secrets
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from mirrord_core.session import Session
from mirrord_core.target_model import AgentEndpoint
from mirrord_core.user_errors import UserError
from mirrord_fs.local import mount_lifecycle
from mirrord_fs.local.fuse_driver import FuseDriver
from mirrord_fs.local.fuse_operations import (
    FUSE_MAX_READ,
    AsyncBridge,
    MountStats,
    RemoteOperations,
)
from mirrord_fs.local.read_cache import ReadCache
from mirrord_fs.local.remote_files import RemoteFiles

log = logging.getLogger("mirrord.fs.mount")

SessionFactory = Callable[[], Awaitable[Session]]

#: How long to wait for the kernel's INIT after mounting, and for the FUSE loop to end.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
#: After a lazy unmount the loop runs on while files are open: wait only briefly.
BUSY_STOP_TIMEOUT = 0.5


#: Kernel read-ahead on the mount, in KiB: sequential reads then reach us as requests of
#: ``FUSE_MAX_READ`` (one per read-ahead window) instead of the default 128 KiB.
READAHEAD_KB = FUSE_MAX_READ // 1024


def _raise_readahead(connection: int) -> None:
    try:
        Path(f"/sys/class/bdi/0:{connection}/read_ahead_kb").write_text(str(READAHEAD_KB))
    except OSError as err:
        # Not root, or another kernel: only slower.
        log.debug("cannot raise the mount's read-ahead: %s", err)


class MountError(UserError):
    """The remote file system cannot be mounted; the message says why."""


class _LoopThread:
    """An event loop running in its own daemon thread (for sessions the mount owns)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="mirrord-fs-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(STOP_TIMEOUT)


class RemoteMount:
    """The target's root, mounted with FUSE for one session. Create with :meth:`start`.

    ``path`` is the mountpoint. Reading files opened read-only fetches them whole once and
    serves later opens of the same version (path, mtime, size) locally; attributes are
    cached for ``attr_ttl`` seconds. Without ``writable`` every change fails with EROFS.
    Never use the mount from the session's event-loop thread: that thread answers it.
    """

    def __init__(
        self,
        *,
        operations: RemoteOperations,
        directory: mount_lifecycle.MountDirectory,
        session_id: str,
        session: Session,
        owned_session: bool,
        loop_thread: _LoopThread | None,
        writable: bool,
    ) -> None:
        self._operations = operations
        self._directory = directory
        self.session_id = session_id
        self.session = session
        self.writable = writable
        self._owned_session = owned_session
        self._loop_thread = loop_thread
        self._driver: FuseDriver | None = None
        self._thread: threading.Thread | None = None
        self._initialized = threading.Event()
        self._loop_status: int | None = None
        self._connection: int | None = None
        self._close_lock = threading.Lock()
        self._closed = False
        self._auto_unmount = False

    # -- starting ----------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        session: Session | SessionFactory,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        writable: bool = False,
        mountpoint: str | os.PathLike[str] | None = None,
        session_id: str | None = None,
        state_root: str | os.PathLike[str] | None = None,
        attr_ttl: float = 1.0,
        negative_ttl: float = 1.0,
        timeout: float = 60.0,
        cache: ReadCache | None = None,
        readahead_limit: int = 1024 * 1024 * 1024,
        auto_unmount: bool = True,
        allow_other: bool = False,
        max_threads: int = 16,
    ) -> RemoteMount:
        """Mount the target's root and return once the kernel can use it.

        ``session`` is either a connected :class:`Session` running on ``loop`` (which must
        be running in another thread), or a factory ``async () -> Session`` that the mount
        calls on its own loop thread and closes with the mount. The mountpoint is
        ``<state_root>/<session_id>/mnt`` unless ``mountpoint`` names an (empty) directory.
        Stale mounts of dead owners under ``state_root`` are cleaned first.

        ``auto_unmount`` has libfuse's helper unmount even if this process is SIGKILLed;
        ``allow_other`` lets other users (a tracee under another uid) use the mount.
        Blocking: from async code, use :meth:`start_async`.
        """
        root = Path(state_root) if state_root is not None else mount_lifecycle.default_state_root()
        mount_lifecycle.clean_stale_mounts(root)
        session_id = session_id or secrets.token_hex(8)
        loop_thread = None
        owned = not isinstance(session, Session)
        try:
            if isinstance(session, Session):
                if loop is None or not loop.is_running():
                    raise ValueError("a Session needs the running event loop it uses (loop=…)")
                live_session = session
            else:
                if loop is None:
                    loop_thread = _LoopThread()
                    loop = loop_thread.loop
                live_session = asyncio.run_coroutine_threadsafe(session(), loop).result(timeout)
        except BaseException:
            if loop_thread is not None:
                loop_thread.stop()
            raise
        bridge = AsyncBridge(loop, timeout)
        bridge.learn_loop_thread()
        operations = RemoteOperations(
            RemoteFiles(live_session),
            bridge,
            cache or ReadCache(),
            writable=writable,
            attr_ttl=attr_ttl,
            negative_ttl=negative_ttl,
            readahead_limit=readahead_limit,
        )
        try:
            directory = mount_lifecycle.MountDirectory(
                root, session_id, Path(mountpoint) if mountpoint is not None else None
            )
        except BaseException:
            cls._close_session(bridge, live_session, owned, loop_thread)
            raise
        mount = cls(
            operations=operations,
            directory=directory,
            session_id=session_id,
            session=live_session,
            owned_session=owned,
            loop_thread=loop_thread,
            writable=writable,
        )
        mount._auto_unmount = auto_unmount
        options = mount._options(
            attr_ttl=attr_ttl,
            negative_ttl=negative_ttl,
            auto_unmount=auto_unmount,
            allow_other=allow_other,
        )
        try:
            mount._mount(options, max_threads)
        except BaseException:
            mount.close()
            raise
        return mount

    @classmethod
    async def start_async(cls, session: Session | SessionFactory, **options: Any) -> RemoteMount:
        """:meth:`start` from async code: a :class:`Session` runs on the current loop."""
        if isinstance(session, Session):
            options.setdefault("loop", asyncio.get_running_loop())
        return await asyncio.to_thread(lambda: cls.start(session, **options))

    @classmethod
    def for_endpoint(cls, endpoint: AgentEndpoint, **options: Any) -> RemoteMount:
        """Mount through a new session with the agent at ``endpoint`` (closed with it)."""

        async def connect() -> Session:
            return await Session.connect(endpoint, client_name="mirrord fs mount")

        return cls.start(connect, **options)

    def _options(
        self, *, attr_ttl: float, negative_ttl: float, auto_unmount: bool, allow_other: bool
    ) -> list[str]:
        options = [
            f"fsname=mirrord-{self.session_id}",
            "subtype=mirrord",
            # The target's setuid binaries and device nodes must not act on this machine.
            "nosuid",
            "nodev",
            f"attr_timeout={attr_ttl:g}",
            f"entry_timeout={attr_ttl:g}",
            f"negative_timeout={negative_ttl:g}",
            f"max_read={FUSE_MAX_READ}",
        ]
        if not self.writable:
            options.append("ro")
        if auto_unmount:
            options.append("auto_unmount")
        if allow_other:
            options.append("allow_other")
        return options

    def _mount(self, options: list[str], max_threads: int) -> None:
        initialized = self._initialized
        original_init = self._operations.init_with_config

        def init_with_config(conn: Any, config: Any) -> None:
            original_init(conn, config)
            initialized.set()

        self._operations.init_with_config = init_with_config  # type: ignore[method-assign]
        mountpoint = str(self._directory.mountpoint)
        driver = FuseDriver(self._operations, mountpoint, options, max_threads=max_threads)
        try:
            driver.mount()
        except OSError as err:
            raise MountError(f"cannot mount the target's files at {mountpoint}: {err}") from None
        self._driver = driver
        mount_lifecycle.register_cleanup(id(self), self._exit_cleanup)

        def serve() -> None:
            try:
                self._loop_status = driver.run()
            finally:
                initialized.set()
                if self._closed:
                    self._destroy_driver()

        self._thread = threading.Thread(target=serve, name="mirrord-fuse", daemon=True)
        self._thread.start()
        if not initialized.wait(START_TIMEOUT) or not self._thread.is_alive():
            raise MountError(f"the FUSE mount at {mountpoint} did not start")
        self._connection = mount_lifecycle.fuse_connection_id(mountpoint)
        if self._connection is not None:
            _raise_readahead(self._connection)

    # -- using ------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The mountpoint: the target's ``/`` on this machine."""
        return self._directory.mountpoint

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> MountStats:
        """Requests the mount sent to the agent, whole files fetched, cache hits."""
        return self._operations.stats

    @property
    def cache(self) -> ReadCache:
        return self._operations.cache

    def local_path(self, remote_path: str) -> Path:
        """Where the target's absolute ``remote_path`` is on this machine (in the mount).

        ``..`` is resolved lexically and stops at the target's root, so no path argument
        leaves the mount. (Symlinks on the mount already resolve inside it.)
        """
        if not remote_path.startswith("/"):
            raise ValueError(f"expected an absolute path in the target, got {remote_path!r}")
        normalized = posixpath.normpath("/" + remote_path.lstrip("/"))
        parts = []
        for part in normalized.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return self.path.joinpath(*parts)

    def readlink(self, remote_path: str) -> str:
        """The target of a symlink exactly as stored in the target (the mount shows targets
        rewritten to stay inside it): what a process's ``readlink`` should see."""
        return self._operations.bridge.call(self._operations.files.readlink(remote_path))

    # -- stopping ---------------------------------------------------------------------------

    def close(self) -> None:
        """Unmount, stop serving, close an owned session and delete the mount's directory.

        Files still open on the mount are detached (their later reads fail). Idempotent.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        mount_lifecycle.unregister_cleanup(id(self))
        mountpoint = self._directory.mountpoint
        if self._driver is not None:
            self._unmount(mountpoint)
        self._operations.cache.clear()
        self._operations.attrs.clear()
        self._close_session(
            self._operations.bridge, self.session, self._owned_session, self._loop_thread
        )
        try:
            self._directory.remove()
        except OSError as err:
            log.warning("cannot remove %s: %s", self._directory.directory, err)

    def _unmount(self, mountpoint: Path) -> None:
        busy = False
        try:
            if mount_lifecycle.is_mounted(mountpoint):
                try:
                    mount_lifecycle.unmount(mountpoint)
                except OSError as err:
                    if err.errno != errno.EBUSY:
                        raise
                    # Files on it are still open somewhere: detach it from the namespace.
                    busy = True
                    mount_lifecycle.unmount(mountpoint, lazy=True)
        except OSError as err:
            log.warning("cannot unmount %s: %s", mountpoint, err)
        thread = self._thread
        if thread is None:
            self._destroy_driver()
            return
        if busy and self._connection is not None:
            # Fail the open files now (where fusectl is mounted), so the loop ends.
            mount_lifecycle.abort_fuse_connection(self._connection)
        if self._auto_unmount and not mount_lifecycle.is_mounted(mountpoint):
            mount_lifecycle.stop_auto_unmount_helper(mountpoint)
        thread.join(BUSY_STOP_TIMEOUT if busy else STOP_TIMEOUT)
        if thread.is_alive():
            # The loop ends when the last open file closes (its requests fail from now
            # on, with the session gone); the serving thread then frees libfuse.
            log.info("%s is detached; it ends when its open files are closed", mountpoint)
            return
        self._destroy_driver()

    def _destroy_driver(self) -> None:
        with self._close_lock:
            driver, self._driver = self._driver, None
        if driver is not None:
            driver.destroy()

    @staticmethod
    def _close_session(
        bridge: AsyncBridge, session: Session, owned: bool, loop_thread: _LoopThread | None
    ) -> None:
        if owned and not bridge.loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(session.close(), bridge.loop).result(STOP_TIMEOUT)
            except Exception as err:  # the agent may be gone already
                log.debug("closing the mount's session: %s", err)
        if loop_thread is not None:
            loop_thread.stop()

    def _exit_cleanup(self, urgent: bool) -> None:
        if not urgent:
            self.close()
            return
        # From a signal handler: the interrupted code may hold our locks; just make sure
        # nothing stays mounted.
        mountpoint = self._directory.mountpoint
        try:
            if mount_lifecycle.is_mounted(mountpoint):
                mount_lifecycle.unmount(mountpoint, lazy=True)
            if self._connection is not None:
                mount_lifecycle.abort_fuse_connection(self._connection)
            self._directory.remove()
        except OSError as err:
            log.warning("cannot clean up %s: %s", mountpoint, err)

    def __enter__(self) -> RemoteMount:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "mounted"
        mode = "rw" if self.writable else "ro"
        return f"<RemoteMount {self.path} {mode} {state}>"
