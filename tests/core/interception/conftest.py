"""Fixtures of the interception tests: the files a redirect uses, busybox, a static Go
binary built here, and a separate process that runs the engine (helpers live in
``interception_helpers``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from interception_helpers import (
    BUSYBOX,
    GO_PROGRAM,
    RUNNER,
    SOURCE_TEXT,
    TARGET_TEXT,
    Files,
    has_interpreter,
)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    source = tmp_path / "source.txt"
    target = tmp_path / "target.txt"
    source.write_text(SOURCE_TEXT)
    target.write_text(TARGET_TEXT)
    return Files(source, target)


@pytest.fixture(scope="session")
def busybox() -> str:
    assert Path(BUSYBOX).is_file(), "busybox-static is needed: apt-get install busybox-static"
    return BUSYBOX


@pytest.fixture(scope="session")
def go_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static Go binary (``CGO_ENABLED=0``) that prints the files it is given."""
    go = shutil.which("go")
    assert go, "the Go toolchain is needed: apt-get install golang-go"
    directory = tmp_path_factory.mktemp("go-probe")
    (directory / "main.go").write_text(GO_PROGRAM)
    (directory / "go.mod").write_text("module example.com/probe\n\ngo 1.19\n")
    # Go's own build cache (~/.cache/go-build) makes every build after the first quick;
    # the program has no dependencies, so nothing is downloaded.
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    subprocess.run(
        [go, "build", "-o", "probe", "."], cwd=directory, env=env, check=True, timeout=300
    )
    binary = directory / "probe"
    assert not has_interpreter(binary), "the Go program should be statically linked"
    return binary


@pytest.fixture
def runner_argv() -> Callable[..., list[str]]:
    """argv of a separate process that runs a command under interception and exits with
    its status: ``runner_argv(*command)``, or ``runner_argv("--redirect", source, target,
    *command)`` to have opens of ``source`` redirected to ``target``."""

    def argv(*command: str) -> list[str]:
        return [sys.executable, "-c", RUNNER, *command]

    return argv
