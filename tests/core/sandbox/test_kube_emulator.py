"""The emulated Kubernetes API, driven by the official client over real HTTP.

One sandbox (the demo pods web and api, plus ``doomed`` whose process a test kills) is
served for the module, with a pending Deployment ``stuck``. Agents are real ``mirrord
agent`` processes started from Jobs and ephemeral containers; sessions reach them through
the API's port-forward. Needs root, as the sandbox does.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_emulator_helpers import (
    AgentSpec,
    Clients,
    clients,
    container_id,
    job_pods,
    pod_of,
    port_forward_relay,
    raw_request,
    read_log,
    remote_env,
    wait_for,
    wait_ready_line,
)
from kubernetes import client, watch
from kubernetes.stream import portforward

from mirrord_core.agent.target_process import pid_of_container
from mirrord_core.sandbox import PodSpec, Sandbox
from mirrord_core.sandbox.demo import demo_pods
from mirrord_core.sandbox.kube import EmulatedCluster
from mirrord_core.sandbox.kube.cgroups import cgroup2_mount, cgroup_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sandbox pods need root")

NS = "default"


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    pods = [*demo_pods(), PodSpec("doomed")]
    with Sandbox.create(pods) as sandbox, EmulatedCluster(sandbox, pending_pods=["stuck"]) as emu:
        yield emu


@pytest.fixture(scope="module")
def c(cluster: EmulatedCluster) -> Clients:
    return clients(cluster)


def _status(err: client.ApiException) -> dict[str, object]:
    return json.loads(err.body)


# discovery and workloads ----------------------------------------------------------------


def test_discovery_lists_served_groups_and_no_operator(c: Clients) -> None:
    assert client.VersionApi(c.api).get_code().git_version.startswith("v1.")
    groups = {
        g.name: g.preferred_version.group_version
        for g in client.ApisApi(c.api).get_api_versions().groups
    }
    assert groups == {
        "apps": "apps/v1",
        "batch": "batch/v1",
        "authorization.k8s.io": "authorization.k8s.io/v1",
    }
    assert client.CoreApi(c.api).get_api_versions().versions == ["v1"]
    names = {r.name for r in client.AppsV1Api(c.api).get_api_resources().resources}
    assert names == {"deployments", "replicasets"}
    core_names = {r.name for r in c.core.get_api_resources().resources}
    assert {"pods", "pods/log", "pods/portforward", "pods/ephemeralcontainers"} <= core_names
    with pytest.raises(client.ApiException) as err:
        client.CustomObjectsApi(c.api).list_cluster_custom_object(
            "operator.metalbear.co", "v1", "mirrordoperators"
        )
    assert err.value.status == 404


def test_sandbox_pods_are_deployments_replicasets_and_pods(
    cluster: EmulatedCluster, c: Clients
) -> None:
    deployments = {d.metadata.name: d for d in c.apps.list_namespaced_deployment(NS).items}
    assert set(deployments) == {"web", "api", "doomed", "stuck"}
    web = c.apps.read_namespaced_deployment("web", NS)
    assert web.spec.selector.match_labels == {"app": "web"} and web.spec.replicas == 1
    assert web.status.available_replicas == 1
    [rs] = c.apps.list_namespaced_replica_set(NS, label_selector="app=web").items
    assert rs.metadata.owner_references[0].kind == "Deployment"
    assert rs.metadata.owner_references[0].uid == web.metadata.uid
    template_hash = rs.metadata.labels["pod-template-hash"]
    assert rs.metadata.name == f"web-{template_hash}" and len(template_hash) == 10
    pod = pod_of(c, NS, "web")
    assert (
        pod.metadata.name.startswith(f"{rs.metadata.name}-")
        and len(pod.metadata.name) == len(rs.metadata.name) + 6
    )
    assert pod.metadata.owner_references[0].uid == rs.metadata.uid
    assert pod.metadata.labels == {"app": "web", "pod-template-hash": template_hash}
    assert pod.metadata.uid and pod.metadata.resource_version and pod.metadata.creation_timestamp
    assert pod.spec.node_name == "sandbox-node"
    assert [(ct.name, ct.image) for ct in pod.spec.containers] == [("web", "sandbox/web:latest")]
    assert pod.status.phase == "Running"
    assert pod.status.pod_ip == cluster.sandbox.pod("web").ip and pod.status.host_ip == "127.0.0.1"
    [status] = pod.status.container_statuses
    assert status.name == "web" and status.ready and status.state.running is not None
    assert status.container_id.startswith("containerd://") and len(container_id(pod)) == 64
    assert c.core.read_namespaced_pod(pod.metadata.name, NS).metadata.uid == pod.metadata.uid
    namespaces = {n.metadata.name for n in c.core.list_namespace().items}
    assert {"default", "kube-system", "restricted"} <= namespaces


def test_container_id_is_the_pods_cgroup(cluster: EmulatedCluster, c: Clients) -> None:
    pod = pod_of(c, NS, "web")
    cid = container_id(pod)
    web = cluster.sandbox.pod("web")
    # What `mirrord agent --container-id` does: scan /proc/*/cgroup for the id.
    assert pid_of_container(pod.status.container_statuses[0].container_id) == web.pid
    group = cgroup_of(web.pid)
    assert group is not None and group.endswith(f"/cri-containerd-{cid}.scope")
    mount = cgroup2_mount()
    assert mount is not None and (mount / group.lstrip("/") / "cgroup.freeze").exists()
    # A request the pod serves runs in a child process, inside the same group.
    assert (
        cluster.sandbox.exec_in(
            "api", ["/bin/busybox", "wget", "-qO-", "http://web:8080/"]
        ).returncode
        == 0
    )


def test_selectors(c: Clients) -> None:
    def names(**kwargs: str) -> set[str]:
        return {p.metadata.labels["app"] for p in c.core.list_namespaced_pod(NS, **kwargs).items}

    assert names(label_selector="app=web") == {"web"}
    assert names(label_selector="app in (web,api)") == {"web", "api"}
    assert names(label_selector="app notin (web,api,doomed)") == {"stuck"}
    assert names(label_selector="app!=web,app!=api,app!=doomed") == {"stuck"}
    assert names(label_selector="app,!job-name", field_selector="status.phase=Pending") == {"stuck"}
    assert "stuck" not in names(field_selector="status.phase=Running")
    pod = pod_of(c, NS, "api")
    assert names(field_selector=f"metadata.name={pod.metadata.name}") == {"api"}
    everywhere = c.core.list_pod_for_all_namespaces(label_selector="app=web").items
    assert [p.metadata.namespace for p in everywhere] == [NS]
    for bad in ({"label_selector": "app in (web"}, {"field_selector": "spec.bogus=1"}):
        with pytest.raises(client.ApiException) as err:
            c.core.list_namespaced_pod(NS, **bad)
        assert (err.value.status, _status(err.value)["reason"]) == (400, "BadRequest")


# errors -------------------------------------------------------------------------------------


def test_not_found_forbidden_and_unauthorized_shapes(cluster: EmulatedCluster, c: Clients) -> None:
    with pytest.raises(client.ApiException) as err:
        c.core.read_namespaced_pod("nope", NS)
    assert err.value.status == 404
    body = _status(err.value)
    assert body["kind"] == "Status" and body["reason"] == "NotFound"
    assert body["message"] == 'pods "nope" not found' and body["details"] == {
        "kind": "pods",
        "name": "nope",
    }
    with pytest.raises(client.ApiException) as err:
        c.batch.read_namespaced_job("nope", NS)
    assert _status(err.value)["message"] == 'jobs.batch "nope" not found'

    with pytest.raises(client.ApiException) as err:
        c.core.list_namespaced_pod("restricted")
    assert err.value.status == 403
    body = _status(err.value)
    assert body["reason"] == "Forbidden" and body["details"] == {"kind": "pods", "group": ""}
    assert body["message"] == (
        'pods is forbidden: User "developer" cannot list resource "pods" in API group "" '
        'in the namespace "restricted"'
    )
    cluster.policy.deny("create jobs")
    try:
        with pytest.raises(client.ApiException) as err:
            c.batch.create_namespaced_job(
                NS, AgentSpec.new().job("denied", ["--container-id", "0" * 64])
            )
        assert _status(err.value)["message"] == (
            'jobs is forbidden: User "developer" cannot create resource "jobs" in API group '
            '"batch" in the namespace "default"'
        )
        review = client.AuthorizationV1Api(c.api).create_self_subject_access_review(
            {
                "spec": {
                    "resourceAttributes": {
                        "namespace": NS,
                        "verb": "create",
                        "group": "batch",
                        "resource": "jobs",
                    }
                }
            }
        )
        assert review.status.allowed is False
    finally:
        cluster.policy.allow("create jobs")
    assert not job_pods(c, NS, "denied")

    code, status = raw_request(cluster, "GET", "/api/v1/namespaces/default/pods", token="wrong")
    assert (code, status["reason"]) == (401, "Unauthorized")


def _container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (
            lambda j: _container(j).pop("image"),
            "spec.template.spec.containers[0].image",
            "FieldValueRequired",
        ),
        (
            lambda j: _container(j).pop("name"),
            "spec.template.spec.containers[0].name",
            "FieldValueRequired",
        ),
        (
            lambda j: j["spec"]["template"]["spec"].update(restartPolicy="Always"),
            "spec.template.spec.restartPolicy",
            "FieldValueNotSupported",
        ),
        (
            lambda j: j["spec"]["template"]["spec"].update(hostPid=True),
            "spec.template.spec.hostPid",
            "FieldValueNotSupported",
        ),
        (
            lambda j: j["spec"].update(backoffLimit="0"),
            "spec.backoffLimit",
            "FieldValueTypeInvalid",
        ),
        (
            lambda j: _container(j)["env"].append({"value": "x"}),
            "spec.template.spec.containers[0].env[1].name",
            "FieldValueRequired",
        ),
        (lambda j: j["metadata"].update(name="Not_A_Name"), "metadata.name", "FieldValueInvalid"),
    ],
)
def test_invalid_job_bodies_are_422_naming_the_field(
    cluster: EmulatedCluster,
    c: Clients,
    change: Callable[[dict[str, Any]], object],
    field: str,
    reason: str,
) -> None:
    body = AgentSpec.new().job("invalid-job", ["--container-id", "0" * 64])
    change(body)
    code, status = raw_request(cluster, "POST", f"/apis/batch/v1/namespaces/{NS}/jobs", body)
    assert (code, status["kind"], status["reason"]) == (422, "Status", "Invalid")
    causes = [
        {"field": cause["field"], "reason": cause["reason"]}
        for cause in status["details"]["causes"]
    ]
    assert {"field": field, "reason": reason} in causes, status
    assert field in status["message"]
    assert not c.batch.list_namespaced_job(NS).items


def test_invalid_job_through_the_client_is_a_422_api_exception(c: Clients) -> None:
    body = AgentSpec.new().job("no-image", ["--container-id", "0" * 64])
    del _container(body)["image"]  # the client's models allow it; the API server does not
    with pytest.raises(client.ApiException) as err:
        c.batch.create_namespaced_job(NS, body)
    assert err.value.status == 422
    assert _status(err.value)["message"] == (
        'Job.batch "no-image" is invalid: spec.template.spec.containers[0].image: Required value'
    )


# agent Jobs ---------------------------------------------------------------------------------


def _run_job(c: Clients, body: dict[str, object]) -> client.V1Pod:
    job = c.batch.create_namespaced_job(NS, body)
    name = job.metadata.name
    assert job.spec.selector.match_labels == {
        "batch.kubernetes.io/controller-uid": job.metadata.uid
    }
    return wait_for(
        lambda: (pods := job_pods(c, NS, name)) and pods[0], what=f"the pod of job {name}"
    )


def test_agent_job_serves_a_session_through_port_forward(
    cluster: EmulatedCluster, c: Clients
) -> None:
    web = pod_of(c, NS, "web")
    spec = AgentSpec.new()
    pod = _run_job(
        c, spec.job("agent-e2e", ["--container-id", container_id(web)], ttlSecondsAfterFinished=60)
    )
    name = pod.metadata.name
    assert name.startswith("agent-e2e-") and pod.metadata.labels["job-name"] == "agent-e2e"
    assert pod.metadata.labels["batch.kubernetes.io/job-name"] == "agent-e2e"
    assert pod.metadata.owner_references[0].kind == "Job" and pod.spec.node_name == "sandbox-node"
    log = wait_ready_line(c, NS, name, "mirrord-agent")
    ready = json.loads(next(line for line in log.splitlines() if line.startswith('{"ready"')))[
        "ready"
    ]
    # The agent's wildcard listen address is loopback on the emulated node.
    assert (ready["host"], ready["port"]) == ("127.0.0.1", spec.port)
    running = c.core.read_namespaced_pod(name, NS)
    assert running.status.phase == "Running" and running.status.container_statuses[0].ready
    assert spec.token not in " ".join(running.spec.containers[0].args)
    assert c.batch.read_namespaced_job("agent-e2e", NS).status.active == 1
    # The agent found the web pod's process from its container id: it serves web's env.
    env = remote_env(c, NS, name, spec)
    assert env["GREETING"] == "hello from the web pod"
    assert (
        c.core.read_namespaced_pod_log(name, NS, container="mirrord-agent", tail_lines=1).count(
            "\n"
        )
        == 1
    )

    agent_pid = ready["pid"]
    c.batch.delete_namespaced_job("agent-e2e", NS, propagation_policy="Background")
    wait_for(lambda: not job_pods(c, NS, "agent-e2e"), what="the agent pod to be deleted")
    assert not Path(f"/proc/{agent_pid}").exists()  # stopped and reaped
    with pytest.raises(client.ApiException) as err:
        c.batch.read_namespaced_job("agent-e2e", NS)
    assert err.value.status == 404


def test_image_that_cannot_be_pulled(c: Clients) -> None:
    spec = AgentSpec.new(image="ghcr.io/example/no-such-agent:9.9")
    pod = _run_job(c, spec.job("agent-badimage", ["--container-id", "0" * 64]))
    name = pod.metadata.name

    def waiting(reason: str) -> client.V1ContainerStateWaiting | None:
        current = c.core.read_namespaced_pod(name, NS)
        state = current.status.container_statuses[0].state
        assert current.status.phase == "Pending"
        return state.waiting if state.waiting and state.waiting.reason == reason else None

    pulled = wait_for(lambda: waiting("ErrImagePull"), what="ErrImagePull")
    assert pulled.message == 'failed to pull image "ghcr.io/example/no-such-agent:9.9": not found'
    backoff = wait_for(lambda: waiting("ImagePullBackOff"), what="ImagePullBackOff")
    assert 'failed to pull image "ghcr.io/example/no-such-agent:9.9": not found' in backoff.message
    with pytest.raises(client.ApiException) as err:
        c.core.read_namespaced_pod_log(name, NS, container="mirrord-agent")
    assert (
        err.value.status == 400
        and "is waiting to start: image can't be pulled" in _status(err.value)["message"]
    )
    events = c.core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}").items
    assert any(e.type == "Warning" and "not found" in (e.message or "") for e in events)
    c.batch.delete_namespaced_job("agent-badimage", NS, propagation_policy="Foreground")
    wait_for(lambda: not job_pods(c, NS, "agent-badimage"), what="the pod to be deleted")


def test_failing_agent_is_retried_up_to_the_backoff_limit(c: Clients) -> None:
    spec = AgentSpec.new()
    _run_job(c, spec.job("agent-fails", ["--container-id", "f" * 64], backoffLimit=1))
    job = wait_for(
        lambda: (j := c.batch.read_namespaced_job("agent-fails", NS)).status.conditions and j,
        what="the job to fail",
    )
    assert {(cond.type, cond.reason) for cond in job.status.conditions} >= {
        ("Failed", "BackoffLimitExceeded")
    }
    pods = job_pods(c, NS, "agent-fails")
    # backoffLimit 1: the failed pod was replaced once.
    assert job.status.failed == 2 and len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Failed"
        terminated = pod.status.container_statuses[0].state.terminated
        assert terminated.exit_code == 1 and terminated.reason == "Error"
        assert "no process of container" in read_log(c, NS, pod.metadata.name, "mirrord-agent")
    c.batch.delete_namespaced_job("agent-fails", NS, propagation_policy="Background")
    wait_for(lambda: not job_pods(c, NS, "agent-fails"), what="the pods to be deleted")


def test_ttl_after_finished_removes_the_job_and_its_pod(c: Clients) -> None:
    _run_job(
        c, AgentSpec.new().job("agent-ttl", ["--container-id", "f" * 64], ttlSecondsAfterFinished=0)
    )
    wait_for(
        lambda: _job_or_none(c, "agent-ttl") is None and not job_pods(c, NS, "agent-ttl"),
        what="the finished job to expire",
    )


def _job_or_none(c: Clients, name: str) -> client.V1Job | None:
    try:
        return c.batch.read_namespaced_job(name, NS)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def _pod_or_none(c: Clients, name: str) -> client.V1Pod | None:
    try:
        return c.core.read_namespaced_pod(name, NS)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def test_watch_resumes_from_a_lists_version(c: Clients) -> None:
    version = c.core.list_namespaced_pod(NS).metadata.resource_version
    spec = AgentSpec.new()
    c.batch.create_namespaced_job(
        NS, spec.job("agent-watch", ["--container-id", container_id(pod_of(c, NS, "web"))])
    )
    seen: list[tuple[str, str]] = []
    stream = watch.Watch()
    for event in stream.stream(
        c.core.list_namespaced_pod,
        NS,
        label_selector="job-name=agent-watch",
        resource_version=version,
        timeout_seconds=60,
    ):
        seen.append((event["type"], event["object"].status.phase))
        if event["object"].status.phase == "Running":
            stream.stop()
    assert seen[0] == ("ADDED", "Pending") and seen[-1] == ("MODIFIED", "Running"), seen
    c.batch.delete_namespaced_job("agent-watch", NS, propagation_policy="Background")
    wait_for(lambda: not job_pods(c, NS, "agent-watch"), what="the pod to be deleted")


def test_log_follow_streams_until_the_container_exits(c: Clients) -> None:
    spec = AgentSpec.new()
    web = container_id(pod_of(c, NS, "web"))
    job = spec.job(
        "agent-follow",
        ["--container-id", web],
        container={
            "args": [
                "--listen",
                f"0.0.0.0:{spec.port}",
                "--container-id",
                web,
                "--communication-timeout",
                "1",
            ]
        },
    )
    pod = _run_job(c, job).metadata.name
    wait_ready_line(c, NS, pod, "mirrord-agent")
    # No client connects, so the agent exits after its communication timeout: following the
    # log returns everything it printed, then ends.
    followed = c.core.read_namespaced_pod_log(
        pod, NS, container="mirrord-agent", follow=True, _preload_content=False
    ).data.decode()
    assert '{"ready"' in followed and "no client" in followed.lower(), followed
    finished = c.core.read_namespaced_pod(pod, NS)
    assert finished.status.phase == "Succeeded"
    assert finished.status.container_statuses[0].state.terminated.exit_code == 0
    assert c.batch.read_namespaced_job("agent-follow", NS).status.succeeded == 1
    c.batch.delete_namespaced_job("agent-follow", NS, propagation_policy="Background")
    wait_for(lambda: not job_pods(c, NS, "agent-follow"), what="the pod to be deleted")


def test_log_container_errors(c: Clients) -> None:
    web = pod_of(c, NS, "web").metadata.name
    assert isinstance(c.core.read_namespaced_pod_log(web, NS, tail_lines=5), str)
    with pytest.raises(client.ApiException) as err:
        c.core.read_namespaced_pod_log(web, NS, container="nope")
    assert _status(err.value)["message"] == f"container nope is not valid for pod {web}"


def test_deleting_a_job_orphans_its_pod_by_default(c: Clients) -> None:
    spec = AgentSpec.new()
    pod = _run_job(
        c, spec.job("agent-orphan", ["--container-id", container_id(pod_of(c, NS, "web"))])
    )
    name = pod.metadata.name
    log = wait_ready_line(c, NS, name, "mirrord-agent")
    agent_pid = json.loads(next(ln for ln in log.splitlines() if ln.startswith('{"ready"')))[
        "ready"
    ]["pid"]
    c.batch.delete_namespaced_job(
        "agent-orphan", NS
    )  # no propagationPolicy: Orphan, as on a cluster
    assert _job_or_none(c, "agent-orphan") is None
    orphan = c.core.read_namespaced_pod(name, NS)
    assert orphan.status.phase == "Running" and not orphan.metadata.owner_references
    assert Path(f"/proc/{agent_pid}").exists()
    c.core.delete_namespaced_pod(name, NS, grace_period_seconds=5)
    wait_for(lambda: _pod_or_none(c, name) is None, what="the orphan to be deleted")
    assert not Path(f"/proc/{agent_pid}").exists()
    # Sandbox pods are not the emulator's to delete.
    with pytest.raises(client.ApiException) as err:
        c.core.delete_namespaced_pod(pod_of(c, NS, "api").metadata.name, NS)
    assert err.value.status == 403


@pytest.mark.parametrize(
    ("name", "pod_spec", "container", "expected"),
    [
        # Without hostPID the agent has a PID namespace of its own: the target is not in it.
        ("agent-nohostpid", {"hostPID": False}, {}, "no process of container"),
        # Without privileges it cannot enter the target's namespaces.
        ("agent-unprivileged", {}, {"securityContext": {"runAsUser": 0}}, "needs root"),
    ],
)
def test_agent_pod_security_is_enforced(
    c: Clients, name: str, pod_spec: dict[str, Any], container: dict[str, Any], expected: str
) -> None:
    web = container_id(pod_of(c, NS, "web"))
    pod = _run_job(
        c,
        AgentSpec.new().job(name, ["--container-id", web], pod_spec=pod_spec, container=container),
    )
    failed = wait_for(
        lambda: (
            (p := c.core.read_namespaced_pod(pod.metadata.name, NS)).status.phase == "Failed" and p
        ),
        what="the agent pod to fail",
    )
    assert failed.status.container_statuses[0].state.terminated.exit_code != 0
    assert expected in read_log(c, NS, pod.metadata.name, "mirrord-agent")
    c.batch.delete_namespaced_job(name, NS, propagation_policy="Background")
    wait_for(lambda: not job_pods(c, NS, name), what="the pod to be deleted")


def test_a_command_that_is_not_in_the_image_fails_to_start(c: Clients) -> None:
    body = AgentSpec.new().job(
        "agent-badcmd", [], container={"command": ["/bin/no-such-thing"], "args": []}
    )
    pod = _run_job(c, body)
    failed = wait_for(
        lambda: (
            (p := c.core.read_namespaced_pod(pod.metadata.name, NS)).status.phase == "Failed" and p
        ),
        what="the pod to fail",
    )
    terminated = failed.status.container_statuses[0].state.terminated
    assert (
        terminated.reason == "StartError"
        and '"/bin/no-such-thing": executable file not found' in terminated.message
    )
    c.batch.delete_namespaced_job("agent-badcmd", NS, propagation_policy="Background")


# ephemeral containers and port-forwards -------------------------------------------------------


def test_ephemeral_agent_in_the_target_pod(c: Clients) -> None:
    web = pod_of(c, NS, "web").metadata.name
    spec = AgentSpec.new()
    container = spec.container("agent-eph", ["--ephemeral"], targetContainerName="web")
    patched = c.core.patch_namespaced_pod_ephemeralcontainers(
        web, NS, {"spec": {"ephemeralContainers": [container]}}
    )
    assert [e.name for e in patched.spec.ephemeral_containers] == ["agent-eph"]
    wait_for(
        lambda: any(
            s.name == "agent-eph" and s.state.running
            for s in c.core.read_namespaced_pod(web, NS).status.ephemeral_container_statuses or []
        ),
        what="the ephemeral container to run",
    )
    wait_ready_line(c, NS, web, "agent-eph")
    # The agent listens in the pod's network namespace: the port-forward goes to the pod.
    assert remote_env(c, NS, web, spec)["GREETING"] == "hello from the web pod"
    # It cannot be changed or removed once added, and new ones are validated.
    changed = {**container, "image": "other:1"}
    for containers, message in (
        ([changed], 'existing ephemeral containers "agent-eph" may not be changed'),
        ([container, {**container, "name": "web"}], 'Duplicate value: "web"'),
        ([container, {"name": "no-image"}], "spec.ephemeralContainers[1].image: Required value"),
        (
            [container, {**container, "name": "x", "targetContainerName": "nope"}],
            'Not found: "nope"',
        ),
    ):
        with pytest.raises(client.ApiException) as err:
            c.core.patch_namespaced_pod_ephemeralcontainers(
                web,
                NS,
                [{"op": "replace", "path": "/spec/ephemeralContainers", "value": containers}],
            )
        assert err.value.status == 422 and message in _status(err.value)["message"], err.value.body


def test_ephemeral_container_with_an_image_that_cannot_be_pulled(c: Clients) -> None:
    api = pod_of(c, NS, "api").metadata.name
    spec = AgentSpec.new(image="registry.example/missing:1")
    container = spec.container("agent-badeph", ["--ephemeral"], targetContainerName="api")
    c.core.patch_namespaced_pod_ephemeralcontainers(
        api, NS, {"spec": {"ephemeralContainers": [container]}}
    )
    waiting = wait_for(
        lambda: next(
            (
                s.state.waiting
                for s in c.core.read_namespaced_pod(api, NS).status.ephemeral_container_statuses
                or []
                if s.name == "agent-badeph"
                and s.state.waiting
                and s.state.waiting.reason == "ImagePullBackOff"
            ),
            None,
        ),
        what="ImagePullBackOff",
    )
    assert 'failed to pull image "registry.example/missing:1": not found' in waiting.message


def test_port_forward_reaches_into_the_pod_network(cluster: EmulatedCluster, c: Clients) -> None:
    web = pod_of(c, NS, "web")
    # The host itself has no route to pods.
    with pytest.raises(OSError), socket.create_connection((web.status.pod_ip, 8080), timeout=5):
        pass
    with (
        port_forward_relay(c, NS, web.metadata.name, 8080) as local_port,
        urllib.request.urlopen(f"http://127.0.0.1:{local_port}/", timeout=30) as response,
    ):
        assert response.read() == b"web pod says hi\n"
    forward = portforward(
        c.core.connect_get_namespaced_pod_portforward, web.metadata.name, NS, ports="9"
    )
    sock = forward.socket(9)
    sock.settimeout(30)
    assert sock.recv(10) == b""
    assert "connection refused" in (forward.error(9) or "").lower()
    stuck = pod_of(c, NS, "stuck").metadata.name
    with pytest.raises(client.ApiException) as err:
        portforward(c.core.connect_get_namespaced_pod_portforward, stuck, NS, ports="8080")
    assert "pod is not running. Current status=Pending" in str(err.value.reason)


def test_a_pod_whose_process_died_is_failed(cluster: EmulatedCluster, c: Clients) -> None:
    doomed = cluster.sandbox.pod("doomed")
    os.kill(doomed.pid, signal.SIGKILL)
    pod = wait_for(
        lambda: (p := pod_of(c, NS, "doomed")).status.phase == "Failed" and p,
        what="the pod to be reported failed",
    )
    status = pod.status.container_statuses[0]
    assert not status.ready and status.state.terminated is not None
    assert not c.apps.read_namespaced_deployment("doomed", NS).status.available_replicas
    assert (
        c.core.list_namespaced_pod(
            NS, label_selector="app=doomed", field_selector="status.phase=Running"
        ).items
        == []
    )
