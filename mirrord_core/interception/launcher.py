"""Starting the user's command under a seccomp filter whose listener the supervisor holds.

The child of a ``fork`` sets ``PR_SET_NO_NEW_PRIVS`` (which lets an unprivileged process
install a filter), installs the filter with ``SECCOMP_FILTER_FLAG_NEW_LISTENER``, passes
the listener fd to the parent, waits for the parent's go-ahead (its supervisor is running
by then), and ``execve``s the command. The filter, and so the interception, is inherited
by every thread and process the command creates.

Two details of the child:

- The filter may trap ``sendmsg`` — the very call that passes the listener fd. A trapped
  call would wait for a supervisor that cannot exist before the fd arrives. So a helper
  thread, started *before* the filter is installed (a new thread inherits its creator's
  filter, an existing one does not), passes the fd and receives the go-ahead.
- Between ``fork`` and ``exec`` of a multi-threaded parent only the forking thread exists
  in the child; locks other threads held stay locked. The child therefore runs only
  pre-imported code that takes no such lock: ctypes calls, socket calls, ``os`` calls.

Messages on the ``SOCK_SEQPACKET`` pair: child → parent ``L`` with the listener fd
(``SCM_RIGHTS``) or ``E{json}`` for a failure (exec included); parent → child ``G``. A
successful exec closes the child's end (close-on-exec), which the parent reads as EOF.
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import json
import os
import signal
import socket
from collections.abc import Iterable, Mapping, Sequence

from mirrord_core.interception import kernel
from mirrord_core.interception import seccomp_abi as abi
from mirrord_core.interception.bpf_filter import CompiledFilter
from mirrord_core.user_errors import UserError

PR_SET_PDEATHSIG = 1
#: Python ignores these at startup; a command must start with their default action
#: (``subprocess`` restores them too).
_PYTHON_IGNORED = (signal.SIGPIPE, signal.SIGXFSZ)


class LaunchError(UserError):
    """The command could not be started.

    ``errno`` is the failing call's errno, ``exit_status`` what a shell would report
    (127: not found, 126: not executable).
    """

    def __init__(self, message: str, error_number: int = 0) -> None:
        super().__init__(message)
        self.errno = error_number

    @property
    def exit_status(self) -> int:
        """The status a shell gives a command it cannot start."""
        return 127 if self.errno in (errno.ENOENT, errno.ENOTDIR) else 126


class LaunchedCommand:
    """A started command: its pid and, until the supervisor takes it, the listener fd."""

    def __init__(self, pid: int, listener_fd: int, control: socket.socket) -> None:
        self.pid = pid
        self.listener_fd = listener_fd
        self._control = control

    def go(self) -> None:
        """Let the command exec; raise :class:`LaunchError` if the exec fails.

        Call it once the supervisor runs: the exec itself may be trapped.
        """
        try:
            self._control.send(b"G")
            message = self._control.recv(65536)
        finally:
            self._control.close()
        if message:
            _reap(self.pid)
            raise _launch_error(message)

    def abandon(self) -> None:
        """Kill the child before it exec'd (the supervisor could not start)."""
        self._control.close()
        _kill_and_reap(self.pid)


def launch(
    argv: Sequence[str],
    compiled_filter: CompiledFilter,
    filter_flags: int,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
    signal_dispositions: Mapping[int, object] | None = None,
    signal_mask: Iterable[int] = (),
    timeout: float = 30.0,
) -> LaunchedCommand:
    """Fork the command under ``compiled_filter``; it waits for :meth:`LaunchedCommand.go`.

    ``env`` is the command's environment (default: this process's); ``PATH`` lookup of
    ``argv[0]`` uses its ``PATH``. File descriptors other than 0, 1, 2 and ``pass_fds``
    are closed. ``signal_dispositions`` restores handlers the caller replaced (signals
    this process ignores stay ignored in the command, as with a direct run);
    ``signal_mask`` is the command's initial signal mask (the caller's own, before it
    blocked signals to forward them). ``timeout`` bounds the wait for the listener.
    """
    if not argv:
        raise ValueError("no command to run")
    program = os.fsencode(argv[0])
    arguments = [os.fsencode(a) for a in argv]
    environment = None
    if env is not None:
        environment = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dispositions = dict(signal_dispositions or {})
    mask = set(signal_mask)
    keep = sorted({child_end.fileno(), *pass_fds})

    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which always execs or exits
        parent_end.close()
        _child(
            program,
            arguments,
            environment,
            compiled_filter,
            filter_flags,
            child_end,
            keep,
            pass_fds,
            dispositions,
            mask,
            cwd,
        )
    child_end.close()
    parent_end.settimeout(timeout)
    try:
        message, fds, _flags, _address = socket.recv_fds(parent_end, 65536, 1)
    except TimeoutError:
        parent_end.close()
        _kill_and_reap(pid)
        raise LaunchError(
            f"the command's starter did not install the seccomp filter within {timeout}s"
        ) from None
    except BaseException:
        parent_end.close()
        _kill_and_reap(pid)
        raise
    parent_end.settimeout(None)
    if message == b"L" and len(fds) == 1:
        return LaunchedCommand(pid, fds[0], parent_end)
    for fd in fds:
        os.close(fd)
    parent_end.close()
    _reap(pid)
    if message.startswith(b"E"):
        raise _launch_error(message)
    raise LaunchError("the command's starter exited before installing the seccomp filter")


