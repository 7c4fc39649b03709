"""The agent's confined file operations: everything stays inside the target's root."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord_fs.agent.confined_fs import ConfinedFileSystem


@pytest.fixture
def target_root(tmp_path: Path) -> tuple[Path, Path]:
    """A target root and, beside it, a host directory with a secret nothing may reach."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("HOST SECRET")
    root = tmp_path / "root"
    (root / "app").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("pod passwd")
    (root / "app" / "config.yaml").write_text("port: 8080\n")
    depth = len(root.parts)
    (root / "app" / "leak").symlink_to("../" * depth + str(host / "secret").lstrip("/"))
    (root / "app" / "abs").symlink_to("/etc/passwd")
    (root / "app" / "hostdir").symlink_to(str(host))
    (root / "app" / "updir").symlink_to("../../../../../..")
    (root / "app" / "loop").symlink_to("loop2")
    (root / "app" / "loop2").symlink_to("loop")
    (root / "app" / "procroot").symlink_to("/proc/self/root")
    return root, host


@pytest.fixture
def fs(target_root: tuple[Path, Path]) -> Iterator[ConfinedFileSystem]:
    root, _ = target_root
    confined = ConfinedFileSystem(os.open(root, os.O_PATH | os.O_DIRECTORY))
    yield confined
    confined.close()


def read(fs: ConfinedFileSystem, path: str) -> bytes:
    return b"".join(fs.stream(path))


def test_reads_files_inside(fs: ConfinedFileSystem) -> None:
    assert read(fs, "/app/config.yaml") == b"port: 8080\n"
    assert fs.stat("/app/config.yaml").size == len("port: 8080\n")


def test_absolute_symlink_resolves_inside_the_root(fs: ConfinedFileSystem) -> None:
    assert read(fs, "/app/abs") == b"pod passwd"


@pytest.mark.parametrize(
    "path",
    [
        "/app/leak",
        "/../../../../../../../../host/secret",
        "/app/updir/host/secret",
        "/app/hostdir/secret",
        "/app/procroot/etc/passwd",
    ],
)
def test_escapes_reach_nothing_outside(fs: ConfinedFileSystem, path: str) -> None:
    try:
        data = read(fs, path)
    except OSError as err:
        assert err.errno in (errno.ENOENT, errno.ELOOP, errno.EXDEV, errno.ENOTDIR)
    else:  # a path that resolves at all resolves inside the root
        assert b"HOST SECRET" not in data


def test_symlink_loop_is_eloop(fs: ConfinedFileSystem) -> None:
    with pytest.raises(OSError) as caught:
        read(fs, "/app/loop")
    assert caught.value.errno == errno.ELOOP


def test_writes_through_escaping_links_stay_inside(
    fs: ConfinedFileSystem, target_root: tuple[Path, Path]
) -> None:
    root, host = target_root
    with pytest.raises(OSError):
        fs.mkdir("/app/hostdir/created")
    assert not (host / "created").exists()
    with pytest.raises(OSError):
        fs.truncate("/app/leak", 0)
    assert (host / "secret").read_text() == "HOST SECRET"
    fd = fs.open("/app/updir/new-file", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x")
    os.close(fd)
    # ".." above the root is the root itself: the file lands at the target's /new-file.
    assert (root / "new-file").read_bytes() == b"x"
    assert not (host / "new-file").exists()


def test_unlink_removes_the_link_not_its_target(
    fs: ConfinedFileSystem, target_root: tuple[Path, Path]
) -> None:
    root, host = target_root
    fs.unlink("/app/leak")
    assert not (root / "app" / "leak").is_symlink()
    assert (host / "secret").exists()


def test_rename_cannot_move_out(fs: ConfinedFileSystem, target_root: tuple[Path, Path]) -> None:
    root, host = target_root
    with pytest.raises(OSError):
        fs.rename("/app/config.yaml", "/app/hostdir/stolen")
    assert not (host / "stolen").exists()
    fs.rename("/app/config.yaml", "/app/renamed.yaml")
    assert (root / "app" / "renamed.yaml").exists()


def test_directory_operations(fs: ConfinedFileSystem, target_root: tuple[Path, Path]) -> None:
    root, _ = target_root
    fs.mkdir("/app/data", 0o755)
    assert stat.S_ISDIR(fs.stat("/app/data").mode)
    names = {entry.name: entry.file_type for entry in fs.readdir("/app")}
    assert names["data"] == stat.S_IFDIR
    assert names["abs"] == stat.S_IFLNK
    assert names["config.yaml"] == stat.S_IFREG
    fs.rmdir("/app/data")
    assert not (root / "app" / "data").exists()


def test_lstat_readlink_access_statfs(fs: ConfinedFileSystem) -> None:
    assert stat.S_ISLNK(fs.stat("/app/abs", follow_symlinks=False).mode)
    assert fs.readlink("/app/abs") == "/etc/passwd"
    fs.access("/app/config.yaml", os.R_OK)
    with pytest.raises(OSError) as caught:
        fs.access("/app/missing", os.R_OK)
    assert caught.value.errno == errno.ENOENT
    assert fs.statfs("/app").namemax > 0
    assert stat.S_ISDIR(fs.stat("/").mode)


def test_relative_and_dot_paths_are_refused(fs: ConfinedFileSystem) -> None:
    with pytest.raises(OSError) as caught:
        fs.stat("app/config.yaml")
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        fs.unlink("/app/..")
