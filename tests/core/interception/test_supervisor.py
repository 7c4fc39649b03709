"""The notification loop and the answers: continue, errno, value, injected fds, answers
from other threads, several handlers, failing handlers, tracees that die or are
signalled while a syscall waits, threads, forks and execs."""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from interception_helpers import OPEN_SYSCALLS, SOURCE_TEXT, TARGET_TEXT, Files, open_arguments

from mirrord_core.interception import (
    CONTINUE,
    DEFERRED,
    AlreadyAnswered,
    Errno,
    Notification,
    Value,
    run_intercepted,
)
from mirrord_core.interception.tracee_memory import TraceeMemory, TraceeMemoryError

PY = sys.executable


class PathAnswers:
    """Answers opens (and mkdirs) of given paths with given answers; records what it saw."""

    def __init__(self, answers: dict[str, object], syscalls: frozenset[str] = OPEN_SYSCALLS):
        self.answers = {os.fsencode(k): v for k, v in answers.items()}
        self.syscalls = syscalls
        self.seen: list[bytes] = []

    def handle(self, notification: Notification) -> object:
        if notification.syscall in OPEN_SYSCALLS:
            path, _flags = open_arguments(notification)
        else:
            index = 0 if notification.syscall == "mkdir" else 1
            path = notification.read_string(notification.args[index])
        self.seen.append(path)
        return self.answers.get(path)


def test_continue_leaves_behaviour_unchanged(
    files: Files, capfd: pytest.CaptureFixture[str]
) -> None:
    handler = PathAnswers({str(files.source): CONTINUE})
    code = f"print(open({str(files.source)!r}).read(), end='')"
    assert run_intercepted([PY, "-c", code], handlers=[handler]) == 0
    assert capfd.readouterr().out == SOURCE_TEXT
    # Python's own imports were trapped and continued too.
    assert os.fsencode(files.source) in handler.seen and len(handler.seen) > 5


