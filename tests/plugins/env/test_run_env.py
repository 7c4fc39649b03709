"""``mirrord run``: every process of the command's tree starts with the target's environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord_core.sandbox import PodSpec, Sandbox

BUSYBOX = "/usr/bin/busybox"
POD_ENV = {
    "PATH": "/bin",
    "HOME": "/pod-home",
    "GREETING": "hello from the env pod",
    "SECRET_TOKEN": "pod-secret",
    "DATABASE_URL": "postgres://db.default.svc.cluster.local/app",
}
GO_GETENV = """\
package main

import (
\t"fmt"
\t"os"
)

func main() {
\tfor _, name := range os.Args[1:] {
\t\tfmt.Printf("%s=%s\\n", name, os.Getenv(name))
\t}
}
"""


@pytest.fixture(scope="module")
def pod_pid() -> Iterator[int]:
    with Sandbox.create(
        [PodSpec(name="envpod", env=POD_ENV, port=None, command=["/bin/busybox", "sleep", "600"])]
    ) as sandbox:
        yield sandbox.pod("envpod").pid


@pytest.fixture(scope="module")
def go_getenv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    assert go, "go is needed for this test: apt-get install golang-go"
    directory = tmp_path_factory.mktemp("getenv")
    (directory / "main.go").write_text(GO_GETENV)
    (directory / "go.mod").write_text("module example.com/getenv\n\ngo 1.19\n")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    subprocess.run(
        [go, "build", "-o", "getenv", "."], cwd=directory, env=env, check=True, timeout=300
    )
    return directory / "getenv"


def _printers(go_getenv: Path) -> dict[str, list[str]]:
    node = shutil.which("node")
    assert node, "node is needed for this test: apt-get install nodejs"
    names = ["GREETING", "SECRET_TOKEN", "HOME"]
    return {
        "python": [
            sys.executable,
            "-c",
            "import os, sys\nfor n in sys.argv[1:]: print(f'{n}={os.environ.get(n, \"\")}')",
            *names,
        ],
        "busybox-static": [
            BUSYBOX,
            "sh",
            "-c",
            'for n in "$@"; do eval "echo $n=\\$$n"; done',
            "sh",
            *names,
        ],
        "go-static": [str(go_getenv), *names],
        "node": [
            node,
            "-e",
            "for (const n of process.argv.slice(1)) console.log(`${n}=${process.env[n] ?? ''}`)",
            *names,
        ],
        # A grandchild started through two shells still has it.
        "grandchild": ["/bin/sh", "-c", "sh -c 'echo GREETING=$GREETING'"],
    }


def _values(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


@pytest.mark.parametrize("program", ["python", "busybox-static", "go-static", "node", "grandchild"])
def test_every_program_sees_the_pods_environment(
    program: str, pod_pid: int, go_getenv: Path, run_cli
) -> None:
    argv = _printers(go_getenv)[program]
    result = run_cli("run", "-t", f"pid/{pod_pid}", "--", *argv, env={"HOME": "/local-home"})
    assert result.returncode == 0, result.stderr
    values = _values(result.stdout)
    assert values["GREETING"] == POD_ENV["GREETING"]
    if program != "grandchild":
        assert values["SECRET_TOKEN"] == "pod-secret"
        # HOME describes the machine, not the app: excluded by default, so it stays local.
        assert values["HOME"] == "/local-home"


def test_exclude_include_and_override(pod_pid: int, go_getenv: Path, run_cli, tmp_path) -> None:
    printer = [str(go_getenv), "GREETING", "SECRET_TOKEN", "DATABASE_URL", "REGION"]
    excluded = _values(
        run_cli("run", "-t", f"pid/{pod_pid}", "-x", "SECRET_*", "--", *printer).stdout
    )
    assert excluded["SECRET_TOKEN"] == "" and excluded["GREETING"] == POD_ENV["GREETING"]

    included = _values(
        run_cli("run", "-t", f"pid/{pod_pid}", "-s", "DATABASE_URL", "--", *printer).stdout
    )
    assert included["DATABASE_URL"] == POD_ENV["DATABASE_URL"]
    assert included["GREETING"] == "" and included["SECRET_TOKEN"] == ""

    config = tmp_path / "mirrord.toml"
    config.write_text('[feature.env.override]\nREGION = "eu-test"\nGREETING = "overridden"\n')
    overridden = _values(
        run_cli("run", "-f", str(config), "-t", f"pid/{pod_pid}", "--", *printer).stdout
    )
    assert overridden["REGION"] == "eu-test"
    assert overridden["GREETING"] == "overridden"
    assert overridden["DATABASE_URL"] == POD_ENV["DATABASE_URL"]


def test_env_false_keeps_the_local_environment(pod_pid: int, run_cli, tmp_path) -> None:
    config = tmp_path / "mirrord.json"
    config.write_text('{"feature": {"env": false, "fs": "local"}}')
    result = run_cli(
        "run",
        "-f",
        str(config),
        "-t",
        f"pid/{pod_pid}",
        "--",
        sys.executable,
        "-c",
        "import os; print(os.environ.get('GREETING', '-'))",
        env={"GREETING": "local value"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "local value"
