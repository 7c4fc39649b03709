"""``chdir`` into the target's directories under ``mirrord run -t pid/PID``.

Real programs — busybox's shell, Python, a static Go binary built here and Node — change
into a directory that exists only in the sandbox pod, then use relative paths, ``getcwd``
and ``*at(AT_FDCWD)`` calls, start children there, and leave again. Needs root and
/dev/fuse (as ``mirrord run`` does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from static_go import build_static_go

from mirrord_core.sandbox import Sandbox
from mirrord_core.sandbox.demo import demo_pods

CONFIG = "service: web\nport: 8080\nfeature_flags: [checkout-v2]\n"
ORDERS = "id,total\n1,9.99\n2,24.50\n"
BUSYBOX = "/usr/bin/busybox"
#: A host directory the pod's symlinks point at; no run may enter or read it.
HOST_DIR = Path("/srv/mirrord-run-chdir-host-dir")
HOST_SECRET = "HOST SECRET 7e2a - never readable through mirrord run"

RunCli = Callable[..., subprocess.CompletedProcess[str]]

GO_CHDIR_PROGRAM = """\
package main

// probe DIR FILE: changes into DIR, prints the working directory and FILE (relative).

import (
	"fmt"
	"os"
)

func main() {
	if err := os.Chdir(os.Args[1]); err != nil {
		fmt.Println("error:", err)
		os.Exit(3)
	}
	os.Unsetenv("PWD") // Getwd would trust $PWD otherwise
	wd, err := os.Getwd()
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(4)
	}
	fmt.Println("cwd:", wd)
	data, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(5)
	}
	fmt.Print(string(data))
}
"""


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """The demo pods; the web pod's /app gets symlinks to a directory of this machine."""
    HOST_DIR.mkdir(exist_ok=True)
    (HOST_DIR / "secret.txt").write_text(HOST_SECRET)
    try:
        with Sandbox.create(demo_pods()) as sb:
            app = sb.pod("web").root / "app"
            os.symlink(str(HOST_DIR), app / "escape-abs")
            os.symlink("../" * 12 + str(HOST_DIR.relative_to("/")), app / "escape-rel")
            os.symlink("data", app / "current")
            yield sb
    finally:
        shutil.rmtree(HOST_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def go_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static Go binary (``CGO_ENABLED=0``) that changes directory and reads a file."""
    return build_static_go(tmp_path_factory.mktemp("go-chdir-probe"), GO_CHDIR_PROGRAM, "probe")


Run = Callable[..., str]


@pytest.fixture
def mirrord_run(sandbox: Sandbox, run_cli: RunCli, tmp_path: Path) -> Run:
    """``mirrord_run(*command, mode=None)``: ``mirrord run -t pid/<web> [--fs-mode MODE] --
    command`` from the test's tmp dir; its output (the run must succeed)."""
    pid = sandbox.pod("web").pid

    def run(*command: str, mode: str | None = None) -> str:
        flags = ("--fs-mode", mode) if mode else ()
        result = run_cli("run", "-t", f"pid/{pid}", *flags, "--", *command, cwd=tmp_path)
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    return run


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_busybox_shell_cd_into_the_pod(mirrord_run: Run, tmp_path: Path) -> None:
    script = (
        f"cd /app && pwd && {BUSYBOX} pwd && cat config.yaml && ls && "
        f"cd data && {BUSYBOX} pwd && cat orders.csv && cd ../current && {BUSYBOX} pwd && "
        f"cd {tmp_path} && {BUSYBOX} pwd"
    )
    out = mirrord_run(BUSYBOX, "sh", "-c", script)
    assert out.splitlines() == [
        "/app",
        "/app",
        *CONFIG.splitlines(),
        "config.yaml",
        "current",
        "data",
        "escape-abs",
        "escape-rel",
        "/app/data",
        *ORDERS.splitlines(),
        "/app/data",  # the pod's own symlink, followed inside the pod
        str(tmp_path),
    ]


def test_python_relative_paths_getcwd_and_children(mirrord_run: Run, tmp_path: Path) -> None:
    out = mirrord_run(
        *python(
            f"""
            import ctypes, errno, json, os, subprocess
            out = {{}}
            os.chdir('/app')
            out['cwd'] = os.getcwd()
            out['config'] = open('config.yaml').read()
            out['size'] = os.stat('config.yaml').st_size
            out['listing'] = sorted(os.listdir())
            out['exists'] = [os.path.exists('data/orders.csv'), os.path.exists('missing')]
            # A child inherits the working directory.
            child = subprocess.run(['{BUSYBOX}', 'cat', 'data/orders.csv'], capture_output=True)
            out['child'] = child.stdout.decode()
            out['child_pwd'] = subprocess.run(['{BUSYBOX}', 'pwd'], capture_output=True,
                                              text=True).stdout
            # getcwd with a buffer too small for '/app' fails as the kernel's does.
            libc = ctypes.CDLL(None, use_errno=True)
            small = ctypes.create_string_buffer(4)
            out['small'] = [libc.syscall(79, small, 4), errno.errorcode[ctypes.get_errno()]]
            os.chdir('data')
            out['data_cwd'] = os.getcwd()
            out['orders'] = open('orders.csv').read()
            os.chdir('..')
            out['up'] = os.getcwd()
            # fchdir to a remote directory's descriptor.
            os.fchdir(os.open('/app/data', os.O_RDONLY))
            out['fchdir'] = os.getcwd()
            for bad in ('/app/missing', '/app/config.yaml'):
                try:
                    os.chdir(bad)
                except OSError as err:
                    out.setdefault('errors', []).append(errno.errorcode[err.errno])
            out['still'] = os.getcwd()
            os.chdir({str(tmp_path)!r})
            out['back'] = os.getcwd()
            print(json.dumps(out))
            """
        ),
    )
    assert json.loads(out) == {
        "cwd": "/app",
        "config": CONFIG,
        "size": len(CONFIG),
        "listing": ["config.yaml", "current", "data", "escape-abs", "escape-rel"],
        "exists": [True, False],
        "child": ORDERS,
        "child_pwd": "/app\n",
        "small": [-1, "ERANGE"],
        "data_cwd": "/app/data",
        "orders": ORDERS,
        "up": "/app",
        "fchdir": "/app/data",
        "errors": ["ENOENT", "ENOTDIR"],
        "still": "/app/data",
        "back": str(tmp_path),
    }


def test_static_go_and_node(mirrord_run: Run, go_probe: Path) -> None:
    out = mirrord_run(str(go_probe), "/app/data", "orders.csv")
    assert out.splitlines() == ["cwd: /app/data", *ORDERS.splitlines()]
    node = shutil.which("node")
    assert node, "Node is needed: apt-get install nodejs"
    script = (
        "process.chdir('/app'); console.log(process.cwd());"
        "process.stdout.write(require('fs').readFileSync('config.yaml', 'utf8'));"
    )
    out = mirrord_run(node, "-e", script)
    assert out.splitlines() == ["/app", *CONFIG.splitlines()]


def test_write_mode_relative_changes_land_in_the_pod(
    sandbox: Sandbox, mirrord_run: Run, tmp_path: Path
) -> None:
    app = sandbox.pod("web").root / "app"
    script = (
        "cd /app && echo from-shell > shell.txt && mkdir made && mv shell.txt made/moved.txt "
        f"&& {BUSYBOX} cat made/moved.txt"
    )
    try:
        out = mirrord_run(BUSYBOX, "sh", "-c", script, mode="write")
        assert out == "from-shell\n"
        assert (app / "made" / "moved.txt").read_text() == "from-shell\n"
        assert not (tmp_path / "shell.txt").exists()
        assert not Path("/app/made").exists()
    finally:
        shutil.rmtree(app / "made", ignore_errors=True)


def test_the_working_directory_never_leaves_the_pods_root(mirrord_run: Run, tmp_path: Path) -> None:
    """Symlinks out of the pod and ``..`` above its root stay inside the pod."""
    out = mirrord_run(
        *python(
            f"""
            import errno, json, os
            out = []
            for path in ('/app/escape-abs', '/app/escape-rel',
                         '/app/../../../..{HOST_DIR}'):
                try:
                    os.chdir(path)
                    out.append(['entered', os.getcwd(), sorted(os.listdir())])
                except OSError as err:
                    out.append(errno.errorcode[err.errno])
            os.chdir('/app')
            os.chdir('../../../..')
            out.append([os.getcwd(), 'app' in os.listdir(), 'www' in os.listdir()])
            try:
                out.append(open('{HOST_DIR.relative_to("/")}/secret.txt').read())
            except OSError as err:
                out.append(errno.errorcode[err.errno])
            print(json.dumps(out))
            """
        ),
    )
    assert HOST_SECRET not in out
    assert json.loads(out) == ["ENOENT", "ENOENT", "ENOENT", ["/", True, True], "ENOENT"]
