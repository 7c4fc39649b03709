"""What the agent Job and the ephemeral agent container look like, built from a resolved
config: pinned to the target's node, hostPID, privileged, the configured image, pull
policy, TTL, namespace, log level, interface and timeout; the token only in the
environment; and how the agent's readiness is read from its container status and log."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from mirrord_core.config import ResolvedConfig
from mirrord_core.target_model import ResolvedTarget
from mirrord_target.agent_image import AGENT_IMAGE_REPOSITORY, DEFAULT_AGENT_IMAGE
from mirrord_target.local.agent_job import AGENT_CONTAINER, job_manifest
from mirrord_target.local.agent_readiness import (
    AgentImageError,
    AgentStartError,
    check_container,
    ready_line,
    scheduling_message,
)
from mirrord_target.local.agent_spec import TOKEN_ENV, AgentSpec
from mirrord_target.local.ephemeral_agent import ephemeral_container

TARGET = ResolvedTarget(
    kind="deployment",
    name="web",
    namespace="shop",
    pod="web-5d9c-abcde",
    container="app",
    container_id="0123456789abcdef" * 4,
    container_runtime="containerd",
    node="node-7",
)

AGENT_SECTION = """
[agent]
image = "registry.example/agent:9"
image_pull_policy = "Always"
ttl = 30
namespace = "mirrord"
log_level = "debug"
network_interface = "eth1"
communication_timeout = 45
startup_timeout = 90
"""


def _serialized(obj: Any) -> dict[str, Any]:
    return client.ApiClient().sanitize_for_serialization(obj)


def test_job_runs_the_agent_pinned_privileged_with_the_configured_settings(
    resolve_config: Callable[..., ResolvedConfig],
) -> None:
    spec = AgentSpec.from_config(resolve_config(AGENT_SECTION).config.agent)
    job = _serialized(job_manifest(spec, TARGET, "mirrord-agent-x1"))
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"] == {
        "name": "mirrord-agent-x1",
        "namespace": "mirrord",
        "labels": {"app": "mirrord"},
    }
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["ttlSecondsAfterFinished"] == 30
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["template"]["metadata"]["labels"] == {"app": "mirrord"}
    assert pod["nodeName"] == "node-7"
    assert pod["hostPID"] is True
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["name"] == AGENT_CONTAINER
    assert container["image"] == "registry.example/agent:9"
    assert container["imagePullPolicy"] == "Always"
    assert container["securityContext"]["privileged"] is True
    assert container["command"] == ["mirrord", "agent"]
    assert container["args"] == [
        "--listen",
        f"0.0.0.0:{spec.port}",
        "--container-id",
        TARGET.container_id,
        "--log-level",
        "debug",
        "--communication-timeout",
        "45",
        "--network-interface",
        "eth1",
    ]
    assert container["env"] == [{"name": TOKEN_ENV, "value": spec.token}]
    assert spec.token not in json.dumps(container["args"] + container["command"])
    assert spec.startup_timeout == 90


def test_defaults_use_this_releases_image_and_the_targets_namespace(
    resolve_config: Callable[..., ResolvedConfig],
) -> None:
    spec = AgentSpec.from_config(resolve_config(None).config.agent)
    assert spec.image == DEFAULT_AGENT_IMAGE
    assert DEFAULT_AGENT_IMAGE.startswith(f"{AGENT_IMAGE_REPOSITORY}:")
    job = _serialized(job_manifest(spec, TARGET, "mirrord-agent-x2"))
    assert job["metadata"]["namespace"] == "shop"
    assert job["spec"]["ttlSecondsAfterFinished"] == 1
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert "--communication-timeout" not in container["args"]
    assert "--network-interface" not in container["args"]


def test_each_session_gets_its_own_token_and_port(
    resolve_config: Callable[..., ResolvedConfig],
) -> None:
    agent = resolve_config(None).config.agent
    specs = [AgentSpec.from_config(agent) for _ in range(8)]
    assert len({s.token for s in specs}) == 8
    assert all(len(s.token) >= 32 for s in specs)
    assert all(10000 <= s.port < 30000 for s in specs)


def test_ephemeral_container_targets_the_container_and_shares_its_namespaces(
    resolve_config: Callable[..., ResolvedConfig],
) -> None:
    spec = AgentSpec.from_config(resolve_config(AGENT_SECTION).config.agent)
    container = _serialized(ephemeral_container(spec, TARGET, "mirrord-agent-e1"))
    assert container["name"] == "mirrord-agent-e1"
    assert container["targetContainerName"] == "app"
    assert container["securityContext"]["privileged"] is True
    assert container["args"][:3] == ["--listen", f"0.0.0.0:{spec.port}", "--ephemeral"]
    assert "--container-id" not in container["args"]
    assert container["env"] == [{"name": TOKEN_ENV, "value": spec.token}]


def _status(state: dict[str, Any]) -> client.V1ContainerStatus:
    return client.V1ContainerStatus.from_dict(
        {
            "name": AGENT_CONTAINER,
            "image": "x",
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "state": state,
        }
    )


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"])
def test_image_pull_failures_name_the_image_and_the_settings(reason: str) -> None:
    waiting = {"waiting": {"reason": reason, "message": 'pull access denied for "nope"'}}
    with pytest.raises(AgentImageError) as caught:
        check_container(_status(waiting), "registry.example/nope:1", "pod p")
    text = str(caught.value)
    assert "the agent image registry.example/nope:1 cannot be pulled" in text
    assert reason in text and "agent.image" in text and "image_pull_policy" in text
    assert "\n" not in text


def test_an_agent_that_exited_or_cannot_start_is_reported_not_waited_for() -> None:
    exited = {"terminated": {"exitCode": 1, "reason": "Error"}}
    last_words = "mirrord: error: no process of container 0123 runs on this node"
    with pytest.raises(AgentStartError) as caught:
        check_container(_status(exited), "img", "pod p", lambda: last_words)
    assert str(caught.value) == (
        f"the agent in pod p exited before it was ready (exit code 1, Error): {last_words}"
    )
    config_error = {"waiting": {"reason": "CreateContainerConfigError", "message": "bad"}}
    with pytest.raises(AgentStartError, match="cannot start"):
        check_container(_status(config_error), "img", "pod p")

    # Still coming up: no error, and no log read.
    def no_log() -> str:
        raise AssertionError("the log is read only for an agent that exited")

    check_container(_status({"waiting": {"reason": "ContainerCreating"}}), "img", "pod p", no_log)
    check_container(None, "img", "pod p")


def test_ready_line_is_found_among_other_output() -> None:
    log = (
        "2024-01-01 agent[7] INFO mirrord.agent: starting\n"
        '{"not": "ready"}\n'
        '{"ready": {"host": "0.0.0.0", "port": 41000, "pid": 7}}\n'
    )
    assert ready_line(log) == {"host": "0.0.0.0", "port": 41000, "pid": 7}
    assert ready_line("starting\n{broken json\n") is None
    assert ready_line("") is None


def test_scheduling_message_explains_a_pending_pod() -> None:
    pod = client.V1Pod.from_dict(
        {
            "metadata": {"name": "mirrord-agent-x"},
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient cpu.",
                    }
                ],
            },
        }
    )
    assert scheduling_message(pod) == "0/3 nodes are available: 3 Insufficient cpu."
