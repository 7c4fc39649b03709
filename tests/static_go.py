"""Building the small static Go programs the end-to-end tests run (a module of its own:
test modules import it by name, ``tests/`` being on ``sys.path`` for its conftest)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def build_static_go(directory: Path, source: str, name: str) -> Path:
    """Build ``source`` (one ``main`` package) with ``CGO_ENABLED=0`` in ``directory``;
    the binary's path. Go's build cache makes every build after the first quick, and the
    programs have no dependencies, so nothing is downloaded."""
    go = shutil.which("go")
    assert go, "the Go toolchain is needed: apt-get install golang-go"
    (directory / "main.go").write_text(source)
    (directory / "go.mod").write_text(f"module example.com/{name}\n\ngo 1.19\n")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    subprocess.run([go, "build", "-o", name, "."], cwd=directory, env=env, check=True, timeout=300)
    return directory / name
