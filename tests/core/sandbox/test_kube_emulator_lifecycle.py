"""Starting and stopping the emulated Kubernetes API, and what it leaves behind: nothing.

- ``EmulatedCluster.stop()`` ends the agents it started, gives the pods' processes their
  cgroups back and removes its own, and stops answering.
- ``mirrord sandbox up`` serves the API from a background process and prints the
  ``KUBECONFIG``; ``status`` shows it; ``down`` stops it. A sandbox removed some other way
  takes its API server with it.

Needs root, as the sandbox does.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from kube_emulator_helpers import (
    AgentSpec,
    clients,
    container_id,
    job_pods,
    pod_of,
    wait_for,
    wait_ready_line,
)
from kubernetes import client, config

from mirrord_core.sandbox import Sandbox
from mirrord_core.sandbox.demo import demo_pods
from mirrord_core.sandbox.kube import EmulatedCluster
from mirrord_core.sandbox.kube.cgroups import SLICE, cgroup2_mount, cgroup_of
from mirrord_core.sandbox.kube.service import ApiServerInfo
from mirrord_core.sandbox.process import ProcessRef

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sandbox pods need root")

NS = "default"
RunCli = Callable[..., subprocess.CompletedProcess[str]]


def _ready_pid(log: str) -> int:
    line = next(ln for ln in log.splitlines() if ln.startswith('{"ready"'))
    return int(json.loads(line)["ready"]["pid"])


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def _slice_of(sandbox_name: str) -> Path:
    mount = cgroup2_mount()
    assert mount is not None
    return mount / SLICE / sandbox_name


def test_stop_leaves_nothing_behind() -> None:
    with Sandbox.create(demo_pods()) as sandbox:
        cluster = EmulatedCluster(sandbox).start()
        try:
            c = clients(cluster)
            web = pod_of(c, NS, "web")
            api = pod_of(c, NS, "api").metadata.name
            job_spec, eph_spec = AgentSpec.new(), AgentSpec.new()
            c.batch.create_namespaced_job(
                NS, job_spec.job("agent-left", ["--container-id", container_id(web)])
            )
            pod = wait_for(lambda: job_pods(c, NS, "agent-left"), what="the agent pod")[0]
            job_agent = _ready_pid(wait_ready_line(c, NS, pod.metadata.name, "mirrord-agent"))
            container = eph_spec.container("agent-eph", ["--ephemeral"], targetContainerName="api")
            c.core.patch_namespaced_pod_ephemeralcontainers(
                api, NS, {"spec": {"ephemeralContainers": [container]}}
            )
            ephemeral_agent = _ready_pid(wait_ready_line(c, NS, api, "agent-eph"))
            group = cgroup_of(sandbox.pod("web").pid)
            assert group is not None and container_id(web) in group
            assert _slice_of(sandbox.name).is_dir()
        finally:
            cluster.stop()
        for pid in (job_agent, ephemeral_agent):
            assert not Path(f"/proc/{pid}").exists(), f"agent {pid} still running"
        # The pods keep running, back in the cgroup they came from; the groups are gone.
        web_pid = sandbox.pod("web").pid
        assert ProcessRef.of(web_pid) is not None
        assert container_id(web) not in (cgroup_of(web_pid) or "")
        assert not _slice_of(sandbox.name).exists()
        assert not cluster.workdir.exists()
        assert _refused(cluster.port)
        served = sandbox.exec_in("api", ["/bin/busybox", "wget", "-qO-", "http://web:8080/"])
        assert served.stdout == b"web pod says hi\n"


def test_emulated_cluster_fixture_sets_kubeconfig(emulated_cluster: EmulatedCluster) -> None:
    assert os.environ["KUBECONFIG"] == str(emulated_cluster.kubeconfig_path)
    # The client reads $KUBECONFIG when it is imported, so a test names the file.
    path = os.environ["KUBECONFIG"]
    api = config.new_client_from_config(config_file=path)
    names = {d.metadata.name for d in client.AppsV1Api(api).list_namespaced_deployment(NS).items}
    assert names == {"web", "api"}
    assert config.list_kube_config_contexts(path)[1]["name"] == "mirrord-sandbox"


def test_sandbox_up_serves_the_api_until_down(run_cli: RunCli) -> None:
    name = f"kube-{secrets.token_hex(3)}"
    up = run_cli("sandbox", "up", "--name", name)
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = Path(f"/run/mirrord-sandbox/{name}/kubeconfig")
        assert f"export KUBECONFIG={kubeconfig}" in up.stdout
        assert "mirrord run -t deployment/web" in up.stdout
        info = ApiServerInfo.load(name)
        assert info is not None and info.alive() and info.kubeconfig == str(kubeconfig)
        # The CLI has exited; the server outlives it.
        api = config.new_client_from_config(config_file=str(kubeconfig))
        deployments = client.AppsV1Api(api).list_namespaced_deployment(NS).items
        assert {d.metadata.name for d in deployments} == {"web", "api"}
        status = run_cli("sandbox", "status")
        assert f"Kubernetes API: {info.url}" in status.stdout, status.stdout
        port = int(re.sub(r".*:", "", info.url))
    finally:
        down = run_cli("sandbox", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert not ProcessRef(info.pid, info.start_time).alive()
    assert _refused(port)
    assert not _slice_of(name).exists()
    assert not Path(f"/run/mirrord-sandbox/{name}").exists()


def test_api_server_stops_with_its_sandbox(run_cli: RunCli) -> None:
    name = f"kube-{secrets.token_hex(3)}"
    up = run_cli("sandbox", "up", "--name", name)
    assert up.returncode == 0, up.stderr
    info = ApiServerInfo.load(name)
    assert info is not None
    try:
        # Removed without `mirrord sandbox down`: the server notices and stops.
        assert Sandbox.down(name)
        wait_for(lambda: not info.alive(), what="the API server to stop")
    finally:
        run_cli("sandbox", "down", "--name", name)
    assert not _slice_of(name).exists()
