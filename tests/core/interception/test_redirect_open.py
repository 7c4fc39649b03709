"""The engine's central trick, in every kind of program: a trapped open of one path is
answered with an fd the supervisor opened on another file, injected into the tracee.

Python and curl (glibc), busybox (static musl), a static Go binary and Node each print the
other file's contents; what they do not redirect stays untouched."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from interception_helpers import SOURCE_TEXT, TARGET_TEXT, Files

from mirrord_core.interception import run_intercepted


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is needed for this test: apt-get install {package}"
    return path


def python_reader(path: Path, _go: Path) -> list[str]:
    return [sys.executable, "-c", f"print(open({str(path)!r}).read(), end='')"]


def busybox_reader(path: Path, _go: Path) -> list[str]:
    return ["/usr/bin/busybox", "cat", str(path)]


def go_reader(path: Path, go: Path) -> list[str]:
    return [str(go), str(path)]


def curl_reader(path: Path, _go: Path) -> list[str]:
    return [_tool("curl", "curl"), "-s", f"file://{path}"]


def node_reader(path: Path, _go: Path) -> list[str]:
    script = f"process.stdout.write(require('fs').readFileSync({str(path)!r}, 'utf8'))"
    return [_tool("node", "nodejs"), "-e", script]


READERS: dict[str, Callable[[Path, Path], list[str]]] = {
    "python": python_reader,
    "busybox-static": busybox_reader,
    "go-static": go_reader,
    "curl": curl_reader,
    "node": node_reader,
}


@pytest.mark.parametrize("reader", list(READERS))
def test_open_is_redirected(
    reader: str, files: Files, go_probe: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    redirect = files.redirect()
    argv = READERS[reader](files.source, go_probe)
    assert run_intercepted(argv, handlers=[redirect]) == 0
    assert capfd.readouterr().out == TARGET_TEXT
    assert redirect.redirected, "the open was not trapped"


@pytest.mark.parametrize("reader", list(READERS))
def test_other_files_are_untouched(
    reader: str, files: Files, go_probe: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.txt"
    other.write_text(SOURCE_TEXT)
    redirect = files.redirect()
    assert run_intercepted(READERS[reader](other, go_probe), handlers=[redirect]) == 0
    assert capfd.readouterr().out == SOURCE_TEXT
    assert not redirect.redirected and os.fsencode(other) in redirect.paths


def test_close_on_exec_is_honoured(files: Files, capfd: pytest.CaptureFixture[str]) -> None:
    """The injected fd is close-on-exec exactly when the tracee asked for O_CLOEXEC:
    Python's os.open always does, a shell redirection never does."""
    source = str(files.source)
    code = f"import os; fd = os.open({source!r}, os.O_RDONLY); print(os.get_inheritable(fd))"
    assert run_intercepted([sys.executable, "-c", code], handlers=[files.redirect()]) == 0
    assert capfd.readouterr().out == "False\n"
    script = f"exec 7< {source}; cat <&7; grep flags /proc/$$/fdinfo/7"
    assert run_intercepted(["sh", "-c", script], handlers=[files.redirect()]) == 0
    out = capfd.readouterr().out
    assert out.startswith(TARGET_TEXT)
    flags = int(out.split()[-1], 8)
    assert not flags & 0o2000000  # O_CLOEXEC
