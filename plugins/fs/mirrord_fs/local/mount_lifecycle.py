"""Where session mounts live, who owns them, and removing them on every exit path.

Each mount gets a private directory ``<state root>/<session id>/`` (mode 0700) holding the
mountpoint ``mnt/`` and ``owner.json`` (pid and start time of the owning process). A mount
is removed by its owner on close, at interpreter exit, on SIGTERM/SIGHUP (when nobody else
handles them), and by libfuse's ``auto_unmount`` helper when the owner is SIGKILLed. As a
last line, :func:`clean_stale_mounts` — run before every new mount — unmounts and deletes
the directories of owners that are gone.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

log = logging.getLogger("mirrord.fs.mount")

#: Default state root for root: a tmpfs that a reboot clears along with every mount.
SYSTEM_STATE_ROOT = Path("/run/mirrord/mounts")
OWNER_FILE = "owner.json"
#: A hidden staging directory this old was left by a start that died before finishing.
STAGING_GRACE = 60.0
MOUNTPOINT_NAME = "mnt"

_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int


def default_state_root() -> Path:
    """``/run/mirrord/mounts`` for root, else under ``$XDG_RUNTIME_DIR`` or the temp dir."""
    if os.geteuid() == 0:
        return SYSTEM_STATE_ROOT
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "mirrord" / "mounts"
    return Path(tempfile.gettempdir()) / f"mirrord-{os.geteuid()}" / "mounts"


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks after boot) of ``pid``; ``None`` if it does not exist.

    Together with the pid it names one process: a recycled pid has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


@attrs.frozen
class MountOwner:
    """Who owns a session mount (``owner.json``)."""

    pid: int
    start_time: int
    mountpoint: str

    def alive(self) -> bool:
        """True while the owning process (not a recycled pid) is running."""
        return process_start_time(self.pid) == self.start_time


def mounted_paths() -> set[str]:
    """Mountpoints in this mount namespace (``/proc/self/mountinfo``), unescaped."""
    paths = set()
    with open("/proc/self/mountinfo", "rb") as info:
        for line in info:
            field = line.split(b" ")[4]
            # mountinfo escapes space, tab, newline and backslash as octal.
            for code in (b"\\040", b"\\011", b"\\012", b"\\134"):
                field = field.replace(code, bytes([int(code[1:], 8)]))
            paths.add(os.fsdecode(field))
    return paths


def is_mounted(path: str | Path) -> bool:
    """True if ``path`` is a mountpoint, even of a FUSE server that died (ENOTCONN)."""
    return os.path.abspath(path) in mounted_paths()


def fuse_connection_id(path: str | Path) -> int | None:
    """The kernel's FUSE connection number of the mount at ``path`` (its device minor)."""
    try:
        return os.minor(os.stat(path).st_dev)
    except OSError:
        return None


def abort_fuse_connection(connection: int) -> bool:
    """Abort a FUSE connection (fusectl): its pending and future requests fail at once."""
    try:
        with open(f"/sys/fs/fuse/connections/{connection}/abort", "w") as abort:
            abort.write("1")
    except OSError:
        return False
    return True


def unmount(path: str | Path, *, lazy: bool = False) -> None:
    """Unmount ``path``; ``lazy`` detaches it even while files on it are open.

    Raises :class:`OSError` (EBUSY when busy and not lazy). Root calls umount2 directly;
    others go through the setuid ``fusermount3``.
    """
    target = os.fspath(path)
    if os.geteuid() == 0:
        if _libc.umount2(os.fsencode(target), _MNT_DETACH if lazy else 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"umount {target}: {os.strerror(code)}")
        return
    argv = ["fusermount3", "-u", "-q", *(["-z"] if lazy else []), target]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        code = errno.EBUSY if "busy" in result.stderr else errno.EIO
        raise OSError(code, f"fusermount3 -u {target}: {result.stderr.strip()}")


def force_unmount(path: str | Path) -> None:
    """Unmount ``path`` whatever holds it: normally if possible, else lazily."""
    try:
        unmount(path)
    except OSError as err:
        if err.errno in (errno.EINVAL, errno.ENOENT) and not is_mounted(path):
            return
        unmount(path, lazy=True)


def stop_auto_unmount_helper(mountpoint: str | Path) -> bool:
    """End this process's ``fusermount3`` auto-unmount helper for ``mountpoint``.

    libfuse starts it as our child and never waits for it: it stays until this process
    exits, to unmount after a crash. Once the mount is closed normally it has nothing left
    to do, so a long-lived process (many mounts) would collect them.
    """
    target = os.fsencode(os.path.abspath(mountpoint))
    stopped = False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) != os.getpid() or not argv or not argv[0].endswith(b"fusermount3"):
            continue
        if target not in argv:
            continue
        pid = int(entry.name)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        stopped = True
    return stopped


