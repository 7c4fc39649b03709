"""``tracee_chdir.change_directory`` on its own: a handler answers a trapped ``chdir`` by
moving the process into another directory (as the fs handler does with directories on
the mount). The programs check what they see themselves."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from mirrord_core.interception import DEFERRED, Answer, Notification, run_intercepted
from mirrord_fs.local import tracee_chdir
from mirrord_fs.local.tracee_chdir import change_directory, supported

pytestmark = pytest.mark.skipif(not supported(), reason="chdir emulation is x86_64 only")

#: The path the programs pass to chdir; the handler moves them to its ``destination``.
REMOTE = "/mirrord-test-remote-directory"


class MoveInto:
    """Answers ``chdir(REMOTE)`` by moving the caller into ``destination``."""

    syscalls = frozenset({"chdir"})

    def __init__(self, destination: Path, *, before: signal.Signals | None = None) -> None:
        self.destination = destination
        #: A signal sent to the waiting thread before the change (held back meanwhile).
        self.before = before
        self.results: list[bool] = []

    def handle(self, notification: Notification) -> Answer | None:
        if notification.read_string(notification.args[0]) != REMOTE.encode():
            return None
        if self.before is not None:
            os.kill(notification.tgid, self.before)
        directory = os.open(self.destination, os.O_RDONLY)

        def work() -> None:
            try:
                self.results.append(change_directory(notification, directory))
            finally:
                os.close(directory)

        # Any thread will do; the fs handler uses its worker pool.
        threading.Thread(target=work).start()
        return DEFERRED


def _run(code: str, handler: MoveInto, tmp_path: Path) -> str:
    output = tmp_path / "out.txt"
    status = run_intercepted(
        [sys.executable, "-c", code, REMOTE, str(output)], handlers=[handler], cwd=str(tmp_path)
    )
    assert status == 0, output.read_text() if output.exists() else status
    return output.read_text()


def test_the_process_moves_and_its_descriptors_stay_as_they_were(tmp_path: Path) -> None:
    destination = tmp_path / "destination"
    destination.mkdir()
    (destination / "marker.txt").write_text("here\n")
    code = (
        "import os, sys\n"
        "before = sorted(os.listdir('/proc/self/fd'))\n"
        "result = os.chdir(sys.argv[1])\n"
        "after = sorted(os.listdir('/proc/self/fd'))\n"
        "open(sys.argv[2], 'w').write(f'{os.getcwd()} {open(\"marker.txt\").read()!r} '\n"
        "                             f'{before == after}')\n"
    )
    handler = MoveInto(destination)
    assert _run(code, handler, tmp_path) == f"{destination} 'here\\n' True"
    assert handler.results == [True]


def test_a_thread_of_a_multithreaded_process(tmp_path: Path) -> None:
    code = (
        "import os, sys, threading\n"
        "errors = []\n"
        "def change():\n"
        "    try: os.chdir(sys.argv[1])\n"
        "    except OSError as e: errors.append(e)\n"
        "thread = threading.Thread(target=change); thread.start(); thread.join()\n"
        "open(sys.argv[2], 'w').write(f'{os.getcwd()} {errors}')\n"  # threads share the cwd
    )
    assert _run(code, MoveInto(Path("/usr")), tmp_path) == "/usr []"


def test_a_signal_arriving_meanwhile_is_delivered_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[int] = []
    send = tracee_chdir._Tracer.send_held_signals

    def record(tracer: tracee_chdir._Tracer) -> None:
        held.extend(tracer.held_signals)
        send(tracer)

    monkeypatch.setattr(tracee_chdir._Tracer, "send_held_signals", record)
    code = (
        "import os, signal, sys\n"
        "got = []\n"
        "signal.signal(signal.SIGUSR1, lambda *_: got.append('SIGUSR1'))\n"
        "os.chdir(sys.argv[1])\n"
        "open(sys.argv[2], 'w').write(f'{os.getcwd()} {got}')\n"
    )
    handler = MoveInto(Path("/usr"), before=signal.SIGUSR1)
    assert _run(code, handler, tmp_path) == "/usr ['SIGUSR1']"
    assert held == [signal.SIGUSR1]  # held back during the change, then sent again


def test_fchdir_failures_are_the_chdirs(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file.txt"
    not_a_directory.write_text("x")
    code = (
        "import errno, os, sys\n"
        "before = sorted(os.listdir('/proc/self/fd'))\n"
        "try: os.chdir(sys.argv[1]); result = 'changed'\n"
        "except OSError as e: result = errno.errorcode[e.errno]\n"
        "after = sorted(os.listdir('/proc/self/fd'))\n"
        "open(sys.argv[2], 'w').write(f'{result} {os.getcwd()} {before == after}')\n"
    )
    out = _run(code, MoveInto(not_a_directory), tmp_path)
    assert out == f"{errno.errorcode[errno.ENOTDIR]} {tmp_path} True"
