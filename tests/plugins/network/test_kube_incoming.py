"""Incoming traffic through a Kubernetes target: ``mirrord run --steal -t deployment/web``
against the emulated cluster, the agent running as a Job that finds the pod's container by
its cgroup; with ``agent.pause`` the container's cgroup is frozen while mirrord runs.
Traffic goes only to loopback and the sandbox's namespaces."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirrord_core.linux.cgroups import cgroup2_mount, cgroup_of

LOCAL_BODY = "answered by the local app\n"
WEB_BODY = "web pod says hi\n"
SETTLE = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def fetch(cluster: Any) -> str | None:
    sandbox = cluster.sandbox
    url = f"http://{sandbox.pod('web').ip}:8080/index.html"
    argv = ["/bin/busybox", "timeout", "5", "/bin/busybox", "wget", "-qO-", url]
    result = sandbox.exec_in("api", argv, text=True, timeout=20)
    return result.stdout if result.returncode == 0 else None


def freeze_state(pid: int) -> str:
    mount, group = cgroup2_mount(), cgroup_of(pid)
    assert mount is not None and group is not None
    return (mount / group.lstrip("/") / "cgroup.freeze").read_text().strip()


def test_steal_and_pause_through_a_deployment(emulated_cluster: Any, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(LOCAL_BODY)
    port = free_port()
    config = tmp_path / "mirrord.json"
    config.write_text(
        json.dumps(
            {
                "agent": {"pause": True},
                "feature": {
                    "network": {"incoming": {"mode": "steal", "port_mapping": [[port, 8080]]}}
                },
            }
        )
    )
    mirrord = Path(sys.executable).parent / "mirrord"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}
    app = [sys.executable, "-m", "http.server", str(port), "--directory", str(site)]
    log = (tmp_path / "run.log").open("w")
    run = subprocess.Popen(
        [str(mirrord), "run", "-f", str(config), "-t", "deployment/web", "--", *app],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    web_pid = emulated_cluster.sandbox.pod("web").pid
    try:
        wait_for(
            lambda: fetch(emulated_cluster) == LOCAL_BODY, "the deployment's port to be stolen"
        )
        # The agent (a Job) found the container by its id and froze its cgroup.
        assert freeze_state(web_pid) == "1"
        run.send_signal(signal.SIGINT)  # mirrord forwards it to the app
        run.wait(timeout=60)
        wait_for(lambda: freeze_state(web_pid) == "0", "the container to be thawed")
        wait_for(lambda: fetch(emulated_cluster) == WEB_BODY, "the pod to answer again")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        log.close()
    output = (tmp_path / "run.log").read_text()
    assert "Traceback" not in output, output
