"""``skip_processes``: a process whose name (``comm`` or ``argv[0]`` base name) is listed
runs untouched; its children are judged by their own names; a process that execs another
program is judged again."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from interception_helpers import SOURCE_TEXT, TARGET_TEXT, Files

from mirrord_core.interception import run_intercepted, trapped_syscalls
from mirrord_core.interception.process_tree import ProcessSkipper


def test_a_named_process_is_left_alone(
    files: Files, busybox: str, capfd: pytest.CaptureFixture[str]
) -> None:
    source = files.source
    script = f"cat {source}; head -n 100 {source}; {busybox} cat {source}"
    redirect = files.redirect()
    assert run_intercepted(["sh", "-c", script], handlers=[redirect], skip_processes=["cat"]) == 0
    assert capfd.readouterr().out == SOURCE_TEXT + TARGET_TEXT + TARGET_TEXT
    assert len(redirect.redirected) == 2


def test_names_match_comm_or_argv0(
    files: Files, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A program started under another argv[0]: either name selects it."""
    link = tmp_path / "linked-cat"
    link.symlink_to(shutil.which("cat") or "/bin/cat")
    code = f"import os; os.execv({str(link)!r}, ['called-otherwise', {str(files.source)!r}])"
    argv = [sys.executable, "-c", code]
    for skip, expected in [
        ("linked-cat", SOURCE_TEXT),  # comm: the file name exec'd
        ("called-otherwise", SOURCE_TEXT),  # argv[0]
        ("something-else", TARGET_TEXT),
    ]:
        assert run_intercepted(argv, handlers=[files.redirect()], skip_processes=[skip]) == 0
        assert capfd.readouterr().out == expected, skip


def test_skipped_parent_intercepted_children_and_exec(
    files: Files, busybox: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """The skipped shell reads the original; its children, and the program it finally
    execs in its own process, are intercepted."""
    source = files.source
    script = f'read line < {source}; echo "$line"; cat {source}; exec {busybox} cat {source}'
    redirect = files.redirect()
    status = run_intercepted(
        [busybox, "sh", "-c", script], handlers=[redirect], skip_processes=["busybox"]
    )
    # busybox is skipped by name — the shell, and the exec'd busybox cat too — while
    # the GNU cat child is intercepted.
    assert status == 0
    first = SOURCE_TEXT.splitlines()[0]
    assert capfd.readouterr().out == f"{first}\n" + TARGET_TEXT + SOURCE_TEXT

    redirect = files.redirect()
    status = run_intercepted(["sh", "-c", script], handlers=[redirect], skip_processes=["sh"])
    assert status == 0
    assert capfd.readouterr().out == f"{first}\n" + TARGET_TEXT + TARGET_TEXT
    # The shell's own open never reached the handler; the exec'd busybox ran in its pid.
    assert len(redirect.redirected) == 2


def test_skipping_traps_exec() -> None:
    class Opens:
        syscalls = frozenset({"openat"})

    assert trapped_syscalls([Opens()], ["x"]) == {"openat", "execve", "execveat"}  # type: ignore[list-item]
    assert trapped_syscalls([Opens()], []) == {"openat"}  # type: ignore[list-item]
    assert trapped_syscalls([], ["x"]) == frozenset()


def test_long_names_match_the_truncated_comm() -> None:
    skipper = ProcessSkipper(["a-very-long-program-name"])
    comm, argv0 = skipper.process_name(os.getpid())
    assert comm and argv0
    assert not skipper.skips(os.getpid())
    assert ProcessSkipper([comm]).skips(os.getpid())
    assert not ProcessSkipper([]) and ProcessSkipper(["x"])
