"""``mirrord run -t pid/PID`` reads (and in write mode writes) the target's files.

Real programs — Python, static busybox, a static Go binary built here and Node — run
under the ``mirrord`` CLI against a sandbox pod whose root holds distinctive files; the
pod's root is checked on the host. Needs root and /dev/fuse (as ``mirrord run`` does).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mirrord_core.sandbox import Sandbox
from mirrord_core.sandbox.demo import demo_pods

CONFIG = "service: web\nport: 8080\nfeature_flags: [checkout-v2]\n"
BUSYBOX = "/usr/bin/busybox"
NODE = "/usr/bin/node"
#: A host directory that no built-in list keeps local, holding a secret no run may print.
HOST_SECRET_DIR = Path("/srv/mirrord-run-fs-host-secret")
HOST_SECRET = "HOST SECRET 4c1d - never readable through mirrord run"
INTERCEPTION_HELPERS = (
    Path(__file__).resolve().parents[2] / "core" / "interception" / "interception_helpers.py"
)

GO_FS_PROGRAM = """\
package main

// probe read FILE DIR: prints FILE, DIR's sorted entries and FILE's size.
// probe write DIR: creates DIR/go-created.txt, renames it to DIR/go-renamed.txt,
// creates and removes DIR/go-dir and DIR/go-tmp.txt. Errors exit 3.

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

func check(err error) {
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(3)
	}
}

