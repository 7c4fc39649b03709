"""The fs plugin's per-path decision: user patterns, built-in lists, then the mode."""

from __future__ import annotations

import pytest

from mirrord_core.config import RegexList
from mirrord_fs.config import FsConfig, FsMode
from mirrord_fs.local.path_policy import Decision, PathPolicy

CWD = "/work/project"
EXE = "/usr/local/bin/python3.11"


def policy(**fields: object) -> PathPolicy:
    return PathPolicy.from_config(FsConfig(**fields), cwd=CWD, executable=EXE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "read", "write"),
    [
        ("/app/config.yaml", Decision.REMOTE, Decision.READ_ONLY),
        ("/var/run/secrets/token", Decision.REMOTE, Decision.READ_ONLY),
        ("/etc/hosts", Decision.REMOTE, Decision.LOCAL),
        ("/etc/resolv.conf", Decision.REMOTE, Decision.LOCAL),
        ("/etc/passwd", Decision.LOCAL, Decision.LOCAL),
        ("/usr/lib/python3.11/json/__init__.py", Decision.LOCAL, Decision.LOCAL),
        ("/lib64/ld-linux-x86-64.so.2", Decision.LOCAL, Decision.LOCAL),
        ("/srv/app/module.pyc", Decision.LOCAL, Decision.LOCAL),
        ("/proc/self/maps", Decision.LOCAL, Decision.LOCAL),
        ("/tmp/scratch", Decision.LOCAL, Decision.LOCAL),
        ("/work/project/data.txt", Decision.LOCAL, Decision.LOCAL),
        ("/work/project", Decision.LOCAL, Decision.LOCAL),
        ("/work/project-other/data.txt", Decision.REMOTE, Decision.READ_ONLY),
        (EXE, Decision.LOCAL, Decision.LOCAL),
        ("/home/dev/.aws/credentials", Decision.REMOTE, Decision.LOCAL),
        ("/", Decision.LOCAL, Decision.LOCAL),
    ],
)
def test_read_mode_defaults(path: str, read: Decision, write: Decision) -> None:
    rules = policy()
    assert rules.decide(path, write=False) is read
    assert rules.decide(path, write=True) is write


def test_write_mode_writes_remotely_except_builtin_local() -> None:
    rules = policy(mode=FsMode.WRITE)
    assert rules.decide("/app/out.log", write=True) is Decision.REMOTE
    assert rules.decide("/usr/lib/libc.so", write=False) is Decision.LOCAL


@pytest.mark.parametrize("mode", [FsMode.LOCAL, FsMode.LOCAL_WITH_OVERRIDES])
def test_local_modes_keep_unmatched_paths_local(mode: FsMode) -> None:
    rules = policy(mode=mode)
    assert rules.decide("/app/config.yaml", write=False) is Decision.LOCAL


def test_local_mode_ignores_even_user_patterns() -> None:
    rules = policy(mode=FsMode.LOCAL, read_write=RegexList(["^/app/.*"]))
    assert not rules.active
    assert rules.decide("/app/config.yaml", write=True) is Decision.LOCAL


def test_localwithoverrides_honours_patterns_and_builtin_remote() -> None:
    rules = policy(mode=FsMode.LOCAL_WITH_OVERRIDES, read_only=RegexList(["^/data/"]))
    assert rules.active
    assert rules.decide("/data/x", write=False) is Decision.REMOTE
    assert rules.decide("/etc/hosts", write=False) is Decision.REMOTE
    assert rules.decide("/other", write=False) is Decision.LOCAL


def test_user_patterns_come_first_in_mirrords_order() -> None:
    rules = policy(
        read_write=RegexList(["^/etc/app/"]),
        read_only=RegexList(["^/home/dev/remote/"]),
        local=RegexList(["^/app/cache/"]),
    )
    # read_write beats the built-in local /etc list, for reads and writes.
    assert rules.decide("/etc/app/settings.ini", write=True) is Decision.REMOTE
    # read_only beats the built-in local /home list for reads; writes go local.
    assert rules.decide("/home/dev/remote/x", write=False) is Decision.REMOTE
    assert rules.decide("/home/dev/remote/x", write=True) is Decision.LOCAL
    # local beats the mode.
    assert rules.decide("/app/cache/blob", write=False) is Decision.LOCAL


def test_patterns_are_case_insensitive_and_unanchored() -> None:
    rules = policy(local=RegexList([r"\.LOG$"]))
    assert rules.decide("/app/server.log", write=False) is Decision.LOCAL
