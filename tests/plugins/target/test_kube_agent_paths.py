"""The agent's other paths against the emulated Kubernetes API: reusing a running agent
pod (``connect_agent_name`` + ``connect_agent_port``), one port-forward endpoint serving
successive and concurrent sessions (each connection its own websocket to the same
agent), an agent pod that stays pending, deployments without a running pod, and the
operator look-up finding none."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from kube_test_helpers import PROBE_COMMAND, PROBE_OUTPUT, RunCli, agent_jobs, error_line

from mirrord_core.config import ResolvedConfig
from mirrord_core.sandbox import Sandbox
from mirrord_core.sandbox.demo import demo_pods
from mirrord_core.sandbox.kube import EmulatedCluster
from mirrord_core.session import Session
from mirrord_env.local.remote_env import fetch_remote_env
from mirrord_target.local.agent_job import start_job_agent
from mirrord_target.local.agent_readiness import AgentPendingError
from mirrord_target.local.agent_spec import AgentSpec
from mirrord_target.local.kube_agent import resolve_configured_kube_target, spawn_kube_agent
from mirrord_target.local.kube_client import KubeApi, connect_kube
from mirrord_target.local.kube_targets import resolve_kube_target
from mirrord_target.local.operator_probe import operator_installed
from mirrord_target.local.progress import Progress

ResolveFn = Callable[..., ResolvedConfig]


def _quiet() -> Progress:
    return Progress("test", stream=io.StringIO(), mode="off")


@pytest.fixture
def kube_api(emulated_cluster: Any) -> Any:
    api = connect_kube(str(emulated_cluster.kubeconfig_path), False)
    yield api
    api.close()


def test_connect_agent_name_reuses_a_running_agent_and_leaves_it_running(
    emulated_cluster: Any, kube_api: KubeApi, resolve_config: ResolveFn, run_cli: RunCli
) -> None:
    # A long TTL: the finished Job stays, so its presence shows mirrord did not delete it.
    spec = attrs.evolve(AgentSpec.from_config(resolve_config(None).config.agent), ttl=600)
    target = resolve_kube_target(kube_api, "deployment", "web", None, "default")
    agent = start_job_agent(kube_api, spec, target, _quiet())
    try:
        [job] = agent_jobs(emulated_cluster)
        listed = json.loads(run_cli("ls").stdout)
        assert listed and not any("mirrord-agent" in entry for entry in listed)
        env = {
            "MIRRORD_CONNECT_AGENT": agent.pod,
            "MIRRORD_CONNECT_PORT": str(agent.port),
            "MIRRORD_AGENT_TOKEN": spec.token,
        }
        result = run_cli("run", "--", *PROBE_COMMAND, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout == PROBE_OUTPUT
        assert f"connected to the running agent pod {agent.pod}" in result.stderr
        # Nothing new was started, and what mirrord did not create it did not delete.
        assert agent_jobs(emulated_cluster) == [job]
    finally:
        agent.release()
    assert agent_jobs(emulated_cluster) == []


def test_connect_agent_name_errors(emulated_cluster: Any, run_cli: RunCli) -> None:
    token = {"MIRRORD_AGENT_TOKEN": "0123456789abcdef0123"}
    missing_pod = run_cli(
        "run",
        "--",
        "true",
        env={
            **token,
            "MIRRORD_CONNECT_AGENT": "mirrord-agent-gone",
            "MIRRORD_CONNECT_PORT": "4000",
        },
    )
    assert error_line(missing_pod) == (
        "agent pod mirrord-agent-gone (connect_agent_name) not found in namespace default; "
        "set agent.namespace to where it runs"
    )
    no_port = run_cli("run", "--", "true", env={**token, "MIRRORD_CONNECT_AGENT": "x"})
    assert "connect_agent_name needs connect_agent_port" in error_line(no_port)
    no_token = run_cli(
        "run", "--", "true", env={"MIRRORD_CONNECT_AGENT": "x", "MIRRORD_CONNECT_PORT": "4000"}
    )
    assert "needs the agent's session token in $MIRRORD_AGENT_TOKEN" in error_line(no_token)


def test_one_endpoint_serves_successive_and_concurrent_sessions(
    emulated_cluster: Any, resolve_config: ResolveFn
) -> None:
    config = resolve_config(None, flags={"target": "deployment/web"}).config
    target = resolve_configured_kube_target(config)
    endpoint = spawn_kube_agent(config, target)
    try:
        [job] = agent_jobs(emulated_cluster)
        assert endpoint.host == "127.0.0.1"

        async def greeting() -> str:
            session = await Session.connect(endpoint)
            try:
                return (await fetch_remote_env(session))["GREETING"]
            finally:
                await session.close()

        async def sessions() -> list[str]:
            # The agent serves while a client is connected (it exits when the last one
            # leaves), as mirrord run's own session keeps it while others come and go.
            anchor = await Session.connect(endpoint)
            try:
                first = await greeting()
                # That connection and its websocket are gone; the next gets a new one.
                second = await greeting()
                together = await asyncio.gather(greeting(), greeting(), greeting())
                return [first, second, *together, (await fetch_remote_env(anchor))["GREETING"]]
            finally:
                await anchor.close()

        assert asyncio.run(sessions()) == ["hello from the web pod"] * 6
        assert agent_jobs(emulated_cluster) == [job]
    finally:
        endpoint.release()
    assert agent_jobs(emulated_cluster) == []


def test_agent_pod_that_stays_pending_is_reported_as_stuck_and_deleted(
    emulated_cluster: Any, kube_api: KubeApi, resolve_config: ResolveFn
) -> None:
    spec = attrs.evolve(
        AgentSpec.from_config(resolve_config(None).config.agent), startup_timeout=1.0
    )
    target = resolve_kube_target(kube_api, "deployment", "web", None, "default")
    # No kubelet runs on that node: the pod is bound to it but never starts.
    elsewhere = attrs.evolve(target, node="node-without-kubelet")
    with pytest.raises(AgentPendingError) as caught:
        start_job_agent(kube_api, spec, elsewhere, _quiet())
    message = str(caught.value)
    assert message.startswith("the agent (pod mirrord-agent-"), message
    assert "is stuck pending after 1 s" in message
    assert "agent.startup_timeout" in message
    assert agent_jobs(emulated_cluster) == []


def test_operator_lookup_finds_none_on_the_emulated_cluster(kube_api: KubeApi) -> None:
    assert operator_installed(kube_api) is False


def test_deployment_and_pod_that_do_not_run(run_cli: RunCli) -> None:
    with (
        Sandbox.create(demo_pods()) as sandbox,
        EmulatedCluster(sandbox, pending_pods=["queue"]) as cluster,
    ):
        env = {"KUBECONFIG": str(cluster.kubeconfig_path)}
        api = connect_kube(str(cluster.kubeconfig_path), False)
        try:
            [pod] = api.core.list_namespaced_pod("default", label_selector="app=queue").items
        finally:
            api.close()
        name = pod.metadata.name
        deployment = run_cli("run", "-t", "deployment/queue", "--", "true", env=env)
        assert error_line(deployment) == (
            f"deployment queue in namespace default has no running pod (its pods: {name} "
            "Pending); scale it up or wait for its pods to start"
        )
        single = run_cli("run", "-t", f"pod/{name}", "--", "true", env=env)
        assert error_line(single) == (
            f"pod {name} is not running (phase Pending); wait until it runs or choose another "
            "target"
        )
        # A pod that does not run is no target; its deployment is listed all the same.
        listed = json.loads(run_cli("ls", env=env).stdout)
        assert "deployment/queue" in listed
        assert f"pod/{name}" not in listed
