"""From the config to a reachable agent in the cluster: the Kubernetes side of the hooks.

``resolve_target`` resolves the configured pod/deployment/container in the namespace
(``target.namespace``, ``-n``, else the kubeconfig context's); ``spawn_agent`` starts the
agent (a Job, or an ephemeral container with ``agent.ephemeral``), port-forwards to it
and returns a loopback endpoint whose ``release`` stops forwarding and deletes the Job.
``connect_agent_name`` + ``connect_agent_port`` reuse an agent pod that is already running.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from kubernetes.client.exceptions import ApiException

from mirrord_core.target_model import AgentEndpoint, ResolvedTarget
from mirrord_target.local.agent_job import start_job_agent
from mirrord_target.local.agent_spec import TOKEN_ENV, AgentSpec, StartedAgent
from mirrord_target.local.ephemeral_agent import start_ephemeral_agent
from mirrord_target.local.kube_client import KubeApi, connect_kube
from mirrord_target.local.kube_errors import KubeApiError, status_message
from mirrord_target.local.kube_targets import KubeTargetError, resolve_kube_target
from mirrord_target.local.operator_probe import check_operator
from mirrord_target.local.port_forward import PortForwarder
from mirrord_target.local.progress import progress
from mirrord_target.plugin import RUNNING_AGENT_KIND

log = logging.getLogger("mirrord.target")


def connect_from_config(config: Any) -> KubeApi:
    """A client for the cluster the config's ``kubeconfig`` (or the default) names."""
    return connect_kube(config.kubeconfig, bool(config.accept_invalid_certificates))


@contextlib.contextmanager
def api_step(action: str) -> Iterator[None]:
    """Report an API failure no caller turned into a better message as a one-line error."""
    try:
        yield
    except ApiException as err:
        raise KubeApiError(
            f"the Kubernetes API server refused to {action}: {status_message(err)} "
            f"(HTTP {err.status})"
        ) from None


def target_namespace(config: Any, api: KubeApi) -> str:
    return config.target.namespace or api.default_namespace


def resolve_configured_kube_target(config: Any) -> ResolvedTarget:
    """The configured pod/deployment/container target, resolved to a running container."""
    path = config.target.path
    with progress("resolving the target") as shown:
        api = connect_from_config(config)
        try:
            namespace = target_namespace(config, api)
            shown.step(f"looking up {path} in namespace {namespace}")
            with api_step(f"look up {path}"):
                target = resolve_kube_target(api, path.kind, path.name, path.container, namespace)
        finally:
            api.close()
        shown.done(
            f"target {path}: pod {target.pod}, container {target.container} "
            f"(namespace {target.namespace}, node {target.node})"
        )
    return target


def running_agent_target(config: Any) -> ResolvedTarget:
    """The pseudo target naming the agent pod of ``connect_agent_name``."""
    if config.connect_agent_port is None:
        raise KubeTargetError(
            "connect_agent_name needs connect_agent_port (MIRRORD_CONNECT_PORT): the port "
            "the agent listens on"
        )
    return ResolvedTarget(
        kind=RUNNING_AGENT_KIND,
        name=str(config.connect_agent_name),
        namespace=config.agent.namespace or config.target.namespace,
        pod=str(config.connect_agent_name),
    )


def _endpoint(
    forwarder: PortForwarder, token: str, agent: StartedAgent | None, api: KubeApi
) -> AgentEndpoint:
    def release() -> None:
        forwarder.close()
        if agent is not None:
            agent.release()
        api.close()

    # Every connection to the forwarder opens a new port-forward websocket, so a session
    # whose websocket drops reconnects there and resumes with the agent.
    return AgentEndpoint(
        host="127.0.0.1", port=forwarder.port, token=token, release=release, resumable=True
    )


def spawn_kube_agent(config: Any, target: ResolvedTarget) -> AgentEndpoint:
    """Start an agent for ``target``, port-forward to it, return the local endpoint."""
    api = connect_from_config(config)
    agent: StartedAgent | None = None
    try:
        if config.operator:
            check_operator(api)
        spec = AgentSpec.from_config(config.agent)
        with progress("starting the agent") as shown:
            if config.agent.ephemeral:
                if spec.namespace and spec.namespace != target.namespace:
                    log.debug(
                        "agent.namespace is ignored: an ephemeral agent lives in the target pod"
                    )
                with api_step(f"add the agent to pod {target.pod}"):
                    agent = start_ephemeral_agent(api, spec, target, shown)
            else:
                with api_step("create the agent job"):
                    agent = start_job_agent(api, spec, target, shown)
            shown.step(f"port-forwarding to {agent.pod}:{agent.port}")
            with api_step(f"port-forward to pod {agent.pod}"):
                forwarder = PortForwarder(api, agent.pod, agent.namespace, agent.port).start()
            shown.done(f"agent ready: {agent.describe()}")
    except BaseException:
        if agent is not None:
            agent.release()
        api.close()
        raise
    return _endpoint(forwarder, spec.token, agent, api)


def connect_running_agent(config: Any, target: ResolvedTarget) -> AgentEndpoint:
    """Port-forward to the agent pod ``connect_agent_name`` at ``connect_agent_port``."""
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise KubeTargetError(
            f"connect_agent_name = {target.name!r} needs the agent's session token in ${TOKEN_ENV}"
        )
    api = connect_from_config(config)
    try:
        namespace = target.namespace or api.default_namespace
        with progress("connecting to the running agent") as shown:
            shown.step(f"looking up pod {target.pod} in namespace {namespace}")
            with api_step(f"look up the agent pod {target.pod}"):
                try:
                    pod = api.call(api.core.read_namespaced_pod, target.pod, namespace)
                except ApiException as err:
                    if err.status == 404:
                        raise KubeTargetError(
                            f"agent pod {target.pod} (connect_agent_name) not found in namespace "
                            f"{namespace}; set agent.namespace to where it runs"
                        ) from None
                    raise
            phase = pod.status.phase if pod.status else None
            if phase != "Running":
                raise KubeTargetError(
                    f"agent pod {target.pod} is not running (phase {phase}); start a new agent "
                    "by unsetting connect_agent_name"
                )
            port = int(config.connect_agent_port)
            shown.step(f"port-forwarding to {target.pod}:{port}")
            with api_step(f"port-forward to pod {target.pod}"):
                forwarder = PortForwarder(api, str(target.pod), namespace, port).start()
            shown.done(f"connected to the running agent pod {target.pod} (namespace {namespace})")
    except BaseException:
        api.close()
        raise
    return _endpoint(forwarder, token, None, api)
