"""The agent as an ephemeral container of the target pod (``agent.ephemeral``).

Added through the pod's ``ephemeralcontainers`` subresource with ``targetContainerName``
set to the target container, it shares that container's process namespace (the target
is its PID 1: ``--ephemeral``) and the pod's network namespace, so the port-forward goes
to the target pod itself. Kubernetes cannot remove an ephemeral container: the agent
exits by itself when its clients are gone (``agent.communication_timeout``).
"""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mirrord_core.target_model import ResolvedTarget
from mirrord_target.local.agent_readiness import AgentStartError, AgentWatch
from mirrord_target.local.agent_spec import (
    AGENT_COMMAND,
    AgentSpec,
    StartedAgent,
    privileged,
    random_suffix,
)
from mirrord_target.local.kube_client import KubeApi
from mirrord_target.local.progress import Progress

# kubectl debug adds ephemeral containers with a strategic merge patch, which merges the
# list by container name (a JSON merge patch would replace the list).
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def ephemeral_container(
    spec: AgentSpec, target: ResolvedTarget, name: str
) -> client.V1EphemeralContainer:
    """The agent's ephemeral container, attached to the target container's namespaces."""
    return client.V1EphemeralContainer(
        name=name,
        image=spec.image,
        image_pull_policy=spec.pull_policy(),
        command=AGENT_COMMAND,
        args=spec.args(["--ephemeral"]),
        env=spec.env(),
        security_context=privileged(),
        target_container_name=target.container,
    )


class _EphemeralWatch(AgentWatch):
    """The agent runs in the target pod, as one of its ephemeral containers."""

    def __init__(
        self, api: KubeApi, spec: AgentSpec, name: str, target: ResolvedTarget, progress: Progress
    ):
        super().__init__(api, spec, str(target.namespace), name, progress)
        self.pod_name = str(target.pod)

    def find_pod(self) -> client.V1Pod | None:
        try:
            return self.api.call(self.api.core.read_namespaced_pod, self.pod_name, self.namespace)
        except ApiException as err:
            if err.status == 404:
                raise AgentStartError(
                    f"the target pod {self.pod_name} went away while the agent started"
                ) from None
            raise

    def agent_status(self, pod: client.V1Pod) -> client.V1ContainerStatus | None:
        statuses = (pod.status.ephemeral_container_statuses if pod.status else None) or []
        return next((s for s in statuses if s.name == self.container), None)

    def where(self) -> str:
        return f"ephemeral container {self.container} of pod {self.pod_name}"


def start_ephemeral_agent(
    api: KubeApi, spec: AgentSpec, target: ResolvedTarget, progress: Progress
) -> StartedAgent:
    """Add the agent to the target pod and wait until it is ready."""
    name = f"mirrord-agent-{random_suffix()}"
    progress.step(f"adding ephemeral container {name} to pod {target.pod}")
    body = {
        "spec": {
            "ephemeralContainers": [
                api.api_client.sanitize_for_serialization(ephemeral_container(spec, target, name))
            ]
        }
    }
    try:
        api.call(
            api.core.patch_namespaced_pod_ephemeralcontainers,
            target.pod,
            target.namespace,
            body,
            _content_type=STRATEGIC_MERGE_PATCH,
        )
    except ApiException as err:
        if err.status == 404:
            raise AgentStartError(
                f"cannot add an ephemeral container to pod {target.pod}: the pod or the "
                "ephemeralcontainers subresource does not exist (Kubernetes < 1.23?); set "
                "agent.ephemeral = false"
            ) from None
        raise
    _EphemeralWatch(api, spec, name, target, progress).wait()
    # Kubernetes cannot remove an ephemeral container: nothing to release; the agent
    # exits once no client is connected.
    return StartedAgent(
        what=f"ephemeral container {name}",
        namespace=str(target.namespace),
        pod=str(target.pod),
        port=spec.port,
    )
