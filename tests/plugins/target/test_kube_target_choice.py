"""Choosing the container and pod of a Kubernetes target, on the official client's model
objects as the API server returns them: mesh sidecars are skipped, not-running pods and
containers are refused with what to do, deployments resolve deterministically, and
``mirrord ls`` lists what can be targeted."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from mirrord_target.local.kube_targets import (
    KubeTargetError,
    default_container,
    label_selector,
    running_container,
    running_pods,
)
from mirrord_target.local.target_listing import pod_targets


def _pod(
    name: str,
    containers: list[str],
    *,
    phase: str = "Running",
    ready: bool = True,
    states: dict[str, dict[str, Any]] | None = None,
    deleting: bool = False,
) -> client.V1Pod:
    states = states or {}
    statuses = []
    for index, container in enumerate(containers):
        state = states.get(container, {"running": {"startedAt": "2024-01-01T00:00:00Z"}})
        status: dict[str, Any] = {
            "name": container,
            "image": f"registry.example/{container}:1",
            "imageID": "",
            "ready": "running" in state,
            "restartCount": 0,
            "state": state,
        }
        if "running" in state:
            status["containerID"] = f"containerd://{index:02d}{'ab' * 31}"
        statuses.append(status)
    metadata: dict[str, Any] = {"name": name, "namespace": "shop"}
    if deleting:
        metadata["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return client.V1Pod.from_dict(
        {
            "metadata": metadata,
            "spec": {"nodeName": "node-1", "containers": [{"name": c} for c in containers]},
            "status": {
                "phase": phase,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "containerStatuses": statuses,
            },
        }
    )


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["app"], "app"),
        (["istio-proxy", "app", "worker"], "app"),
        (["linkerd-proxy", "api"], "api"),
        (["istio-proxy"], "istio-proxy"),
        ([], None),
    ],
)
def test_default_container_skips_mesh_sidecars(names: list[str], expected: str | None) -> None:
    assert default_container(names) == expected


def test_running_container_gives_id_and_runtime_from_container_statuses() -> None:
    pod = _pod("web-1", ["istio-proxy", "app"])
    status = running_container(pod, None)
    assert status.name == "app"
    assert status.container_id == f"containerd://01{'ab' * 31}"
    assert running_container(pod, "istio-proxy").name == "istio-proxy"


def test_no_such_container_lists_the_pods_containers() -> None:
    with pytest.raises(KubeTargetError) as caught:
        running_container(_pod("web-1", ["app", "worker"]), "sidecar")
    assert str(caught.value) == (
        "pod web-1 has no container 'sidecar' (its containers: app, worker); use "
        "pod/web-1/container/<one of them>"
    )


def test_pending_pod_and_waiting_container_are_not_running() -> None:
    with pytest.raises(KubeTargetError, match=r"pod web-1 is not running \(phase Pending\)"):
        running_container(_pod("web-1", ["app"], phase="Pending"), None)
    with pytest.raises(KubeTargetError, match=r"is not running \(phase Terminating\)"):
        running_container(_pod("web-1", ["app"], deleting=True), None)
    waiting = {"app": {"waiting": {"reason": "CrashLoopBackOff"}}}
    with pytest.raises(
        KubeTargetError,
        match=r"container app of pod web-1 is not running \(waiting: CrashLoopBackOff\)",
    ):
        running_container(_pod("web-1", ["app"], states=waiting), None)


def test_deployment_pods_ready_first_then_by_name_and_only_running_ones() -> None:
    pods = [
        _pod("web-c", ["app"]),
        _pod("web-a", ["app"], ready=False),
        _pod("web-b", ["app"]),
        _pod("web-0", ["app"], phase="Pending"),
        _pod("web-9", ["app"], states={"app": {"terminated": {"exitCode": 1}}}),
    ]
    assert [p.metadata.name for p in running_pods(pods, None)] == ["web-b", "web-c", "web-a"]
    assert [p.metadata.name for p in running_pods(list(reversed(pods)), None)] == [
        "web-b",
        "web-c",
        "web-a",
    ]


def test_label_selector_renders_labels_and_expressions() -> None:
    selector = client.V1LabelSelector.from_dict(
        {
            "matchLabels": {"tier": "front", "app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "stage"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "team", "operator": "Exists"},
                {"key": "zone", "operator": "NotIn", "values": ["z1"]},
            ],
        }
    )
    assert label_selector(selector) == (
        "app=web,tier=front,env in (prod,stage),!canary,team,zone notin (z1)"
    )
    assert label_selector(None) == ""


def test_ls_lists_pods_with_one_entry_per_application_container() -> None:
    assert pod_targets(_pod("web-1", ["app"])) == ["pod/web-1"]
    assert pod_targets(_pod("web-2", ["istio-proxy", "app"])) == ["pod/web-2"]
    assert pod_targets(_pod("api-1", ["api", "worker", "linkerd-proxy"])) == [
        "pod/api-1/container/api",
        "pod/api-1/container/worker",
    ]
    assert pod_targets(_pod("job-1", ["app"], phase="Succeeded")) == []
    assert pod_targets(_pod("old-1", ["app"], deleting=True)) == []
