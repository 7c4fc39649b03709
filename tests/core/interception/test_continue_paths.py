"""The supervisor's fast path: paths a handler declares in ``continue_paths`` continue
without the handler being asked; everything else still reaches it, with the string the
supervisor read already at hand."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest

from mirrord_core.interception import Errno, Notification, TraceeMemoryError, run_intercepted

PY = sys.executable
STAT_SYSCALLS = frozenset({"stat", "lstat", "newfstatat", "statx"})
#: Index of the path argument of each stat syscall.
PATH_ARGUMENT = {"stat": 0, "lstat": 0, "newfstatat": 1, "statx": 1}

STATS = """
import json, os, sys
results = {}
for path in sys.argv[2:]:
    sizes = []
    for _ in range(int(sys.argv[1])):
        try:
            sizes.append(os.stat(path).st_size)
        except OSError as error:
            sizes.append(-error.errno)
    results[path] = sizes
print(json.dumps(results))
"""


class StatRecorder:
    """Records the stat paths it is asked about; answers EACCES for ``refused`` paths."""

    syscalls = STAT_SYSCALLS

    def __init__(self, always_continue: set[bytes], refused: set[bytes] = frozenset()) -> None:  # type: ignore[assignment]
        self.continue_paths = {
            name: (index, always_continue) for name, index in PATH_ARGUMENT.items()
        }
        self.refused = refused
        self.seen: list[bytes] = []
        self.again: list[bytes] = []
        self.too_long: list[int] = []

    def handle(self, notification: Notification) -> Errno | None:
        address = notification.args[PATH_ARGUMENT[notification.syscall]]
        path = notification.read_string(address)
        self.seen.append(path)
        # A second read of the same address gives the same string; a limit shorter than
        # it still fails as a fresh read would.
        self.again.append(notification.read_string(address))
        try:
            notification.read_string(address, max_length=2)
        except TraceeMemoryError as error:
            self.too_long.append(error.errno)
        return Errno(errno.EACCES) if path in self.refused else None


def run_stats(
    handlers: list[object], paths: list[Path], count: int, capfd: pytest.CaptureFixture[str]
) -> dict[str, list[int]]:
    argv = [PY, "-c", STATS, str(count), *map(str, paths)]
    assert run_intercepted(argv, handlers=handlers) == 0  # type: ignore[arg-type]
    return json.loads(capfd.readouterr().out)  # type: ignore[no-any-return]


def test_listed_paths_continue_without_asking_the_handler(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    listed = tmp_path / "listed"
    listed.write_bytes(b"12345")
    other = tmp_path / "other"
    other.write_bytes(b"123")
    refused = tmp_path / "refused"
    refused.write_bytes(b"1")
    handler = StatRecorder({os.fsencode(listed)}, refused={os.fsencode(refused)})
    results = run_stats([handler], [listed, other, refused], 20, capfd)
    # The listed path ran natively every time, without the handler.
    assert results[str(listed)] == [5] * 20
    assert os.fsencode(listed) not in handler.seen
    # The others reached the handler, which still decides.
    assert results[str(other)] == [3] * 20
    assert results[str(refused)] == [-errno.EACCES] * 20
    assert handler.seen.count(os.fsencode(other)) == 20
    assert handler.seen.count(os.fsencode(refused)) == 20
    assert handler.again == handler.seen
    longer = [seen for seen in handler.seen if len(seen) >= 2]  # 2 bytes hold 1 and a NUL
    assert handler.too_long == [errno.ENAMETOOLONG] * len(longer)


def test_paths_listed_later_take_the_fast_path(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The handler may add paths while the command runs (a decision it made once)."""
    path = tmp_path / "decided-once"
    path.write_bytes(b"ab")

    class Learner(StatRecorder):
        def handle(self, notification: Notification) -> Errno | None:
            answer = super().handle(notification)
            self.continue_paths["newfstatat"][1].add(self.seen[-1])
            self.continue_paths["statx"][1].add(self.seen[-1])
            return answer

    handler = Learner(set())
    results = run_stats([handler], [path], 30, capfd)
    assert results[str(path)] == [2] * 30
    assert handler.seen.count(os.fsencode(path)) == 1


def test_no_fast_path_when_several_handlers_share_the_syscall(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Handlers are asked in order: a path one handler lists must still reach a handler
    registered before it."""
    path = tmp_path / "shared"
    path.write_bytes(b"abcd")
    first = StatRecorder(set())
    second = StatRecorder({os.fsencode(path)})
    results = run_stats([first, second], [path], 10, capfd)
    assert results[str(path)] == [4] * 10
    assert first.seen.count(os.fsencode(path)) == 10
    assert second.seen.count(os.fsencode(path)) == 10
