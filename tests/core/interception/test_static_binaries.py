"""Statically linked programs, which LD_PRELOAD-based interception cannot reach: a Go
binary built here with CGO_ENABLED=0 (its runtime preempts goroutines with signals) and
busybox-static (musl)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from interception_helpers import BUSYBOX, TARGET_TEXT, Files, has_interpreter

from mirrord_core.interception import Errno, run_intercepted


def test_the_programs_are_static(go_probe: Path, busybox: str) -> None:
    assert not has_interpreter(go_probe)
    assert not has_interpreter(Path(busybox))


@pytest.mark.parametrize("delay", [None, 0.02], ids=["at-once", "deferred"])
def test_go_under_preemption(
    delay: float | None, files: Files, go_probe: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Eight spinning goroutines keep the runtime sending preemption signals while each
    of 40 opens waits for its answer; every open is trapped exactly once (none aborted
    and restarted) and every one is redirected."""
    redirect = files.redirect(delay=delay)
    argv = [str(go_probe)] + [str(files.source)] * 40
    assert run_intercepted(argv, handlers=[redirect]) == 0
    assert capfd.readouterr().out == TARGET_TEXT * 40
    assert len(redirect.redirected) == 40
    assert redirect.paths.count(str(files.source).encode()) == 40


def test_go_sees_the_errno(files: Files, go_probe: Path, capfd: pytest.CaptureFixture[str]) -> None:
    class Missing:
        syscalls = frozenset({"openat"})

        def handle(self, notification: object) -> object:
            path = notification.read_string(notification.args[1])  # type: ignore[attr-defined]
            return Errno(errno.ENOENT) if path == str(files.source).encode() else None

    assert run_intercepted([str(go_probe), str(files.source)], handlers=[Missing()]) == 2
    assert capfd.readouterr().out == (f"error: open {files.source}: no such file or directory\n")


def test_busybox_shell_pipeline(
    files: Files, busybox: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """A static shell forking and exec'ing static applets: all of them intercepted."""
    source = files.source
    script = (
        f"{BUSYBOX} cat {source} | {BUSYBOX} wc -c; "
        f"{BUSYBOX} head -n 1 {source}; "
        f'read line < {source}; echo "$line"; exit 7'
    )
    redirect = files.redirect()
    assert run_intercepted([busybox, "sh", "-c", script], handlers=[redirect]) == 7
    first = TARGET_TEXT.splitlines()[0]
    assert capfd.readouterr().out.split("\n") == [str(len(TARGET_TEXT)), first, first, ""]
    assert len(redirect.redirected) == 3 and len(set(redirect.redirected)) == 3
