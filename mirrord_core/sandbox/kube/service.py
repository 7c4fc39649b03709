"""The emulated API server of ``mirrord sandbox up``: a background process per sandbox.

``start_api_server(name)`` starts ``python -m mirrord_core.sandbox.kube.service`` in its
own session (it outlives the CLI, like the sandbox), waits until it serves, and returns
where: the server writes ``<state dir>/kubeconfig`` and records itself in
``<state dir>/kube-api.json``; its log is ``<state dir>/kube-api.log``.
``stop_api_server(name)`` stops it (SIGTERM: it stops the agents it started and removes
its cgroups). It also stops by itself once its sandbox is gone, so a sandbox torn down
some other way (``Sandbox.down``) does not leave it behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mirrord_core.sandbox import Sandbox, SandboxError
from mirrord_core.sandbox.process import ProcessRef, terminate
from mirrord_core.sandbox.state import SandboxState, state_dir

from . import kubeconfig
from .access import AccessPolicy
from .api_server import KubeApiServer, bind
from .cluster import default_images

log = logging.getLogger("mirrord.sandbox.kube")

INFO_FILE = "kube-api.json"
LOG_FILE = "kube-api.log"
KUBECONFIG_FILE = "kubeconfig"
START_TIMEOUT = 30.0
_WATCH_INTERVAL = 1.0


@dataclass(frozen=True)
class ApiServerInfo:
    """A running background API server: its process, address and kubeconfig."""

    pid: int
    start_time: int
    url: str
    kubeconfig: str
    log: str

    def alive(self) -> bool:
        """Whether the recorded process still runs."""
        return ProcessRef(self.pid, self.start_time).alive()

    def save(self, directory: Path) -> None:
        """Record it (atomically) in the sandbox's state directory."""
        tmp = directory / f".{INFO_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, directory / INFO_FILE)

    @classmethod
    def load(cls, name: str) -> ApiServerInfo | None:
        """The record of sandbox ``name``'s server, if there is one."""
        try:
            return cls(**json.loads((state_dir(name) / INFO_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def api_server_info(name: str) -> ApiServerInfo | None:
    """The running API server of sandbox ``name``, or None."""
    info = ApiServerInfo.load(name)
    return info if info is not None and info.alive() else None


def start_api_server(
    name: str, *, host: str = "127.0.0.1", port: int = 0, timeout: float = START_TIMEOUT
) -> ApiServerInfo:
    """Start the background API server of sandbox ``name`` and wait until it serves."""
    directory = state_dir(name)
    if not directory.is_dir():
        raise SandboxError(f"no sandbox named {name!r} (no {directory})")
    if (running := api_server_info(name)) is not None:
        return running
    log_path = directory / LOG_FILE
    read_end, write_end = os.pipe()
    argv = [sys.executable, "-m", "mirrord_core.sandbox.kube.service", "--sandbox", name]
    argv += ["--host", host, "--port", str(port), "--ready-fd", str(write_end)]
    try:
        with open(log_path, "ab") as log_file:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                pass_fds=(write_end,),
                start_new_session=True,
                cwd="/",
            )
    finally:
        os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        answer = os.read(read_end, 64) if ready else b""
    finally:
        os.close(read_end)
    info = ApiServerInfo.load(name)
    if answer.startswith(b"ready") and info is not None:
        return info
    with contextlib.suppress(ProcessLookupError):
        child.kill()
    child.wait()
    tail = _log_tail(log_path)
    why = "did not start in time" if not answer and child.returncode is None else "failed"
    raise SandboxError(f"the emulated Kubernetes API {why} (log {log_path}){tail}")


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return (":\n  " + "\n  ".join(tail)) if tail else ""


def stop_api_server(name: str, *, grace: float = 15.0) -> bool:
    """Stop sandbox ``name``'s API server; False if none was running."""
    info = ApiServerInfo.load(name)
    if info is None:
        return False
    ref = ProcessRef(info.pid, info.start_time)
    was_running = ref.alive()
    left = terminate([ref], grace=grace)
    if left:
        raise SandboxError(f"the emulated Kubernetes API (pid {info.pid}) did not stop")
    with contextlib.suppress(OSError):
        (state_dir(name) / INFO_FILE).unlink()
    return was_running


# the background process -----------------------------------------------------------------


def _sandbox_gone(name: str, tag: str) -> bool:
    try:
        state = SandboxState.load(name)
    except SandboxError:
        return False  # unreadable for a moment (being rewritten): still there
    return state is None or state.tag != tag or state.phase == "tearing-down"


async def _serve(name: str, host: str, port: int, ready_fd: int | None) -> int:
    sandbox = Sandbox.attach(name)
    directory = state_dir(name)
    policy = AccessPolicy()
    token = secrets.token_hex(24)
    server = KubeApiServer(
        sandbox,
        workdir=directory / "kube",
        token=token,
        policy=policy,
        images=default_images(sandbox),
    )
    sock = bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    try:
        await server.start(sock)
    except BaseException:
        await server.stop()  # what was set up before the failure (cgroups)
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        config = kubeconfig.write(directory / KUBECONFIG_FILE, url, token, user=policy.user)
        me = ProcessRef.of(os.getpid())
        assert me is not None
        ApiServerInfo(me.pid, me.start_time, url, str(config), str(directory / LOG_FILE)).save(
            directory
        )
        log.info("serving sandbox %s at %s (kubeconfig %s)", name, url, config)
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _WATCH_INTERVAL)
            if _sandbox_gone(name, sandbox.tag):
                log.info("sandbox %s is gone; stopping", name)
                break
    finally:
        problems = await server.stop()
        for leftover in (INFO_FILE, KUBECONFIG_FILE):
            with contextlib.suppress(OSError):
                (directory / leftover).unlink()
    for problem in problems:
        log.error("left behind: %s", problem)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the background process."""
    parser = argparse.ArgumentParser(prog="python -m mirrord_core.sandbox.kube.service")
    parser.add_argument("--sandbox", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s kube-api[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    started = time.monotonic()
    try:
        return asyncio.run(_serve(args.sandbox, args.host, args.port, args.ready_fd))
    except (SandboxError, OSError) as err:
        log.error("cannot serve sandbox %s: %s", args.sandbox, err)
        return 1
    finally:
        log.info("stopped after %.0f s", time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
