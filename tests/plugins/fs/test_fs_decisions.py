"""The fs handler's decision caches under a real intercepted process: absolute local
paths are handed to the engine's fast path, other paths keep being decided, read and
write decisions stay apart, and the caches are bounded."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import re
import sys
from pathlib import Path

import pytest

from mirrord_core.interception import run_intercepted
from mirrord_fs.config import FsConfig, FsMode
from mirrord_fs.local import fs_handlers
from mirrord_fs.local.fs_handlers import RemoteFsHandler
from mirrord_fs.local.path_policy import PathPolicy
from mirrord_fs.local.remote_mount import RemoteMount

PY = sys.executable

# Each argument: "stat:PATH" or "write:PATH" (open for writing), repeated COUNT times.
CHILD = """
import json, os, sys
count, results = int(sys.argv[1]), []
for action in sys.argv[2:]:
    kind, path = action.split(":", 1)
    outcome = []
    for _ in range(count):
        try:
            if kind == "stat":
                outcome.append(os.stat(path).st_size)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
                outcome.append(0)
        except OSError as error:
            outcome.append(-error.errno)
    results.append(outcome)
print(json.dumps(results))
"""


def handler_without_mount(**config: object) -> RemoteFsHandler:
    """A read-mode handler whose mount failed to start: remote operations answer EIO."""
    mount: concurrent.futures.Future[RemoteMount] = concurrent.futures.Future()
    mount.set_exception(OSError(errno.EIO, "no mount in this test"))
    policy = PathPolicy.from_config(FsConfig(mode=FsMode.READ, **config))  # type: ignore[arg-type]
    return RemoteFsHandler(policy, mount, writable=False)


def run(
    handler: RemoteFsHandler,
    actions: list[str],
    count: int,
    cwd: Path,
    capfd: pytest.CaptureFixture[str],
) -> list[list[int]]:
    try:
        status = run_intercepted(
            [PY, "-c", CHILD, str(count), *actions], handlers=[handler], cwd=str(cwd)
        )
    finally:
        handler.close()
    assert status == 0
    return json.loads(capfd.readouterr().out.splitlines()[-1])  # type: ignore[no-any-return]


def local_reads(handler: RemoteFsHandler) -> set[bytes]:
    paths = {frozenset(entry[1]) for entry in handler.continue_paths.values()}
    assert len(paths) == 1, "every read-only syscall shares one set"
    return set(next(iter(paths)))


def test_local_paths_go_to_the_fast_path_and_remote_ones_stay_decided(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    local = tmp_path / "local.txt"
    local.write_bytes(b"four")
    (tmp_path / "relative.txt").write_bytes(b"seven!!")
    remote_only = tmp_path / "remote-only"  # a read_only pattern: read remotely
    handler = handler_without_mount(read_only=[f"^{re.escape(str(remote_only))}$"])
    results = run(
        handler,
        [
            f"stat:{local}",
            "stat:relative.txt",
            "stat:/app/config.yaml",
            f"stat:{remote_only}",
            f"write:{remote_only}",  # writing a read_only path: local
            f"stat:{remote_only}",
            "write:/app/new.txt",
        ],
        5,
        tmp_path,
        capfd,
    )
    assert results == [
        [4] * 5,
        [7] * 5,
        [-errno.EIO] * 5,  # remote, every time (the mount is down)
        [-errno.EIO] * 5,
        [0] * 5,  # created locally
        [-errno.EIO] * 5,  # reading it is still remote
        [-errno.EROFS] * 5,
    ]
    assert remote_only.exists()
    fast = local_reads(handler)
    assert os.fsencode(local) in fast
    assert b"/app/config.yaml" not in fast
    assert os.fsencode(remote_only) not in fast
    assert not any(not path.startswith(b"/") for path in fast), "only absolute paths"


def test_the_decision_caches_are_bounded(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fs_handlers, "DECISION_CACHE", 4)
    files = []
    for index in range(10):
        path = tmp_path / f"file-{index}"
        path.write_bytes(b"x" * index)
        files.append(path)
    handler = handler_without_mount()
    results = run(handler, [f"stat:{path}" for path in files], 3, tmp_path, capfd)
    assert results == [[index] * 3 for index in range(10)]
    fast = local_reads(handler)
    assert len(fast) <= 4
    assert os.fsencode(files[-1]) in fast
    assert not {os.fsencode(path) for path in files[:6]} & fast
