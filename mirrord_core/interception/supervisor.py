"""The notification loop: receive each trapped syscall and hand it to its handlers.

The loop runs on its own thread and never waits for anything but the kernel. Handlers are
looked up in a table built once, by syscall number; a handler that needs the network
returns :data:`~mirrord_core.interception.answers.DEFERRED` and answers later from
another thread.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import select
import threading
from collections.abc import Collection, Iterable, Sequence

from mirrord_core.handler_protocols import SyscallHandler
from mirrord_core.interception import capabilities, kernel
from mirrord_core.interception import seccomp_abi as abi
from mirrord_core.interception.answers import CONTINUE, DEFERRED
from mirrord_core.interception.notification import Listener, Notification
from mirrord_core.interception.process_tree import EXEC_SYSCALLS, ProcessSkipper
from mirrord_core.interception.tracee_memory import TraceeMemory

log = logging.getLogger(__name__)


def trapped_syscalls(
    handlers: Iterable[SyscallHandler], skip_processes: Iterable[str] = ()
) -> frozenset[str]:
    """The syscall names the filter must trap for ``handlers`` and ``skip_processes``."""
    names: set[str] = set()
    for handler in handlers:
        names |= set(handler.syscalls)
    unknown = names - abi.KNOWN_SYSCALLS
    if unknown:
        raise ValueError(f"handlers ask for unknown syscalls: {', '.join(sorted(unknown))}")
    if names and any(skip_processes):
        # A process's name changes when it execs: the skip cache must hear about it.
        names |= EXEC_SYSCALLS
    return frozenset(names)


def trap_conditions(handlers: Iterable[SyscallHandler]) -> dict[str, int]:
    """Syscall name -> argument index, for the syscalls to trap only when that argument is
    non-zero: those every handler of them declares so (``trap_only_if_set``)."""
    conditions: dict[str, int | None] = {}
    for handler in handlers:
        declared = getattr(handler, "trap_only_if_set", None) or {}
        for name in handler.syscalls:
            argument = declared.get(name)
            if conditions.setdefault(name, argument) != argument:
                conditions[name] = None  # handlers disagree: trap it always
    return {name: argument for name, argument in conditions.items() if argument is not None}


class Supervisor:
    """Answers the notifications of one seccomp listener.

    ``handlers`` are asked in order for each syscall they declare; the first answer that
    is not ``None`` wins; with no answer the syscall continues natively. Processes named
    in ``skip_processes`` always continue.
    """

    def __init__(
        self,
        listener_fd: int,
        handlers: Sequence[SyscallHandler],
        skip_processes: Iterable[str] = (),
        arch: str | None = None,
        notif_size: int | None = None,
        sync_wake_up: bool = True,
        blocking_recv: bool | None = None,
    ) -> None:
        table = abi.syscall_table(arch)
        self._names = {number: name for name, number in table.items()}
        self._skipper = ProcessSkipper(skip_processes)
        self.syscalls = trapped_syscalls(handlers, self._skipper.names)
        dispatch: dict[int, list[SyscallHandler]] = {}
        for handler in handlers:
            for name in handler.syscalls:
                if name in table:
                    dispatch.setdefault(table[name], []).append(handler)
        self._dispatch = {number: tuple(found) for number, found in dispatch.items()}
        self._exec_numbers = frozenset(table[n] for n in EXEC_SYSCALLS if n in table)
        self._continue_paths = _continue_paths(self._dispatch, self._names)

        self._memory = TraceeMemory()
        self._listener = Listener(listener_fd, self._memory)
        self._notif_size = max(notif_size or 0, ctypes.sizeof(abi.SeccompNotif))
        if blocking_recv is None:
            blocking_recv = capabilities.probe().recv_ends_with_tracees
        self._blocking_recv = blocking_recv
        self._thread: threading.Thread | None = None
        self._tracees_gone = threading.Event()
        self._logged_failures: set[tuple[int, type]] = set()
        #: Whether ``SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`` is on for this listener.
        self.sync_wake_up = sync_wake_up and self._enable_sync_wake_up()
        #: Notifications received so far.
        self.received = 0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the notification thread."""
        if self._thread is not None:
            raise RuntimeError("the supervisor is already running")
        self._thread = threading.Thread(target=self._run, name="mirrord-seccomp", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Wait up to ``timeout`` seconds for the notification thread to end; whether it did.

        The thread ends, closing the listener, once no task uses the filter any more.
        Tasks still running (descendants that outlived the command) go on being served in
        the background for as long as this process lives.
        """
        if self._thread is None:
            self._close()
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.debug("tracees are still running: serving their syscalls in the background")
            return False
        return True

    def wait_for_tracees(self, timeout: float | None = None) -> bool:
        """Wait until no task uses the filter any more; ``False`` on timeout."""
        return self._tracees_gone.wait(timeout)

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the loop ----------------------------------------------------------------------

    def _enable_sync_wake_up(self) -> bool:
        try:
            # SET_FLAGS takes the flags as the argument itself, not through a pointer.
            kernel.ioctl(
                self._listener.fd,
                abi.SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                abi.SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
            )
        except OSError as error:
            log.debug(
                "SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP unavailable (%s; Linux ≥ 6.6 has it): "
                "trapped syscalls are slower",
                error.strerror,
            )
            return False
        return True

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # pragma: no cover - the loop catches per notification
            log.exception("the seccomp notification loop failed")
        finally:
            self._close()
            self._tracees_gone.set()

    def _close(self) -> None:
        self._listener.close()
        self._memory.close()

    def _orphaned(self, fd: int) -> bool:
        """Whether no task uses the filter any more (its listener reports POLLHUP)."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return any(events & select.POLLHUP for _fd, events in poller.poll(0))

    def _loop(self) -> None:
        listener = self._listener
        fd = listener.fd
        buffer = bytearray(self._notif_size)
        zeros = bytes(self._notif_size)
        unpack = abi.NOTIF_FORMAT.unpack_from
        continue_response = abi.RESP_FORMAT.pack
        respond = abi.SECCOMP_IOCTL_NOTIF_SEND
        continue_flag = abi.SECCOMP_USER_NOTIF_FLAG_CONTINUE
        names = self._names
        dispatch = self._dispatch
        continue_paths = self._continue_paths
        memory = self._memory
        read_string = memory.read_string
        skipper = self._skipper if self._skipper else None
        blocking = self._blocking_recv
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            if not blocking:
                # Before Linux 6.6 a RECV waiting for a notification does not return when
                # the last tracee exits: wait in poll, which reports POLLHUP then.
                events = poller.poll()[0][1]
                if not events & select.POLLIN:
                    return  # POLLHUP: no task uses the filter any more
            # The kernel rejects a RECV buffer that is not all zeros (EINVAL).
            buffer[:] = zeros
            try:
                fcntl.ioctl(fd, abi.SECCOMP_IOCTL_NOTIF_RECV, buffer, True)
            except OSError as error:
                if error.errno == errno.ENOENT:
                    # The tracee was killed (or, without WAIT_KILLABLE_RECV, signalled)
                    # before we received its notification — or there are no tracees left.
                    if self._orphaned(fd):
                        return
                elif error.errno != errno.EINTR:
                    log.warning("receiving a seccomp notification failed: %s", error)
                continue
            self.received += 1
            fields = unpack(buffer)
            nr = fields[3]
            last_string = None
            paths = continue_paths.get(nr)
            if paths is not None and fields[paths[0]]:
                # The hottest path (a program's stats of its own files): one read of the
                # path and one lookup, then the answer — no objects, no handler call.
                # (A task that died meanwhile gets an answer nobody waits for.)
                address = fields[paths[0]]
                opens = memory.opens
                try:
                    path = read_string(fields[1], address)
                except OSError:
                    path = None  # the handler reads it again, and decides
                if path is not None:
                    if path in paths[1]:
                        try:
                            fcntl.ioctl(
                                fd, respond, continue_response(fields[0], 0, 0, continue_flag)
                            )
                        except OSError as error:
                            if error.errno != errno.ENOENT:
                                log.warning("answering %d failed: %s", fields[0], error)
                        continue
                    if memory.opens == opens:
                        # Kept for the handler; a new fd (the task id may be another
                        # task's) is read again, and checked, by Notification.read_string.
                        last_string = (address, path)
            notification = Notification(listener, fields, names.get(nr) or str(nr))
            notification._last_string = last_string
            # Written out inline: this runs for every trapped syscall.
            handler = None
            try:
                answer = None
                if skipper is None or not self._skipped(notification, skipper):
                    for handler in dispatch.get(nr, ()):
                        answer = handler.handle(notification)
                        if answer is not None:
                            break
                handler = None
                if answer is None or answer is CONTINUE:
                    # Nobody wants it, or it runs natively (the most common answer):
                    # answered here, without the listener's lock (stop() closes the
                    # listener only after this thread ended) or any further call.
                    notification._claim()
                    fcntl.ioctl(fd, respond, continue_response(fields[0], 0, 0, continue_flag))
                elif answer is not DEFERRED:
                    answer.deliver(notification)
            except OSError as error:
                if handler is not None:
                    self._handler_failed(handler, notification, error)
                elif error.errno != errno.ENOENT:  # ENOENT: the tracee stopped waiting
                    log.warning("answering %r failed: %s", notification, error)
            except Exception as error:
                if handler is not None:
                    self._handler_failed(handler, notification, error)
                else:
                    log.exception("answering %r failed", notification)
                    self._answer_anyway(notification)

    def _skipped(self, notification: Notification, skipper: ProcessSkipper) -> bool:
        if notification.nr in self._exec_numbers:
            return skipper.skips_exec(notification.pid)
        return skipper.skips(notification.pid)

    def _handler_failed(
        self, handler: SyscallHandler, notification: Notification, error: Exception
    ) -> None:
        self._log_handler_failure(handler, notification, error)
        self._answer_anyway(notification)

    def _log_handler_failure(
        self, handler: SyscallHandler, notification: Notification, error: Exception
    ) -> None:
        # A handler that fails on every call would flood the log: the traceback once per
        # handler and exception type, then one line at debug level.
        key = (id(handler), type(error))
        if key in self._logged_failures:
            log.debug("%r failed on %r: %s", handler, notification, error)
            return
        self._logged_failures.add(key)
        log.error(
            "%r failed on %r; the syscall runs natively", handler, notification, exc_info=error
        )

    @staticmethod
    def _answer_anyway(notification: Notification) -> None:
        # Whatever went wrong, a tracee must not wait forever.
        if notification.answered:
            return
        try:
            notification.respond_continue()
        except Exception:
            log.exception("could not answer %r", notification)


def _continue_paths(
    dispatch: dict[int, tuple[SyscallHandler, ...]], names: dict[int, str]
) -> dict[int, tuple[int, Collection[bytes]]]:
    """Syscall number -> (index of the path argument in ``struct seccomp_notif``'s fields,
    the paths that always continue), for the syscalls whose *only* handler declares such
    paths (``continue_paths``; with several handlers the order of asking must hold)."""
    table = {}
    for number, handlers in dispatch.items():
        if len(handlers) != 1:
            continue
        declared = getattr(handlers[0], "continue_paths", None) or {}
        entry = declared.get(names[number])
        if entry is not None:
            argument, paths = entry
            table[number] = (_FIRST_ARGUMENT + argument, paths)
    return table


#: Where the six syscall arguments start in the unpacked ``struct seccomp_notif``.
_FIRST_ARGUMENT = 6
