"""Sandbox pods as Kubernetes workloads: a Deployment, a ReplicaSet and a Pod each.

Sandbox pod ``N`` in namespace ``NS`` becomes Deployment ``N`` (selector ``app=N``),
ReplicaSet ``N-<hash>`` and Pod ``N-<hash>-<suffix>`` with one container ``N`` whose
``containerID`` is real: the pod's processes are moved into a cgroup named after it (see
``cgroups``). Names and ids are derived from the sandbox and the pod, so they stay the same
if the API server restarts.

The pod's status follows its main process: Running while it lives, Failed once it died
(the emulator restarts nothing). ``pending`` names extra Deployments whose only pod can
never be scheduled, for the "pod is not running" paths.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mirrord_core.linux.process_family import process_tree
from mirrord_core.sandbox import DEFAULT_HTTP_PORT, Pod, Sandbox
from mirrord_core.sandbox.process import ProcessRef, tcp_listening

from . import resources
from .cgroups import ContainerGroups
from .node import (
    HOST_IP,
    EmulatedNode,
    PodBacking,
    condition,
    container_id,
    container_status,
    name_suffix,
    running_conditions,
)
from .store import ObjectStore, now

UNSCHEDULABLE = (
    "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
    "1 No preemption victims found for incoming pod."
)


@dataclass(frozen=True)
class WorkloadNames:
    """The object names and container id of one workload."""

    deployment: str
    template_hash: str
    replicaset: str
    pod: str
    container_id: str


def workload_names(seed: str, name: str) -> WorkloadNames:
    """Stable names for workload ``name`` (``seed`` tells sandboxes apart)."""
    template_hash = hashlib.sha256(f"template/{seed}/{name}".encode()).hexdigest()[:10]
    replicaset = f"{name}-{template_hash}"
    return WorkloadNames(
        deployment=name,
        template_hash=template_hash,
        replicaset=replicaset,
        pod=f"{replicaset}-{name_suffix(seed=f'pod/{seed}/{name}')}",
        container_id=container_id(f"{seed}/{name}"),
    )


def _image(name: str) -> str:
    return f"sandbox/{name}:latest"


def _pod_template(
    name: str, namespace: str, env: dict[str, str] | None, port: int | None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": _image(name),
        "imagePullPolicy": "Always",
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "resources": {},
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items() if k != "HOSTNAME"]
    if port is not None:
        container["ports"] = [{"containerPort": port, "protocol": "TCP"}]
    return {
        "metadata": {"labels": {"app": name}},
        "spec": {
            "containers": [container],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30,
            "securityContext": {},
        },
    }


def _owner(kind: str, api_version: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class SandboxWorkloads:
    """Publishes the sandbox's pods as workloads and keeps their status current."""

    def __init__(
        self,
        sandbox: Sandbox,
        store: ObjectStore,
        node: EmulatedNode,
        groups: ContainerGroups | None,
        pending: Iterable[str] = (),
    ) -> None:
        self.sandbox = sandbox
        self.store = store
        self.node = node
        self.groups = groups
        self.pending = list(pending)
        self._seed = f"{sandbox.name}/{sandbox.tag}"
        self._live: dict[tuple[str, str], tuple[Pod, ProcessRef | None, WorkloadNames]] = {}
        self._started: dict[str, str] = {}

    def publish(self) -> None:
        """Create the objects of every sandbox pod and pending workload."""
        for pod in self.sandbox.pods:
            names = workload_names(f"{self._seed}/{pod.namespace}", pod.name)
            ref = ProcessRef.of(pod.pid)
            self._started[names.pod] = now()
            if self.groups is not None and ref is not None:
                self.groups.attach(names.container_id, process_tree(pod.pid))
            self._live[(pod.namespace, names.pod)] = (pod, ref, names)
            self.node.pods[(pod.namespace, names.pod)] = PodBacking(
                namespace=pod.namespace,
                name=names.pod,
                netns=pod.netns,
                main_pid=ref,
                container_ids={pod.name: names.container_id},
                logs={pod.name: pod.log},
            )
            template = _pod_template(pod.name, pod.namespace, dict(pod.env), _port_of(pod))
            self._create(
                pod.name, pod.namespace, names, template, self._pod_status(pod, ref, names)
            )
        for name in self.pending:
            names = workload_names(f"{self._seed}/default", name)
            template = _pod_template(name, "default", None, None)
            status = {
                "phase": "Pending",
                "qosClass": "BestEffort",
                "conditions": [condition("PodScheduled", False, "Unschedulable", UNSCHEDULABLE)],
            }
            self._create(name, "default", names, template, status, scheduled=False)

    def _create(
        self,
        name: str,
        namespace: str,
        names: WorkloadNames,
        template: dict[str, Any],
        pod_status: dict[str, Any],
        *,
        scheduled: bool = True,
    ) -> None:
        labels = {"app": name}
        running = pod_status["phase"] == "Running"
        deployment = self.store.create(
            resources.DEPLOYMENTS,
            {
                "metadata": {
                    "name": names.deployment,
                    "namespace": namespace,
                    "labels": dict(labels),
                    "generation": 1,
                    "annotations": {"deployment.kubernetes.io/revision": "1"},
                },
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": dict(labels)},
                    "template": template,
                    "strategy": {
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
                    },
                    "revisionHistoryLimit": 10,
                    "progressDeadlineSeconds": 600,
                },
                "status": _deployment_status(running),
            },
        )
        rs_labels = {**labels, "pod-template-hash": names.template_hash}
        rs_template = {
            "metadata": {"labels": dict(rs_labels)},
            "spec": template["spec"],
        }
        replicaset = self.store.create(
            resources.REPLICASETS,
            {
                "metadata": {
                    "name": names.replicaset,
                    "namespace": namespace,
                    "labels": dict(rs_labels),
                    "generation": 1,
                    "annotations": {
                        "deployment.kubernetes.io/desired-replicas": "1",
                        "deployment.kubernetes.io/max-replicas": "2",
                        "deployment.kubernetes.io/revision": "1",
                    },
                    "ownerReferences": [_owner("Deployment", "apps/v1", deployment)],
                },
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": dict(rs_labels)},
                    "template": rs_template,
                },
                "status": _replicaset_status(running),
            },
        )
        spec = dict(template["spec"])
        if scheduled:
            spec["nodeName"] = self.node.name
        self.store.create(
            resources.PODS,
            {
                "metadata": {
                    "name": names.pod,
                    "namespace": namespace,
                    "generateName": f"{names.replicaset}-",
                    "labels": dict(rs_labels),
                    "ownerReferences": [_owner("ReplicaSet", "apps/v1", replicaset)],
                },
                "spec": spec,
                "status": pod_status,
            },
        )

    def _pod_status(self, pod: Pod, ref: ProcessRef | None, names: WorkloadNames) -> dict[str, Any]:
        alive = ref is not None and ref.alive()
        started = self._started[names.pod]
        if alive:
            state: dict[str, Any] = {"running": {"startedAt": started}}
        else:
            state = {
                "terminated": {
                    "exitCode": 137,
                    "reason": "Error",
                    "startedAt": started,
                    "finishedAt": now(),
                    "containerID": f"containerd://{names.container_id}",
                }
            }
        return {
            "phase": "Running" if alive else "Failed",
            "conditions": running_conditions(alive),
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "startTime": started,
            "qosClass": "BestEffort",
            "containerStatuses": [
                container_status(
                    pod.name, _image(pod.name), state, container_id=names.container_id, ready=alive
                )
            ],
        }

    def refresh(self) -> None:
        """Bring pod (and owner) status in line with the pods' processes."""
        for (namespace, pod_name), (pod, ref, names) in self._live.items():
            obj = self.store.get(resources.PODS, namespace, pod_name)
            if obj is None:
                continue
            alive = ref is not None and ref.alive()
            if (obj["status"].get("phase") == "Running") == alive:
                continue
            status = self._pod_status(pod, ref, names)
            # Ephemeral containers keep their own status through the change.
            if "ephemeralContainerStatuses" in obj["status"]:
                status["ephemeralContainerStatuses"] = obj["status"]["ephemeralContainerStatuses"]
            obj["status"] = status
            self.store.replace(resources.PODS, obj)
            self.store.update(
                resources.REPLICASETS,
                namespace,
                names.replicaset,
                lambda rs, up=alive: rs.__setitem__("status", _replicaset_status(up)),
            )
            self.store.update(
                resources.DEPLOYMENTS,
                namespace,
                names.deployment,
                lambda d, up=alive: d.__setitem__("status", _deployment_status(up)),
            )

    def release(self) -> list[str]:
        """Undo what ``publish`` did to the machine (the cgroups)."""
        return self.groups.release() if self.groups is not None else []


def _port_of(pod: Pod) -> int | None:
    # The sandbox does not keep PodSpec.port; the default HTTP server listens on 8080.
    return DEFAULT_HTTP_PORT if tcp_listening(pod.pid, DEFAULT_HTTP_PORT) else None


def _replicaset_status(running: bool) -> dict[str, Any]:
    ready = 1 if running else 0
    status: dict[str, Any] = {"replicas": 1, "fullyLabeledReplicas": 1, "observedGeneration": 1}
    if ready:
        status.update(readyReplicas=1, availableReplicas=1)
    return status


def _deployment_status(running: bool) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": 1,
        "replicas": 1,
        "updatedReplicas": 1,
        "conditions": [
            {
                "type": "Available",
                "status": "True" if running else "False",
                "reason": "MinimumReplicasAvailable" if running else "MinimumReplicasUnavailable",
                "message": "Deployment has minimum availability."
                if running
                else "Deployment does not have minimum availability.",
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable",
                "message": "ReplicaSet has successfully progressed.",
            },
        ],
    }
    if running:
        status.update(readyReplicas=1, availableReplicas=1)
    else:
        status["unavailableReplicas"] = 1
    return status
