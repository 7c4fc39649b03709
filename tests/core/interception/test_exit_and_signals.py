"""The command behaves as if run directly: its exit status, signals sent to mirrord,
stdin, and a terminal (Ctrl-C, an interactive shell). Each test runs the engine in a
separate process, the way ``mirrord run`` does."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from interception_helpers import TARGET_TEXT, Files

from mirrord_core.interception import exit_status, run_intercepted

RunnerArgv = Callable[..., list[str]]
PY = sys.executable


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, timeout=30, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.mark.parametrize(
    ("script", "status"),
    [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 137), ("kill -TERM $$", 143)],
)
def test_exit_status_passes_through(runner_argv: RunnerArgv, script: str, status: int) -> None:
    assert _run(runner_argv("sh", "-c", script)).returncode == status


def test_exit_status_of_a_wait_status() -> None:
    assert exit_status(3 << 8) == 3
    assert exit_status(signal.SIGKILL) == 137


def _start(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    # A session of its own: signals for the runner's process group reach nobody else.
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kwargs
    )


def _wait_for_line(process: subprocess.Popen[bytes], expected: bytes) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line == expected, (line, process.stderr.read() if process.stderr else b"")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_to_mirrord_reach_the_command(runner_argv: RunnerArgv, signum: int) -> None:
    process = _start(runner_argv("sh", "-c", "echo ready; exec sleep 30"))
    try:
        _wait_for_line(process, b"ready\n")
        process.send_signal(signum)
        assert process.wait(10) == 128 + signum  # the runner exits normally, with 128+N
    finally:
        process.kill()
        process.wait()


COUNT_USR1 = """
import os, signal, sys, time
# Take the signals one by one as they come (a Python handler could merge two close ones).
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
if sys.argv[1] == "self":
    os.kill(0, signal.SIGUSR1)  # the whole process group: mirrord too
received = []
deadline = time.monotonic() + 1.0
while (left := deadline - time.monotonic()) > 0:
    if signal.sigtimedwait([signal.SIGUSR1], left):
        received.append(1)
print(len(received), flush=True)
"""


@pytest.mark.parametrize("sender", ["self", "outside"])
def test_a_signal_arrives_once(runner_argv: RunnerArgv, sender: str) -> None:
    """A signal from outside is forwarded once; one the command sent to its own process
    group (mirrord included) is not sent to it a second time."""
    process = _start(runner_argv(PY, "-c", COUNT_USR1, sender))
    try:
        _wait_for_line(process, b"ready\n")
        if sender == "outside":
            process.send_signal(signal.SIGUSR1)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
    assert (out, process.returncode) == (b"1\n", 0), err


def test_stdin_passes_through(runner_argv: RunnerArgv) -> None:
    data = b"".join(b"line %d\n" % i for i in range(5000))
    result = _run(runner_argv("cat"), input=data)
    assert (result.returncode, result.stdout) == (0, data)
    result = _run(runner_argv("sh", "-c", 'read a; read b; echo "$b $a"'), input=b"one\ntwo\n")
    assert result.stdout == b"two one\n"


class Terminal:
    """A process running in a pseudo-terminal that is its controlling terminal."""

    def __init__(self, argv: list[str]) -> None:
        self.pid, self.master = pty.fork()
        if self.pid == 0:  # pragma: no cover - the child execs at once
            try:
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.output = b""

    def read_until(self, expected: bytes, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while expected not in self.output:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{expected!r} not in {self.output!r}"
            if select.select([self.master], [], [], remaining)[0]:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the terminal's other side is closed
                    chunk = b""
                assert chunk, f"{expected!r} not in {self.output!r}"
                self.output += chunk
        return self.output

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._drain()
                return exit_status(status)
            # Keep the terminal drained so the process never blocks writing to it.
            if select.select([self.master], [], [], 0.05)[0]:
                with contextlib.suppress(OSError):
                    self.output += os.read(self.master, 4096)
        raise AssertionError(f"the process did not exit; output {self.output!r}")

    def _drain(self) -> None:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.master)


COUNT_SIGINT = """
import signal, time
# Take SIGINTs one by one as they come (a Python handler could merge two close ones).
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
print("ready", flush=True)
received = []
deadline = time.monotonic() + 1.0
while (left := deadline - time.monotonic()) > 0:
    info = signal.sigtimedwait([signal.SIGINT], left)
    if info:
        received.append(info.si_code)
print("count", len(received), flush=True)
"""


def test_ctrl_c_on_the_terminal_arrives_once(runner_argv: RunnerArgv) -> None:
    """The terminal signals its whole foreground group — mirrord and the command — so
    mirrord does not forward what the command already got."""
    terminal = Terminal(runner_argv(PY, "-c", COUNT_SIGINT))
    try:
        terminal.read_until(b"ready")
        terminal.write(b"\x03")
        assert terminal.wait() == 0
        assert b"count 1\r\n" in terminal.output, terminal.output
    finally:
        terminal.close()


def test_an_interactive_shell(runner_argv: RunnerArgv, files: Files) -> None:
    """An interactive shell on the terminal, with its opens intercepted."""
    terminal = Terminal(runner_argv("--redirect", str(files.source), str(files.target), "sh", "-i"))
    try:
        terminal.write(b"echo $((6 * 7))\n")
        terminal.read_until(b"42")
        terminal.write(f"cat {files.source}\n".encode())
        terminal.read_until(TARGET_TEXT.strip().encode())
        terminal.write(b"exit 5\n")
        assert terminal.wait() == 5
    finally:
        terminal.close()


def test_the_runner_restores_its_signal_state(capfd: pytest.CaptureFixture[str]) -> None:
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert run_intercepted(["true"]) == 0
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask


def test_redirect_in_a_separate_runner(
    runner_argv: RunnerArgv, files: Files, tmp_path: Path
) -> None:
    result = _run(
        runner_argv("--redirect", str(files.source), str(files.target), "cat", str(files.source))
    )
    assert (result.returncode, result.stdout.decode()) == (0, TARGET_TEXT)
