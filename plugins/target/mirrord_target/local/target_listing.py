"""The targets of a namespace, as ``mirrord ls`` lists them.

Running pods (agent pods excluded) as ``pod/NAME`` when they have one application
container, else one ``pod/NAME/container/C`` per container; mesh sidecars are never
listed. Deployments as ``deployment/NAME``. Sorted, like mirrord's own list, which IDE
integrations read.
"""

from __future__ import annotations

from kubernetes import client

from mirrord_target.local.kube_client import KubeApi
from mirrord_target.local.kube_targets import (
    AGENT_LABEL_SELECTOR,
    MESH_SIDECARS,
    container_names,
)


def pod_targets(pod: client.V1Pod) -> list[str]:
    """The target paths of one pod (none unless it runs)."""
    if (
        pod.metadata.deletion_timestamp is not None
        or (pod.status and pod.status.phase) != "Running"
    ):
        return []
    names = container_names(pod)
    application = [name for name in names if name not in MESH_SIDECARS] or names
    if len(application) == 1:
        return [f"pod/{pod.metadata.name}"]
    return [f"pod/{pod.metadata.name}/container/{name}" for name in application]


def list_targets(api: KubeApi, namespace: str) -> list[str]:
    """Every target of ``namespace``, sorted."""
    pods = api.call(api.core.list_namespaced_pod, namespace, label_selector=AGENT_LABEL_SELECTOR)
    deployments = api.call(api.apps.list_namespaced_deployment, namespace)
    targets = [path for pod in pods.items for path in pod_targets(pod)]
    targets += [f"deployment/{d.metadata.name}" for d in deployments.items]
    return sorted(targets)