def _remove_tree(directory: Path) -> None:
    mountpoint = directory / MOUNTPOINT_NAME
    if is_mounted(mountpoint):
        # Never rmtree across a live mount: it would delete the target's files.
        raise OSError(errno.EBUSY, f"{mountpoint} is still mounted")
    shutil.rmtree(directory, ignore_errors=True)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def read_owner(directory: Path) -> MountOwner | None:
    """The owner recorded in ``directory``; ``None`` if missing or unreadable."""
    try:
        data = json.loads((directory / OWNER_FILE).read_text())
        return MountOwner(int(data["pid"]), int(data["start_time"]), str(data["mountpoint"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clean_stale_mounts(state_root: Path | None = None) -> list[str]:
    """Unmount and delete the session mounts whose owners are gone; returns their paths.

    Directories are renamed into place with their owner file, so one without a readable
    owner is debris of a crash and is removed too (unless something is mounted on it).
    """
    root = state_root or default_state_root()
    cleaned = []
    try:
        entries = [entry for entry in root.iterdir() if entry.is_dir()]
    except FileNotFoundError:
        return cleaned
    directories = []
    for entry in entries:
        if not entry.name.startswith("."):
            directories.append(entry)
        elif _older_than(entry, STAGING_GRACE):
            # A start that died before renaming its directory into place; never mounted.
            shutil.rmtree(entry, ignore_errors=True)
    for directory in sorted(directories):
        owner = read_owner(directory)
        if owner is not None and owner.alive():
            continue
        mountpoint = owner.mountpoint if owner else str(directory / MOUNTPOINT_NAME)
        try:
            if is_mounted(mountpoint):
                if owner is None:
                    continue
                force_unmount(mountpoint)
            if is_mounted(directory / MOUNTPOINT_NAME):
                force_unmount(directory / MOUNTPOINT_NAME)
            _remove_tree(directory)
        except OSError as err:
            log.warning("cannot clean the stale mirrord mount %s: %s", mountpoint, err)
            continue
        log.info("cleaned the stale mirrord mount %s (owner %s)", mountpoint, owner)
        cleaned.append(mountpoint)
    return cleaned


class MountDirectory:
    """The private directory of one session mount, with its owner record.

    It is prepared under a hidden name and renamed into place, so a directory without its
    owner file is never a live session's.
    """

    def __init__(self, state_root: Path, session_id: str, mountpoint: Path | None) -> None:
        state_root.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.directory = state_root / session_id
        self.mountpoint = mountpoint or self.directory / MOUNTPOINT_NAME
        self._own_mountpoint = mountpoint is None
        # mode 0700: the target's files are visible to this user only.
        staging = Path(tempfile.mkdtemp(prefix=f".{session_id}.", dir=state_root))
        try:
            if self._own_mountpoint:
                (staging / MOUNTPOINT_NAME).mkdir(mode=0o700)
            start_time = process_start_time(os.getpid())
            assert start_time is not None
            owner = {
                "pid": os.getpid(),
                "start_time": start_time,
                "mountpoint": str(self.mountpoint),
            }
            (staging / OWNER_FILE).write_text(json.dumps(owner))
            staging.rename(self.directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def remove(self) -> None:
        """Delete the directory (and the mountpoint if it created it); never across a mount."""
        _remove_tree(self.directory)


# -- process exit ------------------------------------------------------------------------------

#: Called with ``urgent=True`` from a signal handler: unmount now, wait for nothing.
Cleanup = Callable[[bool], None]
_cleanups: dict[int, Cleanup] = {}
_cleanups_lock = threading.Lock()
_exit_hooks_installed = False


def _run_cleanups(urgent: bool = False) -> None:
    with _cleanups_lock:
        pending = list(_cleanups.values())
        _cleanups.clear()
    for cleanup in pending:
        try:
            cleanup(urgent)
        except Exception:  # exiting: clean up the others regardless
            log.exception("cleaning up a mirrord mount failed")


def _terminate(signum: int, _frame: object) -> None:
    _run_cleanups(urgent=True)
    # Die of the same signal, as without this handler, so the exit status says so.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_exit_hooks() -> None:
    global _exit_hooks_installed
    if _exit_hooks_installed:
        return
    _exit_hooks_installed = True
    import atexit

    atexit.register(_run_cleanups)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        # Only where the signal would kill us silently: a handler someone installed (the
        # supervisor forwarding signals) owns it, and its normal exit path closes mounts.
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _terminate)


def register_cleanup(key: int, cleanup: Cleanup) -> None:
    """Run ``cleanup`` at interpreter exit or a fatal SIGTERM/SIGHUP unless unregistered."""
    with _cleanups_lock:
        _install_exit_hooks()
        _cleanups[key] = cleanup


def unregister_cleanup(key: int) -> None:
    """Forget a cleanup registered with :func:`register_cleanup` (it ran, or is not needed)."""
    with _cleanups_lock:
        _cleanups.pop(key, None)