func main() {
	switch os.Args[1] {
	case "read":
		data, err := os.ReadFile(os.Args[2])
		check(err)
		fmt.Print(string(data))
		entries, err := os.ReadDir(os.Args[3])
		check(err)
		names := []string{}
		for _, entry := range entries {
			names = append(names, entry.Name())
		}
		sort.Strings(names)
		fmt.Println("entries:", names)
		info, err := os.Stat(os.Args[2])
		check(err)
		fmt.Println("size:", info.Size())
	case "write":
		dir := os.Args[2]
		check(os.WriteFile(filepath.Join(dir, "go-created.txt"), []byte("from go\\n"), 0o644))
		check(os.Rename(filepath.Join(dir, "go-created.txt"), filepath.Join(dir, "go-renamed.txt")))
		check(os.Mkdir(filepath.Join(dir, "go-dir"), 0o755))
		check(os.Remove(filepath.Join(dir, "go-dir")))
		check(os.WriteFile(filepath.Join(dir, "go-tmp.txt"), []byte("x"), 0o644))
		check(os.Remove(filepath.Join(dir, "go-tmp.txt")))
		fmt.Println("written")
	}
}
"""


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """The demo pods; the web pod gets more data files, symlinks out of its root and a
    decoy of Python's ``json`` package at the stdlib's own path."""
    HOST_SECRET_DIR.mkdir(exist_ok=True)
    (HOST_SECRET_DIR / "secret.txt").write_text(HOST_SECRET)
    try:
        with Sandbox.create(demo_pods()) as sb:
            root = sb.pod("web").root
            (root / "app" / "data" / "customers.csv").write_text("id,name\n1,ada\n")
            (root / "app" / "data" / "archive").mkdir()
            secret = HOST_SECRET_DIR.relative_to("/") / "secret.txt"
            os.symlink(f"/{secret}", root / "app" / "escape-abs")
            os.symlink("../" * 12 + str(secret), root / "app" / "escape-rel")
            os.symlink("config.yaml", root / "app" / "current")
            decoy = root / Path(json.__file__).parent.relative_to("/") / "__init__.py"
            decoy.parent.mkdir(parents=True)
            decoy.write_text("raise SystemExit('the pod\\'s json package was imported')\n")
            yield sb
    finally:
        shutil.rmtree(HOST_SECRET_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def pod_root(sandbox: Sandbox) -> Path:
    return sandbox.pod("web").root


@pytest.fixture(scope="module")
def go_fs_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static Go binary (``CGO_ENABLED=0``) that reads, lists and writes files."""
    go = shutil.which("go")
    assert go, "the Go toolchain is needed: apt-get install golang-go"
    directory = tmp_path_factory.mktemp("go-fs-probe")
    (directory / "main.go").write_text(GO_FS_PROGRAM)
    (directory / "go.mod").write_text("module example.com/fsprobe\n\ngo 1.19\n")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    subprocess.run(
        [go, "build", "-o", "probe", "."], cwd=directory, env=env, check=True, timeout=300
    )
    binary = directory / "probe"
    # The interception tests' ELF check: the binary must not ask for a dynamic loader.
    helpers = sys.modules.get("interception_helpers")
    if helpers is None:
        spec = importlib.util.spec_from_file_location("interception_helpers", INTERCEPTION_HELPERS)
        assert spec is not None and spec.loader is not None
        helpers = importlib.util.module_from_spec(spec)
        sys.modules["interception_helpers"] = helpers  # its dataclasses look themselves up
        spec.loader.exec_module(helpers)
    assert not helpers.has_interpreter(binary), "the Go program should be statically linked"
    return binary


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def mirrord_run(
    sandbox: Sandbox, run_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> Run:
    """``mirrord_run(*command, mode=None, args=())``: ``mirrord run -t pid/<web> -- command``
    from the test's tmp dir."""
    pid = sandbox.pod("web").pid

    def run(
        *command: str, mode: str | None = None, args: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        flags = [*args, *(("--fs-mode", mode) if mode else ())]
        return run_cli("run", "-t", f"pid/{pid}", *flags, "--", *command, cwd=tmp_path)

    return run


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def pod_snapshot(root: Path) -> dict[str, bytes | None]:
    app = root / "app"
    return {
        str(path.relative_to(app)): path.read_bytes() if path.is_file() else None
        for path in sorted(app.rglob("*"))
        if not path.is_symlink()
    }


# -- reading ------------------------------------------------------------------------------------


def test_python_reads_lists_and_stats(mirrord_run: Run, pod_root: Path) -> None:
    out = ok(
        mirrord_run(
            *python(
                """
                import os
                print(open('/app/config.yaml').read(), end='')
                print(sorted(os.listdir('/app/data')))
                print(os.stat('/app/config.yaml').st_size, os.lstat('/app/current').st_size)
                print(os.readlink('/app/current'), os.path.isdir('/app/data/archive'))
                print(os.access('/app/config.yaml', os.R_OK), os.path.exists('/app/missing'))
                import ctypes
                libc = ctypes.CDLL(None, use_errno=True)
                for path, flags in ((b'/app/config.yaml', 0), (b'/app/current', 0x100)):
                    buffer = ctypes.create_string_buffer(256)  # struct statx
                    assert libc.statx(-100, path, flags, 0xFFF, buffer) == 0, ctypes.get_errno()
                    print('statx', int.from_bytes(buffer.raw[40:48], 'little'))
                """
            )
        )
    )
    size = (pod_root / "app" / "config.yaml").stat().st_size
    assert out.splitlines() == [
        *CONFIG.splitlines(),
        "['archive', 'customers.csv', 'orders.csv']",
        f"{size} {len('config.yaml')}",
        "config.yaml True",
        "True False",
        f"statx {size}",
        f"statx {len('config.yaml')}",
    ]


def test_python_relative_paths(mirrord_run: Run, tmp_path: Path) -> None:
    """Paths relative to the working directory and to a remote directory descriptor."""
    relative = os.path.relpath("/app/config.yaml", tmp_path)
    out = ok(
        mirrord_run(
            *python(
                f"""
                import os
                print(open({relative!r}).read(), end='')
                app = os.open('/app', os.O_RDONLY | os.O_DIRECTORY)
                print(os.stat('config.yaml', dir_fd=app).st_size)
                data = os.open('data', os.O_RDONLY | os.O_DIRECTORY, dir_fd=app)
                orders = os.open('orders.csv', os.O_RDONLY, dir_fd=data)
                print(os.read(orders, 100).decode(), end='')
                print(sorted(os.listdir(data)))
                """
            )
        )
    )
    assert out.splitlines() == [
        *CONFIG.splitlines(),
        str(len(CONFIG)),
        "id,total",
        "1,9.99",
        "2,24.50",
        "['archive', 'customers.csv', 'orders.csv']",
    ]


def test_busybox_reads_lists_and_stats(mirrord_run: Run) -> None:
    script = (
        f"{BUSYBOX} cat /app/config.yaml; {BUSYBOX} ls /app/data; "
        f"{BUSYBOX} stat -c 'size=%s' /app/config.yaml; {BUSYBOX} readlink /app/current"
    )
    out = ok(mirrord_run(BUSYBOX, "sh", "-c", script))
    assert out.splitlines() == [
        *CONFIG.splitlines(),
        "archive",
        "customers.csv",
        "orders.csv",
        f"size={len(CONFIG)}",
        "config.yaml",
    ]


def test_static_go_reads_lists_and_stats(mirrord_run: Run, go_fs_probe: Path) -> None:
    out = ok(mirrord_run(str(go_fs_probe), "read", "/app/config.yaml", "/app/data"))
    assert out.splitlines() == [
        *CONFIG.splitlines(),
        "entries: [archive customers.csv orders.csv]",
        f"size: {len(CONFIG)}",
    ]


def test_node_reads_lists_and_stats(mirrord_run: Run) -> None:
    script = (
        "const fs = require('fs');"
        "process.stdout.write(fs.readFileSync('/app/config.yaml', 'utf8'));"
        "console.log(JSON.stringify(fs.readdirSync('/app/data').sort()));"
        "console.log(fs.statSync('/app/config.yaml').size);"
    )
    out = ok(mirrord_run(NODE, "-e", script))
    assert out.splitlines() == [
        *CONFIG.splitlines(),
        '["archive","customers.csv","orders.csv"]',
        str(len(CONFIG)),
    ]


# -- writing ------------------------------------------------------------------------------------

WRITERS: dict[str, Callable[[str], list[str]]] = {
    "python": lambda prefix: python(
        f"""
        import os
        with open('/app/{prefix}-created.txt', 'w') as f:
            f.write('from python')
        os.rename('/app/{prefix}-created.txt', '/app/{prefix}-renamed.txt')
        os.mkdir('/app/{prefix}-dir')
        os.rmdir('/app/{prefix}-dir')
        open('/app/{prefix}-tmp.txt', 'w').close()
        os.unlink('/app/{prefix}-tmp.txt')
        os.chmod('/app/{prefix}-renamed.txt', 0o600)
        os.truncate('/app/{prefix}-renamed.txt', 4)
        os.remove('/app/data/customers.csv')
        print('written')
        """
    ),
    "busybox": lambda prefix: [
        BUSYBOX,
        "sh",
        "-c",
        f"echo from busybox > /app/{prefix}-created.txt && "
        f"{BUSYBOX} mv /app/{prefix}-created.txt /app/{prefix}-renamed.txt && "
        f"{BUSYBOX} mkdir /app/{prefix}-dir && {BUSYBOX} rmdir /app/{prefix}-dir && "
        f"{BUSYBOX} touch /app/{prefix}-tmp.txt && {BUSYBOX} rm /app/{prefix}-tmp.txt && "
        "echo written",
    ],
    "node": lambda prefix: [
        NODE,
        "-e",
        f"const fs = require('fs');"
        f"fs.writeFileSync('/app/{prefix}-created.txt', 'from node');"
        f"fs.renameSync('/app/{prefix}-created.txt', '/app/{prefix}-renamed.txt');"
        f"fs.mkdirSync('/app/{prefix}-dir'); fs.rmdirSync('/app/{prefix}-dir');"
        f"fs.writeFileSync('/app/{prefix}-tmp.txt', 'x'); fs.unlinkSync('/app/{prefix}-tmp.txt');"
        "console.log('written');",
    ],
}


@pytest.mark.parametrize("program", [*WRITERS, "go"])
def test_write_mode_creates_renames_and_deletes(
    program: str, mirrord_run: Run, pod_root: Path, go_fs_probe: Path, tmp_path: Path
) -> None:
    app = pod_root / "app"
    if program == "go":
        result = mirrord_run(str(go_fs_probe), "write", "/app", mode="write")
    elif program == "node":
        # Write mode from a config file this time.
        config = tmp_path / "mirrord.toml"
        config.write_text('[feature]\nfs = "write"\n')
        result = mirrord_run(*WRITERS[program](program), args=("-f", str(config)))
    else:
        result = mirrord_run(*WRITERS[program](program), mode="write")
    assert ok(result).split() == ["written"]
    renamed = app / f"{program}-renamed.txt"
    assert renamed.is_file()
    assert not (app / f"{program}-created.txt").exists()
    assert not (app / f"{program}-dir").exists()
    assert not (app / f"{program}-tmp.txt").exists()
    assert not Path(f"/app/{program}-renamed.txt").exists()  # nothing written locally
    if program == "python":
        assert renamed.read_text() == "from"
        assert renamed.stat().st_mode & 0o777 == 0o600
        assert not (app / "data" / "customers.csv").exists()
        (app / "data" / "customers.csv").write_text("id,name\n1,ada\n")  # for other tests
    renamed.unlink()


def test_read_mode_cannot_write(mirrord_run: Run, pod_root: Path, go_fs_probe: Path) -> None:
    before = pod_snapshot(pod_root)
    out = ok(
        mirrord_run(
            *python(
                """
                import errno, os
                attempts = [
                    lambda: open('/app/new.txt', 'w'),
                    lambda: open('/app/config.yaml', 'a'),
                    lambda: os.remove('/app/config.yaml'),
                    lambda: os.rename('/app/config.yaml', '/app/moved.yaml'),
                    lambda: os.mkdir('/app/new-dir'),
                    lambda: os.rmdir('/app/data/archive'),
                    lambda: os.chmod('/app/config.yaml', 0o777),
                    lambda: os.truncate('/app/config.yaml', 0),
                    lambda: os.utime('/app/config.yaml', (0, 0)),
                ]
                for attempt in attempts:
                    try:
                        attempt()
                        print('written')
                    except OSError as err:
                        print(errno.errorcode[err.errno])
                print(open('/app/config.yaml').read(), end='')
                """
            )
        )
    )
    assert out.splitlines() == ["EROFS"] * 9 + CONFIG.splitlines()
    busybox = mirrord_run(BUSYBOX, "sh", "-c", "echo x > /app/busybox.txt")
    assert busybox.returncode != 0
    assert "Read-only file system" in busybox.stderr
    go = mirrord_run(str(go_fs_probe), "write", "/app")
    assert go.returncode == 3
    assert "read-only file system" in go.stdout
    assert pod_snapshot(pod_root) == before


# -- what stays local -----------------------------------------------------------------------------


def test_python_stdlib_stays_local(mirrord_run: Run) -> None:
    """The pod has a decoy ``json`` at the stdlib's path: the local one is imported."""
    out = ok(
        mirrord_run(
            *python("import json, email, http.client; print(json.__file__, json.dumps([1]))")
        )
    )
    assert out.split() == [json.__file__, "[1]"]


def test_symlinks_out_of_the_pod_leak_nothing(mirrord_run: Run) -> None:
    relative_up = "../" * 12 + str(HOST_SECRET_DIR.relative_to("/")) + "/secret.txt"
    result = mirrord_run(
        *python(
            f"""
            import os
            paths = ['/app/escape-abs', '/app/escape-rel',
                     '/app/../../..{HOST_SECRET_DIR}/secret.txt']
            data = os.open('/app/data', os.O_RDONLY | os.O_DIRECTORY)
            attempts = [lambda p=p: open(p).read() for p in paths]
            attempts.append(lambda: os.read(os.open({relative_up!r}, os.O_RDONLY, dir_fd=data), 99))
            attempts.append(lambda: os.stat({relative_up!r}, dir_fd=data).st_size)
            for attempt in attempts:
                try:
                    print('read', attempt())
                except OSError as err:
                    print(type(err).__name__)
            print(os.readlink('/app/escape-abs'))
            """
        )
    )
    output = ok(result)
    assert HOST_SECRET not in output + result.stderr
    assert output.splitlines() == [
        *["FileNotFoundError"] * 5,
        f"{HOST_SECRET_DIR}/secret.txt",  # the link's target as stored in the pod
    ]
    busybox = mirrord_run(BUSYBOX, "cat", "/app/escape-abs", "/app/escape-rel")
    assert busybox.returncode == 1
    assert HOST_SECRET not in busybox.stdout + busybox.stderr


def test_local_mode_traps_nothing(mirrord_run: Run, tmp_path: Path) -> None:
    local = tmp_path / "local.txt"
    local.write_text("local file\n")
    assert not Path("/app/config.yaml").exists()
    result = mirrord_run(BUSYBOX, "cat", str(local), "/app/config.yaml", mode="local")
    assert result.returncode == 1
    assert result.stdout == "local file\n"
    assert "can't open '/app/config.yaml': No such file or directory" in result.stderr


def test_exit_codes_propagate(mirrord_run: Run) -> None:
    result = mirrord_run(BUSYBOX, "sh", "-c", f"{BUSYBOX} cat /app/config.yaml && exit 7")
    assert (result.returncode, result.stdout) == (7, CONFIG)
    missing = mirrord_run(BUSYBOX, "cat", "/app/missing.txt")
    assert missing.returncode == 1
    assert "No such file or directory" in missing.stderr


def test_patterns_in_localwithoverrides_mode(
    mirrord_run: Run, pod_root: Path, tmp_path: Path
) -> None:
    """Only the patterns go remote: ``read_only`` for reading (a write open stays local),
    ``read_write`` for writing too (the mount is writable for them)."""
    config = tmp_path / "mirrord.toml"
    config.write_text(
        "[feature.fs]\n"
        'mode = "localwithoverrides"\n'
        "read_only = ['^/app/config\\.yaml$']\n"
        "read_write = ['^/app/data/rw-']\n"
    )
    out = ok(
        mirrord_run(
            *python(
                """
                import os
                print(open('/app/config.yaml').read(), end='')
                print(os.path.exists('/app/data/orders.csv'))
                with open('/app/data/rw-python.txt', 'w') as f:
                    f.write('through a pattern')
                try:
                    open('/app/config.yaml', 'a')
                except OSError as err:
                    print(type(err).__name__)
                """
            ),
            args=("-f", str(config)),
        )
    )
    assert out.splitlines() == [*CONFIG.splitlines(), "False", "FileNotFoundError"]
    written = pod_root / "app" / "data" / "rw-python.txt"
    assert written.read_text() == "through a pattern"
    written.unlink()


@pytest.mark.parametrize("ending", ["exit", "sigterm"])
def test_the_mount_is_removed_when_the_run_ends(
    ending: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    """The command learns where its remote file lives (the session's mount); after the run
    (a normal exit, or SIGTERM forwarded to the command) nothing is mounted there."""
    script = f"exec 3</app/config.yaml; {BUSYBOX} readlink /proc/self/fd/3; " + (
        f"{BUSYBOX} sleep 30" if ending == "sigterm" else "exit 5"
    )
    mirrord = Path(sys.executable).parent / "mirrord"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}
    target = f"pid/{sandbox.pod('web').pid}"
    argv = [str(mirrord), "run", "-t", target, "--", BUSYBOX, "sh", "-c", script]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        remote_file = Path(process.stdout.readline().strip())
        assert remote_file.name == "config.yaml" and remote_file.parent.name == "app"
        mountpoint = remote_file.parent.parent
        assert str(mountpoint) in Path("/proc/self/mountinfo").read_text()
        if ending == "sigterm":
            process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert status == (143 if ending == "sigterm" else 5)
    assert str(mountpoint) not in Path("/proc/self/mountinfo").read_text()
    assert not mountpoint.exists()
