"""Resolving ``pod/``, ``deployment/`` and ``container/`` targets to a running container.

A deployment resolves to one of its running pods, chosen deterministically (ready pods
first, then by name); ``container/C`` to the running pod of the namespace that has a
container named ``C`` (again by name). Without a chosen container, a pod's first
container that is not a known mesh sidecar is the target. The container's id and runtime
come from ``status.containerStatuses``; the agent finds the process from the id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mirrord_core.target_model import ResolvedTarget
from mirrord_core.user_errors import UserError
from mirrord_target.local.kube_client import KubeApi

# Containers injected by service meshes: never the application a user means.
MESH_SIDECARS = frozenset(
    {"istio-proxy", "istio-init", "linkerd-proxy", "linkerd-init", "proxy-init"}
)
# Agent pods carry this label; they are never targets.
AGENT_LABEL_SELECTOR = "app!=mirrord"


class KubeTargetError(UserError):
    """The Kubernetes target cannot be used; the message says why and what to do."""


def _list_hint(namespace: str) -> str:
    return f"`mirrord ls -n {namespace}` lists the targets"


def label_selector(selector: client.V1LabelSelector | None) -> str:
    """A ``LabelSelector`` in the query-string form the list endpoints take."""
    if selector is None:
        return ""
    terms = [f"{key}={value}" for key, value in sorted((selector.match_labels or {}).items())]
    for expression in selector.match_expressions or []:
        values = ",".join(expression.values or [])
        operator = expression.operator
        if operator == "In":
            terms.append(f"{expression.key} in ({values})")
        elif operator == "NotIn":
            terms.append(f"{expression.key} notin ({values})")
        elif operator == "Exists":
            terms.append(expression.key)
        elif operator == "DoesNotExist":
            terms.append(f"!{expression.key}")
    return ",".join(terms)


def container_names(pod: client.V1Pod) -> list[str]:
    """The pod's (regular) containers, in spec order."""
    return [container.name for container in (pod.spec.containers if pod.spec else [])]


def default_container(names: Sequence[str]) -> str | None:
    """The first container that is not a mesh sidecar (else the first one)."""
    for name in names:
        if name not in MESH_SIDECARS:
            return name
    return names[0] if names else None


def _status_of(pod: client.V1Pod, name: str) -> client.V1ContainerStatus | None:
    for status in (pod.status.container_statuses if pod.status else None) or []:
        if status.name == name:
            return status
    return None


def _container_state(status: client.V1ContainerStatus | None) -> str:
    state = status.state if status is not None else None
    if state is None:
        return "not started"
    if state.waiting is not None:
        return f"waiting: {state.waiting.reason or 'unknown reason'}"
    if state.terminated is not None:
        return f"terminated: {state.terminated.reason or 'exit ' + str(state.terminated.exit_code)}"
    return "not started"


def _pod_phase(pod: client.V1Pod) -> str:
    if pod.metadata is not None and pod.metadata.deletion_timestamp is not None:
        return "Terminating"
    return (pod.status.phase if pod.status else None) or "Unknown"


def _is_ready(pod: client.V1Pod) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def running_container(pod: client.V1Pod, wanted: str | None) -> client.V1ContainerStatus:
    """The status of the target container of a pod; it must be running.

    ``wanted`` names the container; ``None`` takes :func:`default_container`.
    """
    pod_name = pod.metadata.name
    names = container_names(pod)
    name = wanted if wanted is not None else default_container(names)
    if name is None or name not in names:
        raise KubeTargetError(
            f"pod {pod_name} has no container {wanted!r} (its containers: "
            f"{', '.join(names) or 'none'}); use pod/{pod_name}/container/<one of them>"
        )
    phase = _pod_phase(pod)
    if phase != "Running":
        raise KubeTargetError(
            f"pod {pod_name} is not running (phase {phase}); wait until it runs or choose "
            "another target"
        )
    status = _status_of(pod, name)
    if status is None or status.state is None or status.state.running is None:
        raise KubeTargetError(
            f"container {name} of pod {pod_name} is not running ({_container_state(status)}); "
            "wait until it runs or choose another target"
        )
    if not status.container_id:
        raise KubeTargetError(
            f"container {name} of pod {pod_name} reports no container id yet; try again"
        )
    return status