def _launch_error(message: bytes) -> LaunchError:
    try:
        report = json.loads(message[1:])
        return LaunchError(str(report["message"]), int(report["errno"]))
    except (ValueError, KeyError, TypeError):
        return LaunchError(f"the command could not be started: {message!r}")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _child(  # pragma: no cover - runs in the forked child
    program: bytes,
    arguments: list[bytes],
    environment: dict[bytes, bytes] | None,
    compiled_filter: CompiledFilter,
    filter_flags: int,
    control: socket.socket,
    keep: list[int],
    pass_fds: Sequence[int],
    dispositions: dict[int, object],
    mask: set[int],
    cwd: str | None,
) -> None:
    """The child between fork and exec; never returns."""
    stage = "prepare"
    try:
        for signum, handler in dispositions.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        for signum in _PYTHON_IGNORED:
            if signum not in dispositions:
                signal.signal(signum, signal.SIG_DFL)
        _close_fds(keep)
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        if cwd is not None:
            stage = "chdir"
            os.chdir(cwd)
        # The command cannot work without its supervisor: it dies with this process
        # (mirrord's own layer ends the app when its proxy goes away, too).
        parent = os.getppid()
        kernel.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

        # The helper thread exists before the filter does, so the filter does not apply
        # to it: it can pass the listener with sendmsg even if the filter traps sendmsg.
        listener: list[int] = []
        filter_ready = _thread.allocate_lock()
        filter_ready.acquire()
        handed_over = _thread.allocate_lock()
        handed_over.acquire()
        outcome: list[bytes] = []

        def hand_over() -> None:
            try:
                filter_ready.acquire()
                if listener:
                    socket.send_fds(control, [b"L"], listener)
                    outcome.append(control.recv(1))
            except BaseException:
                outcome.append(b"")
            finally:
                handed_over.release()

        _thread.start_new_thread(hand_over, ())
        stage = "seccomp"
        try:
            kernel.prctl(abi.PR_SET_NO_NEW_PRIVS, 1)
            listener.append(
                kernel.seccomp(abi.SECCOMP_SET_MODE_FILTER, filter_flags, compiled_filter.pointer())
            )
        finally:
            filter_ready.release()
        handed_over.acquire()
        os.close(listener[0])
        if outcome != [b"G"]:
            os._exit(1)  # the parent went away, or gave up
        stage = "exec"
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if environment is None:
            os.execvp(program, arguments)
        else:
            os.execvpe(program, arguments, environment)  # type: ignore[arg-type]
    except BaseException as error:
        _report(control, stage, program, error)
    os._exit(127)


def _close_fds(keep: list[int]) -> None:  # pragma: no cover - runs in the forked child
    low = 3
    for fd in keep:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 1 << 20)


def _report(  # pragma: no cover - runs in the forked child
    control: socket.socket, stage: str, program: bytes, error: BaseException
) -> None:
    number = getattr(error, "errno", None) or 0
    name = os.fsdecode(program)
    if stage == "exec" and number in (errno.ENOENT, errno.ENOTDIR) and b"/" not in program:
        message = f"{name}: command not found"
    elif stage == "exec":
        message = f"{name}: cannot execute: {os.strerror(number) if number else error}"
    elif stage == "seccomp":
        message = f"cannot install the seccomp filter: {error}"
    else:
        message = f"cannot start {name} ({stage}): {error}"
    payload = b"E" + json.dumps({"errno": number, "message": message}).encode()
    # write(2) rather than send(2): the filter is installed by now, and handlers of
    # network features trap sendto.
    with contextlib.suppress(OSError):
        os.write(control.fileno(), payload)
