"""Path arguments of trapped syscalls made absolute (cwd, dirfd, the mount's directories)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirrord_fs.local.tracee_paths import (
    AT_FDCWD,
    TraceePath,
    normalize,
    resolve,
    signed32,
    signed64,
    tracee_umask,
)


def test_registers_as_c_integers() -> None:
    assert signed32(0xFFFFFF9C) == AT_FDCWD
    assert signed32(0xFFFFFFFFFFFFFF9C) == AT_FDCWD
    assert signed32(7) == 7
    assert signed64(0xFFFFFFFFFFFFFFFF) == -1
    assert signed64(4096) == 4096


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/app/config.yaml", "/app/config.yaml"),
        ("//app//data/./x", "/app/data/x"),
        ("/app/../../../etc/passwd", "/etc/passwd"),
        ("/", "/"),
        ("/..", "/"),
        ("/app/data/", "/app/data"),
    ],
)
def test_normalize(path: str, expected: str) -> None:
    assert normalize(path) == expected


def test_absolute_paths_keep_their_exact_form() -> None:
    assert resolve(os.getpid(), AT_FDCWD, b"/app/x/../y", None) == TraceePath(
        "/app/y", exact="/app/x/../y"
    )


def test_empty_path_acts_on_the_descriptor() -> None:
    assert resolve(os.getpid(), AT_FDCWD, b"", None) is None


def test_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tid = os.getpid()
    assert resolve(tid, AT_FDCWD, b"a/b", None) == TraceePath(f"{tmp_path}/a/b")
    up = os.path.relpath("/app/config.yaml", tmp_path).encode()
    assert resolve(tid, AT_FDCWD, up, None) == TraceePath("/app/config.yaml")


def test_relative_to_a_directory_descriptor(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    fd = os.open(tmp_path / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert resolve(os.getpid(), fd, b"f.txt", None) == TraceePath(f"{tmp_path}/sub/f.txt")
        # Not a directory descriptor we can name: the kernel answers the call.
        assert resolve(os.getpid(), 999_999, b"f.txt", None) is None
    finally:
        os.close(fd)


def test_relative_to_a_directory_on_the_mount(tmp_path: Path) -> None:
    """A descriptor below the mount names a directory of the target."""
    mount = tmp_path / "mnt"
    (mount / "app" / "data").mkdir(parents=True)
    fd = os.open(mount / "app" / "data", os.O_RDONLY | os.O_DIRECTORY)
    root = os.open(mount, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = resolve(os.getpid(), fd, b"../../../../x", str(mount))
        assert found == TraceePath("/x", on_mount=True, exact="/app/data/../../../../x")
        assert found.in_target == "/app/data/../../../../x"
        at_root = resolve(os.getpid(), root, b"etc/hosts", str(mount))
        assert at_root == TraceePath("/etc/hosts", on_mount=True, exact="/etc/hosts")
        # A sibling directory whose name merely starts with the mount's is not on it.
        assert resolve(os.getpid(), fd, b"y", str(mount)[:-1]) == TraceePath(f"{mount}/app/data/y")
    finally:
        os.close(fd)
        os.close(root)


def test_umask_of_a_task() -> None:
    current = os.umask(0o027)
    try:
        assert tracee_umask(os.getpid()) == 0o027
    finally:
        os.umask(current)
    assert tracee_umask(2**22 + 12345) == 0o022  # no such task: the usual default
