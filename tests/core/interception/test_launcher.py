"""Starting the command: the filter, the listener hand-over, the environment the command
starts with, and the errors when it cannot start."""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path

import pytest

from mirrord_core.interception import (
    LaunchError,
    probe,
    run_intercepted,
)
from mirrord_core.interception.bpf_filter import compile_filter
from mirrord_core.interception.capabilities import (
    InterceptionUnsupported,
    KernelCapabilities,
    parse_version,
)
from mirrord_core.interception.launcher import launch
from mirrord_core.interception.supervisor import Supervisor


class Counter:
    """Counts the notifications of the syscalls it declares; answers none."""

    def __init__(self, *syscalls: str) -> None:
        self.syscalls = frozenset(syscalls)
        self.count = 0

    def handle(self, notification: object) -> None:
        self.count += 1


def status_field(text: str, name: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise AssertionError(f"{name} not in /proc/PID/status")


def test_kernel_capabilities() -> None:
    caps = probe()
    caps.require()
    assert caps.user_notif and caps.addfd_send
    assert caps.notif_sizes == (80, 24, 64)
    if caps.version >= (5, 19):
        assert caps.wait_killable_recv
    assert caps.filter_flags & 0x8  # NEW_LISTENER


def test_an_old_kernel_is_refused_clearly() -> None:
    old = KernelCapabilities(
        release="5.10.0-foo",
        version=parse_version("5.10.0-foo"),
        user_notif=True,
        wait_killable_recv=False,
        sync_wake_up=False,
        addfd_send=False,
        notif_sizes=(80, 24, 64),
    )
    with pytest.raises(InterceptionUnsupported, match=r"Linux 5\.14 or newer.*5\.10\.0-foo"):
        old.require()
    assert parse_version("6.18.44-fc-v657") == (6, 18)


def test_the_command_runs_under_the_filter(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """no_new_privs and one seccomp filter; untrapped syscalls never reach the supervisor."""
    counter = Counter("mkdir", "mkdirat")
    code = "print(open('/proc/self/status').read())"
    assert run_intercepted([sys.executable, "-c", code], handlers=[counter]) == 0
    status = capfd.readouterr().out
    assert status_field(status, "NoNewPrivs") == "1"
    assert status_field(status, "Seccomp") == "2"
    assert status_field(status, "Seccomp_filters") == "1"
    # Python started, read files, printed: none of it was mkdir.
    assert counter.count == 0


def test_no_handlers_traps_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    assert run_intercepted(["sh", "-c", "echo plain; exit 4"]) == 4
    assert capfd.readouterr().out == "plain\n"


def test_environment_cwd_and_path_lookup(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "only-here"
    tool.write_text('#!/bin/sh\necho "tool in $PWD with GREETING=$GREETING"\n')
    tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "GREETING": "hello"}
    assert run_intercepted(["only-here"], env=env, cwd=str(tmp_path)) == 0
    assert capfd.readouterr().out == f"tool in {tmp_path} with GREETING=hello\n"


def test_a_missing_command_is_reported(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="no-such-command-xyz: command not found") as caught:
        run_intercepted(["no-such-command-xyz"])
    assert caught.value.errno == errno.ENOENT and caught.value.exit_status == 127
    with pytest.raises(LaunchError, match="No such file or directory") as caught:
        run_intercepted([str(tmp_path / "absent")])
    assert caught.value.exit_status == 127


def test_a_file_that_is_not_executable_is_reported(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(LaunchError, match="cannot execute: Permission denied") as caught:
        run_intercepted([str(script)])
    assert caught.value.exit_status == 126


def test_signal_dispositions_and_fds(capfd: pytest.CaptureFixture[str]) -> None:
    """The command starts like a directly run one: SIGPIPE at its default (Python
    ignores it), nothing blocked, only 0-2 and the passed fds open."""
    leaked_read, leaked_write = os.pipe()
    passed_read, passed_write = os.pipe()
    os.set_inheritable(leaked_read, True)
    try:
        # The programs report on themselves (a shell may block signals while it forks).
        signals = ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]
        assert run_intercepted(signals, pass_fds=[passed_read]) == 0
        assert run_intercepted(["ls", "/proc/self/fd"], pass_fds=[passed_read]) == 0
    finally:
        for fd in (leaked_read, leaked_write, passed_read, passed_write):
            os.close(fd)
    out = capfd.readouterr().out.split()
    assert out[:4] == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]
    fds = {int(fd) for fd in out[4:]}
    # 0-2, the passed pipe, and the directory ls is reading.
    assert {0, 1, 2, passed_read} < fds and leaked_read not in fds and len(fds) == 5


def test_ignored_signals_stay_ignored(capfd: pytest.CaptureFixture[str]) -> None:
    """As with a direct run (``nohup``): a signal this process ignores, the command ignores."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        code = "import signal; print(signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)"
        assert run_intercepted([sys.executable, "-c", code]) == 0
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert capfd.readouterr().out == "True\n"
    assert signal.getsignal(signal.SIGHUP) is previous


def test_trapping_sendmsg_does_not_block_the_hand_over(capfd: pytest.CaptureFixture[str]) -> None:
    """The listener is passed with sendmsg, a syscall the network features trap."""
    counter = Counter("sendmsg", "sendto")
    code = (
        "import socket; a, b = socket.socketpair(); a.sendmsg([b'over sendmsg']);"
        "print(b.recv(100).decode())"
    )
    assert run_intercepted([sys.executable, "-c", code], handlers=[counter]) == 0
    assert capfd.readouterr().out == "over sendmsg\n"
    assert counter.count >= 1


@pytest.mark.parametrize(
    ("blocking_recv", "sync_wake_up"),
    [(True, True), (False, False)],
    ids=["linux-6.6-ways", "older-kernel-ways"],
)
def test_launch_and_supervise_by_hand(
    capfd: pytest.CaptureFixture[str], blocking_recv: bool, sync_wake_up: bool
) -> None:
    """The pieces under run_intercepted: launch waits for go(); the exec is trapped; the
    notification thread ends with the last tracee — waiting in RECV (Linux ≥ 6.6) or in
    poll (earlier kernels), with or without SYNC_WAKE_UP."""
    counter = Counter("execve")
    command = launch(
        ["sh", "-c", "echo launched"], compile_filter({"execve"}), probe().filter_flags
    )
    supervisor = Supervisor(
        command.listener_fd, [counter], blocking_recv=blocking_recv, sync_wake_up=sync_wake_up
    )
    assert supervisor.sync_wake_up == sync_wake_up
    supervisor.start()
    try:
        assert counter.count == 0  # nothing ran before the go-ahead
        command.go()
        _pid, status = os.waitpid(command.pid, 0)
        assert supervisor.wait_for_tracees(5)
    finally:
        assert supervisor.stop()
    assert os.waitstatus_to_exitcode(status) == 0
    assert capfd.readouterr().out == "launched\n"
    assert counter.count >= 1  # the exec of sh itself (one per PATH entry tried)


def test_abandon_before_exec() -> None:
    command = launch(["sh", "-c", "exit 0"], compile_filter(set()), probe().filter_flags)
    os.close(command.listener_fd)
    command.abandon()
    with pytest.raises(ChildProcessError):
        os.waitpid(command.pid, os.WNOHANG)