def _target_of(
    kind: str, name: str, namespace: str, pod: client.V1Pod, container: client.V1ContainerStatus
) -> ResolvedTarget:
    runtime, _, container_id = str(container.container_id).rpartition("://")
    return ResolvedTarget(
        kind=kind,
        name=name,
        namespace=namespace,
        pod=pod.metadata.name,
        container=container.name,
        container_id=container_id,
        container_runtime=runtime or None,
        node=pod.spec.node_name if pod.spec else None,
    )


def running_pods(pods: Iterable[client.V1Pod], container: str | None) -> list[client.V1Pod]:
    """The pods whose target container runs, ready ones first, then by name."""
    usable = []
    for pod in pods:
        try:
            running_container(pod, container)
        except KubeTargetError:
            continue
        usable.append(pod)
    return sorted(usable, key=lambda p: (not _is_ready(p), p.metadata.name))


def _describe_pods(pods: Sequence[client.V1Pod]) -> str:
    return ", ".join(f"{p.metadata.name} {_pod_phase(p)}" for p in pods[:5]) + (
        ", …" if len(pods) > 5 else ""
    )


def _read_pod(api: KubeApi, name: str, namespace: str) -> client.V1Pod:
    try:
        return api.call(api.core.read_namespaced_pod, name, namespace)
    except ApiException as err:
        if err.status == 404:
            raise KubeTargetError(
                f"pod {name} not found in namespace {namespace}; {_list_hint(namespace)}"
            ) from None
        raise


def _pod_of_deployment(
    api: KubeApi, name: str, namespace: str, container: str | None
) -> client.V1Pod:
    try:
        deployment = api.call(api.apps.read_namespaced_deployment, name, namespace)
    except ApiException as err:
        if err.status == 404:
            raise KubeTargetError(
                f"deployment {name} not found in namespace {namespace}; {_list_hint(namespace)}"
            ) from None
        raise
    template = (
        deployment.spec.template.spec if deployment.spec and deployment.spec.template else None
    )
    template_names = [c.name for c in (template.containers if template else [])]
    if container is not None and template_names and container not in template_names:
        raise KubeTargetError(
            f"deployment {name} has no container {container!r} (its containers: "
            f"{', '.join(template_names)}); use deployment/{name}/container/<one of them>"
        )
    selector = label_selector(deployment.spec.selector if deployment.spec else None)
    pods = api.call(api.core.list_namespaced_pod, namespace, label_selector=selector).items
    chosen = running_pods(pods, container)
    if chosen:
        return chosen[0]
    found = f" (its pods: {_describe_pods(pods)})" if pods else " (it has no pods)"
    raise KubeTargetError(
        f"deployment {name} in namespace {namespace} has no running pod{found}; scale it up "
        "or wait for its pods to start"
    )


def _pod_with_container(api: KubeApi, container: str, namespace: str) -> client.V1Pod:
    pods = api.call(
        api.core.list_namespaced_pod, namespace, label_selector=AGENT_LABEL_SELECTOR
    ).items
    having = [pod for pod in pods if container in container_names(pod)]
    if not having:
        raise KubeTargetError(
            f"no pod in namespace {namespace} has a container named {container}; "
            f"{_list_hint(namespace)}"
        )
    chosen = running_pods(having, container)
    if not chosen:
        raise KubeTargetError(
            f"no pod in namespace {namespace} runs a container named {container} "
            f"(pods: {_describe_pods(having)}); wait for one to start"
        )
    return chosen[0]


def resolve_kube_target(
    api: KubeApi, kind: str, name: str, container: str | None, namespace: str
) -> ResolvedTarget:
    """Resolve a ``pod``, ``deployment`` or ``container`` target in ``namespace``."""
    if kind == "pod":
        pod = _read_pod(api, name, namespace)
    elif kind == "deployment":
        pod = _pod_of_deployment(api, name, namespace, container)
    elif kind == "container":
        pod = _pod_with_container(api, name, namespace)
    else:
        raise ValueError(f"not a Kubernetes target kind: {kind}")
    return _target_of(kind, name, namespace, pod, running_container(pod, container))