def test_errno_answers(files: Files, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    made = tmp_path / "made"
    handler = PathAnswers(
        {str(files.source): Errno(errno.EACCES), str(made): Errno(errno.ENOSPC)},
        syscalls=OPEN_SYSCALLS | {"mkdir", "mkdirat"},
    )
    code = f"""
import os
for action in (lambda: open({str(files.source)!r}), lambda: os.mkdir({str(made)!r})):
    try:
        action()
    except OSError as error:
        print(error.errno)
"""
    assert run_intercepted([PY, "-c", code], handlers=[handler]) == 0
    assert capfd.readouterr().out.split() == [str(errno.EACCES), str(errno.ENOSPC)]
    assert not made.exists()


def test_value_answers_skip_the_syscall(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    made = tmp_path / "made"
    handler = PathAnswers({str(made): Value(0)}, syscalls=frozenset({"mkdir", "mkdirat"}))
    code = f"import os; os.mkdir({str(made)!r}); print('mkdir returned')"
    assert run_intercepted([PY, "-c", code], handlers=[handler]) == 0
    assert capfd.readouterr().out == "mkdir returned\n"
    assert not made.exists()  # "succeeded" without running


def test_injected_fd_from_the_loop_and_from_another_thread(
    files: Files, capfd: pytest.CaptureFixture[str]
) -> None:
    code = f"print(open({str(files.source)!r}).read(), end='')"
    for redirect in (files.redirect(), files.redirect(delay=0.2)):
        assert run_intercepted([PY, "-c", code], handlers=[redirect]) == 0
        assert capfd.readouterr().out == TARGET_TEXT
        assert len(redirect.redirected) == 1


def test_deferred_errno_and_value_from_another_thread(
    files: Files, capfd: pytest.CaptureFixture[str]
) -> None:
    class Later:
        syscalls = OPEN_SYSCALLS

        def handle(self, notification: Notification) -> object:
            path, _flags = open_arguments(notification)
            if path != os.fsencode(files.source):
                return None

            def answer() -> None:
                time.sleep(0.1)
                assert notification.respond_errno(errno.ETIMEDOUT)

            threading.Thread(target=answer).start()
            return DEFERRED

    code = f"""
try:
    open({str(files.source)!r})
except OSError as error:
    print(error.errno)
"""
    assert run_intercepted([PY, "-c", code], handlers=[Later()]) == 0
    assert capfd.readouterr().out == f"{errno.ETIMEDOUT}\n"


def test_handlers_are_asked_in_order(files: Files, capfd: pytest.CaptureFixture[str]) -> None:
    passes = PathAnswers({})  # answers nothing: None
    redirect = files.redirect()
    never = PathAnswers({str(files.source): Errno(errno.EPERM)})
    code = f"print(open({str(files.source)!r}).read(), end='')"
    assert run_intercepted([PY, "-c", code], handlers=[passes, redirect, never]) == 0
    assert capfd.readouterr().out == TARGET_TEXT
    assert os.fsencode(files.source) in passes.seen
    assert os.fsencode(files.source) not in never.seen


def test_a_failing_handler_does_not_stop_the_loop(
    files: Files, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        syscalls = OPEN_SYSCALLS
        calls = 0

        def handle(self, notification: Notification) -> object:
            Broken.calls += 1
            raise RuntimeError("handler bug")

    read = f"print(open({str(files.source)!r}).read(), end='')"
    code = f"{read}; {read}"
    with caplog.at_level(logging.DEBUG, logger="mirrord_core.interception"):
        assert run_intercepted([PY, "-c", code], handlers=[Broken()]) == 0
    # Each trapped syscall ran natively; the traceback was logged once.
    assert capfd.readouterr().out == SOURCE_TEXT * 2
    assert Broken.calls > 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "handler bug" in errors[0].exc_text


def test_a_tracee_killed_while_its_syscall_waits(
    files: Files, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The held tracee is killed; the late answer finds nobody; the loop goes on."""
    hold = tmp_path / "hold"
    hold.write_text("held\n")
    outcomes: list[object] = []
    helpers: list[threading.Thread] = []

    class KillWhileWaiting:
        syscalls = OPEN_SYSCALLS

        def handle(self, notification: Notification) -> object:
            path, _flags = open_arguments(notification)
            if path != os.fsencode(hold):
                return None

            def kill_then_answer() -> None:
                os.kill(notification.tgid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while notification.is_valid() and time.monotonic() < deadline:
                    time.sleep(0.01)
                outcomes.append(notification.is_valid())
                outcomes.append(notification.inject_fd(os.open(files.target, os.O_RDONLY)))

            helpers.append(threading.Thread(target=kill_then_answer))
            helpers[-1].start()
            return DEFERRED

    script = f"{PY} -c 'open(\"{hold}\")'; echo victim=$?; cat {files.source}"
    redirect = files.redirect()
    assert run_intercepted(["sh", "-c", script], handlers=[KillWhileWaiting(), redirect]) == 0
    assert capfd.readouterr().out == f"victim=137\n{TARGET_TEXT}"
    helpers[0].join()
    # No longer valid; the late injection found nobody (or a closed listener).
    assert outcomes == [False, None]


def test_a_signal_does_not_restart_a_waiting_syscall(
    files: Files, capfd: pytest.CaptureFixture[str]
) -> None:
    """With WAIT_KILLABLE_RECV a handled signal waits until the answer; the syscall is
    neither interrupted nor restarted (Go's preemption signals depend on this)."""
    seen: list[int] = []

    class SignalWhileWaiting:
        syscalls = OPEN_SYSCALLS

        def handle(self, notification: Notification) -> object:
            path, _flags = open_arguments(notification)
            if path != os.fsencode(files.source):
                return None
            seen.append(notification.id)

            def signal_then_answer() -> None:
                os.kill(notification.tgid, signal.SIGUSR1)
                time.sleep(0.2)
                notification.inject_fd(os.open(files.target, os.O_RDONLY), cloexec=True)

            threading.Thread(target=signal_then_answer).start()
            return DEFERRED

    code = f"""
import signal
signal.signal(signal.SIGUSR1, lambda *a: print("signal handled"))
print(open({str(files.source)!r}).read(), end="")
"""
    assert run_intercepted([PY, "-c", code], handlers=[SignalWhileWaiting()]) == 0
    assert capfd.readouterr().out == f"signal handled\n{TARGET_TEXT}"
    assert len(seen) == 1


def test_threads_of_a_tracee(files: Files, capfd: pytest.CaptureFixture[str]) -> None:
    code = f"""
import threading
results = []
def work():
    for _ in range(20):
        results.append(open({str(files.source)!r}).read())
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(len(results), set(results) == {{{TARGET_TEXT!r}}})
"""
    redirect = files.redirect()
    assert run_intercepted([PY, "-c", code], handlers=[redirect]) == 0
    assert capfd.readouterr().out == "160 True\n"
    assert len(redirect.redirected) == 160
    assert len(set(redirect.redirected)) > 1  # notifications came from several threads


def test_forks_and_execs_stay_intercepted(files: Files, capfd: pytest.CaptureFixture[str]) -> None:
    source = files.source
    script = f"""
read line < {source}; echo "sh: $line"
cat {source}
(cat {source})
sh -c 'cat {source}'
{PY} -c 'import os
if os.fork() == 0:
    print(open("{source}").read(), end="", flush=True)
    os._exit(0)
os.wait()'
exec cat {source}
"""
    redirect = files.redirect()
    assert run_intercepted(["sh", "-c", script], handlers=[redirect]) == 0
    first_line = TARGET_TEXT.splitlines()[0]
    assert capfd.readouterr().out == f"sh: {first_line}\n" + TARGET_TEXT * 5
    # `exec cat` kept the shell's pid: its memory was read through a renewed fd.
    assert redirect.redirected[0] == redirect.redirected[-1]
    assert len(set(redirect.redirected)) == 5


def test_descendants_after_the_command_exited(
    files: Files, capfd: pytest.CaptureFixture[str]
) -> None:
    script = f"(sleep 1; cat {files.source}) &"
    redirect = files.redirect()
    status = run_intercepted(["sh", "-c", script], handlers=[redirect], wait_for_descendants=True)
    assert status == 0
    assert capfd.readouterr().out == TARGET_TEXT
    # Without waiting: the call returns at once, and the background cat is still served.
    redirect = files.redirect()
    started = time.monotonic()
    assert run_intercepted(["sh", "-c", script], handlers=[redirect]) == 0
    assert time.monotonic() - started < 0.9 and capfd.readouterr().out == ""
    deadline = time.monotonic() + 10
    while not redirect.redirected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert capfd.readouterr().out == TARGET_TEXT and redirect.redirected


def test_descendants_after_the_supervisor_process_exited(
    runner_argv: Callable[..., list[str]], files: Files
) -> None:
    """Once the supervising process is gone, trapped syscalls fail with ENOSYS."""
    script = f"(sleep 0.5; cat {files.source} 2>&1 || echo failed) &"
    argv = runner_argv("--redirect", str(files.source), str(files.target), "sh", "-c", script)
    result = subprocess.run(argv, capture_output=True, timeout=30, check=False, text=True)
    # The background job inherited the pipes: communicate waited for it to close them.
    assert result.returncode == 0
    assert re.search("Function not implemented|Error 38", result.stdout + result.stderr)
    assert TARGET_TEXT not in result.stdout


def test_answering_twice_is_an_error(files: Files, capfd: pytest.CaptureFixture[str]) -> None:
    problems: list[BaseException] = []

    class Twice:
        syscalls = OPEN_SYSCALLS

        def handle(self, notification: Notification) -> object:
            path, _flags = open_arguments(notification)
            if path != os.fsencode(files.source):
                return None
            notification.respond_errno(errno.EROFS)
            try:
                notification.respond_continue()
            except AlreadyAnswered as error:
                problems.append(error)
            return DEFERRED

    code = f"""
try:
    open({str(files.source)!r})
except OSError as error:
    print(error.errno)
"""
    assert run_intercepted([PY, "-c", code], handlers=[Twice()]) == 0
    assert capfd.readouterr().out == f"{errno.EROFS}\n"
    assert len(problems) == 1


# -- tracee memory ---------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


@pytest.fixture
def page_before_a_hole() -> tuple[int, int]:
    """(address, size) of a readable page whose next page is not mapped."""
    page = mmap.PAGESIZE
    base = _libc.mmap(
        None,
        2 * page,
        mmap.PROT_READ | mmap.PROT_WRITE,
        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
        -1,
        0,
    )
    assert base not in (None, ctypes.c_void_p(-1).value)
    assert _libc.munmap(base + page, page) == 0
    yield base, page
    _libc.munmap(base, page)


def test_strings_end_at_the_edge_of_mapped_memory(page_before_a_hole: tuple[int, int]) -> None:
    base, page = page_before_a_hole
    memory = TraceeMemory()
    try:
        # A string whose NUL is the very last byte before the hole: read page by page, a
        # read crossing into the hole would fail (EIO) although the string is complete.
        text = b"/etc/hostname"
        start = base + page - len(text) - 1
        ctypes.memmove(start, text + b"\0", len(text) + 1)
        assert memory.read_string(os.getpid(), start) == text
        # A string across a page boundary inside mapped memory.
        ctypes.memmove(base, b"x" * page, page)
        ctypes.memmove(base + page // 2, b"y" * 10 + b"\0", 11)
        assert memory.read_string(os.getpid(), base + 10) == b"x" * (page // 2 - 10) + b"y" * 10
        # No NUL before the hole: EFAULT, as the kernel would answer.
        ctypes.memmove(base + page - 8, b"z" * 8, 8)
        with pytest.raises(TraceeMemoryError) as caught:
            memory.read_string(os.getpid(), base + page - 8)
        assert caught.value.errno == errno.EFAULT
        with pytest.raises(TraceeMemoryError) as caught:
            memory.read_string(os.getpid(), base, max_length=100)
        assert caught.value.errno == errno.ENAMETOOLONG
        with pytest.raises(TraceeMemoryError) as caught:
            memory.read_string(os.getpid(), 0)
        assert caught.value.errno == errno.EFAULT
        # Write, then read back across the page boundary of the mapping's end.
        memory.write(os.getpid(), base + page - 4, b"abcd")
        assert memory.read(os.getpid(), base + page - 4, 4) == b"abcd"
        with pytest.raises(TraceeMemoryError):
            memory.read(os.getpid(), base + page - 4, 8)
    finally:
        memory.close()


def test_memory_of_a_task_that_is_gone() -> None:
    memory = TraceeMemory()
    with pytest.raises(TraceeMemoryError) as caught:
        memory.read(2**22 + 12345, 4096, 8)  # beyond any pid_max: no such task
    assert caught.value.errno == errno.ESRCH
