"""Helpers of the emulated-Kubernetes tests: clients, agent manifests, a port-forward relay.

The relay listens on loopback and carries each accepted connection through its own
``kubernetes.stream.portforward`` websocket, so a mirrord ``Session`` (which connects to
a host and port) reaches an agent the way ``mirrord run`` does through a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import selectors
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.stream import portforward

from mirrord_core.sandbox.kube import EmulatedCluster, default_agent_image
from mirrord_core.session import Session
from mirrord_core.target_model import AgentEndpoint
from mirrord_env.messages import GetEnv
from mirrord_target.local.agent_spec import random_agent_port

T = TypeVar("T")
TOKEN_ENV = "MIRRORD_AGENT_TOKEN"


@dataclass
class Clients:
    """The official client's APIs, configured from the cluster's kubeconfig."""

    api: client.ApiClient
    core: client.CoreV1Api
    apps: client.AppsV1Api
    batch: client.BatchV1Api


def clients(cluster: EmulatedCluster) -> Clients:
    """Clients for ``cluster``, exactly as a user's kubeconfig would give them."""
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    return Clients(api, client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api))


def raw_request(
    cluster: EmulatedCluster, method: str, path: str, body: Any = None, *, token: str | None = None
) -> tuple[int, Any]:
    """(status, JSON answer) of one request sent without the client (which would refuse to
    send a body its own models reject)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{cluster.server_url}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {token or cluster.token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(check: Callable[[], T | None], *, timeout: float = 30.0, what: str) -> T:
    """Poll ``check`` until it returns something truthy (the emulator works asynchronously,
    as a cluster does); fail after ``timeout`` seconds, saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def pod_of(c: Clients, namespace: str, app: str) -> client.V1Pod:
    """The (only) pod of Deployment ``app``."""
    pods = c.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def container_id(pod: client.V1Pod) -> str:
    """The pod's first container id without its runtime prefix."""
    return pod.status.container_statuses[0].container_id.split("://", 1)[1]


@dataclass
class AgentSpec:
    """An agent container's parameters: image, listen port, session token."""

    port: int
    token: str
    image: str

    @classmethod
    def new(cls, image: str | None = None) -> AgentSpec:
        return cls(
            # The plugin's range: below the ephemeral ports, which the host's own client
            # connections may hold (the emulated agents listen on the host's loopback).
            port=random_agent_port(),
            token=secrets.token_hex(32),
            image=image or default_agent_image(),
        )

    def container(self, name: str, target: list[str], **overrides: Any) -> dict[str, Any]:
        """The agent container as mirrord's target plugin builds it."""
        container: dict[str, Any] = {
            "name": name,
            "image": self.image,
            "command": ["mirrord", "agent"],
            "args": [
                "--listen",
                f"0.0.0.0:{self.port}",
                *target,
                "--communication-timeout",
                "30",
            ],
            "env": [{"name": TOKEN_ENV, "value": self.token}],
            "securityContext": {"privileged": True, "runAsUser": 0},
        }
        container.update(overrides)
        return container

    def job(
        self,
        name: str,
        target: list[str],
        *,
        pod_spec: dict[str, Any] | None = None,
        container: dict[str, Any] | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        """An agent Job (hostPID, privileged, restartPolicy Never, backoffLimit 0)."""
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "labels": {"app": "mirrord"}},
            "spec": {
                "backoffLimit": 0,
                **spec,
                "template": {
                    "metadata": {"labels": {"app": "mirrord"}},
                    "spec": {
                        "hostPID": True,
                        "restartPolicy": "Never",
                        "nodeName": "sandbox-node",
                        "containers": [
                            self.container("mirrord-agent", target, **(container or {}))
                        ],
                        **(pod_spec or {}),
                    },
                },
            },
        }


def job_pods(c: Clients, namespace: str, job: str) -> list[client.V1Pod]:
    """The pods of Job ``job`` (by the ``job-name`` label a real controller sets)."""
    return c.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items


def read_log(c: Clients, namespace: str, pod: str, container: str) -> str:
    """The container's log, or "" while it cannot be read yet."""
    try:
        return c.core.read_namespaced_pod_log(pod, namespace, container=container)
    except client.ApiException as err:
        if err.status == 400:
            return ""
        raise


def wait_ready_line(c: Clients, namespace: str, pod: str, container: str) -> str:
    """Wait until the agent printed its ready line; return the log."""
    return wait_for(
        lambda: (log := read_log(c, namespace, pod, container)) and '{"ready"' in log and log,
        what=f"the agent in {pod}/{container} to be ready",
    )


def _pipe(a: socket.socket, b: Any) -> None:
    selector = selectors.DefaultSelector()
    selector.register(a, selectors.EVENT_READ, b)
    selector.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in selector.select():
                try:
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                except OSError:
                    return
                if not data:
                    return
                key.data.sendall(data)
    finally:
        selector.close()
        a.close()
        with contextlib.suppress(OSError):
            b.close()


@contextlib.contextmanager
def port_forward_relay(c: Clients, namespace: str, pod: str, port: int) -> Iterator[int]:
    """A loopback port whose connections go to ``pod:port`` through the API's port-forward."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            forward = portforward(
                c.core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port)
            )
            threading.Thread(target=_pipe, args=(conn, forward.socket(port)), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


async def _remote_env(port: int, token: str) -> dict[str, str]:
    endpoint = AgentEndpoint(host="127.0.0.1", port=port, token=token, release=lambda: None)
    session = await Session.connect(endpoint, client_name="kube emulator test")
    try:
        reply = await session.request(GetEnv())
    finally:
        await session.close()
    return dict(reply.env)


def remote_env(c: Clients, namespace: str, pod: str, spec: AgentSpec) -> dict[str, str]:
    """The target's environment, asked of the agent in ``pod`` through a port-forward."""
    with port_forward_relay(c, namespace, pod, spec.port) as local_port:
        return asyncio.run(asyncio.wait_for(_remote_env(local_port, spec.token), 30))
