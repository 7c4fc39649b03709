"""The agent as a ``batch/v1`` Job pinned to the target's node.

The Job's pod shares the node's PID namespace (``hostPID``) and runs privileged, so the
agent finds the target container's process from its id (scanning ``/proc/*/cgroup``) and
enters its namespaces. ``backoffLimit: 0`` and ``restartPolicy: Never``: a failed agent is
reported, not retried. ``ttlSecondsAfterFinished = agent.ttl`` lets the cluster collect
the Job once the agent exits; the session deletes it when it ends.
"""

from __future__ import annotations

import logging

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mirrord_core.target_model import ResolvedTarget
from mirrord_target.local.agent_readiness import (
    AgentPendingError,
    AgentStartError,
    AgentWatch,
)
from mirrord_target.local.agent_spec import (
    AGENT_COMMAND,
    AGENT_LABELS,
    AgentSpec,
    StartedAgent,
    privileged,
    random_suffix,
)
from mirrord_target.local.kube_client import KubeApi
from mirrord_target.local.progress import Progress

log = logging.getLogger("mirrord.target")

AGENT_CONTAINER = "mirrord-agent"


def job_manifest(spec: AgentSpec, target: ResolvedTarget, name: str) -> client.V1Job:
    """The Job running the agent for ``target`` (in ``spec.namespace`` or the target's)."""
    container = client.V1Container(
        name=AGENT_CONTAINER,
        image=spec.image,
        image_pull_policy=spec.pull_policy(),
        command=AGENT_COMMAND,
        args=spec.args(["--container-id", str(target.container_id)]),
        env=spec.env(),
        security_context=privileged(),
    )
    pod = client.V1PodSpec(
        containers=[container],
        node_name=target.node,
        host_pid=True,
        restart_policy="Never",
        # Pinned by nodeName (no scheduler involved); tolerate NoExecute taints so the
        # node does not evict the agent.
        tolerations=[client.V1Toleration(operator="Exists")],
    )
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=name, namespace=spec.namespace or target.namespace, labels=dict(AGENT_LABELS)
        ),
        spec=client.V1JobSpec(
            backoff_limit=0,
            ttl_seconds_after_finished=spec.ttl,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=dict(AGENT_LABELS)), spec=pod
            ),
        ),
    )


def delete_job(api: KubeApi, name: str, namespace: str) -> None:
    """Delete the Job and (background propagation) its pod; gone already is fine."""
    try:
        api.call(api.batch.delete_namespaced_job, name, namespace, propagation_policy="Background")
    except ApiException as err:
        if err.status != 404:
            log.warning("could not delete the agent job %s/%s: %s", namespace, name, err.reason)
    except Exception as err:  # the session is over either way; say so and go on
        log.warning("could not delete the agent job %s/%s: %s", namespace, name, err)


class _JobWatch(AgentWatch):
    """The agent's pod is the Job's (label ``job-name``)."""

    def __init__(self, api: KubeApi, spec: AgentSpec, job: str, namespace: str, progress: Progress):
        super().__init__(api, spec, namespace, AGENT_CONTAINER, progress)
        self.job = job

    def find_pod(self) -> client.V1Pod | None:
        pods = self.api.call(
            self.api.core.list_namespaced_pod, self.namespace, label_selector=f"job-name={self.job}"
        ).items
        return min(pods, key=lambda p: p.metadata.name) if pods else None

    def no_pod_error(self) -> AgentStartError:
        return AgentPendingError(
            f"the agent job {self.job} created no pod within {self._waited()}"
            f"{self._job_events()}; check the namespace's quotas and admission policies "
            "or raise agent.startup_timeout"
        )

    def _job_events(self) -> str:
        """The Job's last warning (e.g. a pod creation an admission policy refused)."""
        try:
            events = self.api.call(
                self.api.core.list_namespaced_event,
                self.namespace,
                field_selector=f"involvedObject.name={self.job}",
            ).items
        except Exception:  # the events only decorate the message
            return ""
        warnings = [e.message for e in events if e.type == "Warning" and e.message]
        return f" ({warnings[-1]})" if warnings else ""


def start_job_agent(
    api: KubeApi, spec: AgentSpec, target: ResolvedTarget, progress: Progress
) -> StartedAgent:
    """Create the agent Job for ``target`` and wait until the agent is ready."""
    name = f"mirrord-agent-{random_suffix()}"
    namespace = str(spec.namespace or target.namespace)
    progress.step(f"creating agent job {name} in namespace {namespace}")
    try:
        api.call(api.batch.create_namespaced_job, namespace, job_manifest(spec, target, name))
    except ApiException as err:
        if err.status == 404:
            raise AgentStartError(
                f"the agent's namespace {namespace} does not exist; set agent.namespace to an "
                "existing namespace (or leave it unset: the target's)"
            ) from None
        raise
    try:
        pod = _JobWatch(api, spec, name, namespace, progress).wait()
    except BaseException:
        delete_job(api, name, namespace)
        raise
    # The agent listens where it was told to (its ready line repeats spec.port).
    return StartedAgent(
        what=f"job {name}",
        namespace=namespace,
        pod=pod.metadata.name,
        port=spec.port,
        release=lambda: delete_job(api, name, namespace),
    )
