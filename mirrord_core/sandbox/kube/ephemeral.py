"""The ``pods/{name}/ephemeralcontainers`` subresource: adding containers to running pods.

GET returns the pod; PUT replaces it and PATCH patches it (strategic merge, merge or JSON
patch), where only ``spec.ephemeralContainers`` may change and only by appending. Each
new container is started in the pod's network namespace (``nsenter --net``) with the
container's security settings; an image the node does not have leaves it waiting in
``ErrImagePull``/``ImagePullBackOff``. Its status appears in
``status.ephemeralContainerStatuses`` (running once started, terminated when it exits)
and its output in the pod log under its name.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import resources
from .kubelet import PULL_DELAY, Kubelet
from .node import container_status
from .patches import apply_patch
from .status import invalid
from .store import ObjectStore
from .validation import ephemeral_update_causes, model_causes


class EphemeralContainers:
    """Reads and updates the subresource and runs the containers it adds."""

    def __init__(self, store: ObjectStore, kubelet: Kubelet) -> None:
        self.store = store
        self.kubelet = kubelet
        self.node = kubelet.node
        self.events = kubelet.events

    def read(self, namespace: str, name: str) -> dict[str, Any]:
        """GET: the pod."""
        return self.store.require(resources.PODS, namespace, name)

    def patch(self, namespace: str, name: str, content_type: str, patch: Any) -> dict[str, Any]:
        """PATCH: apply ``patch`` to the pod, then as PUT."""
        pod = self.store.require(resources.PODS, namespace, name)
        return self.replace(namespace, name, apply_patch(content_type, pod, patch))

    def replace(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        """PUT: the pod with its new ephemeral containers (validated, then started)."""
        pod = self.store.require(resources.PODS, namespace, name)
        if not isinstance(body, dict):
            raise invalid(resources.PODS, name, [])
        causes = model_causes(body, "V1Pod")
        if not causes:
            causes = ephemeral_update_causes(pod, body)
        if causes:
            raise invalid(resources.PODS, name, causes)
        before = {c["name"] for c in pod["spec"].get("ephemeralContainers") or []}
        added = [
            c for c in body["spec"].get("ephemeralContainers") or [] if c["name"] not in before
        ]
        if not added:
            return pod
        for container in added:
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("imagePullPolicy", "IfNotPresent")
        pod["spec"]["ephemeralContainers"] = [
            *(pod["spec"].get("ephemeralContainers") or []),
            *added,
        ]
        statuses = pod["status"].setdefault("ephemeralContainerStatuses", [])
        for container in added:
            statuses.append(
                container_status(
                    container["name"],
                    container["image"],
                    {"waiting": {"reason": "ContainerCreating"}},
                    container_id=None,
                    ready=False,
                )
            )
        stored = self.store.replace(resources.PODS, pod)
        loop = asyncio.get_running_loop()
        for container in added:
            loop.call_later(PULL_DELAY, self._start, namespace, name, container)
        return stored

    def _set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        def change(pod: dict[str, Any]) -> None:
            statuses = pod["status"].setdefault("ephemeralContainerStatuses", [])
            for index, old in enumerate(statuses):
                if old["name"] == status["name"]:
                    statuses[index] = status
                    return
            statuses.append(status)

        self.store.update(resources.PODS, namespace, name, change)

    def _start(self, namespace: str, name: str, container: dict[str, Any]) -> None:
        pod = self.store.get(resources.PODS, namespace, name)
        backing = self.node.backing(namespace, name)
        if pod is None or backing is None:
            return
        cname = container["name"]
        path = f"spec.ephemeralContainers{{{cname}}}"
        self.events.record(pod, "Pulling", f'Pulling image "{container["image"]}"', field_path=path)
        if not self.node.image_available(container["image"]):
            self.kubelet.pull_failed(
                pod,
                container,
                path,
                lambda state: self._set_status(
                    namespace,
                    name,
                    container_status(
                        cname, container["image"], state, container_id=None, ready=False
                    ),
                ),
            )
            return
        status, _ = self.kubelet.launch(
            pod,
            backing,
            container,
            field_path=path,
            ephemeral=True,
            on_exit=lambda run: self._set_status(
                namespace,
                name,
                container_status(
                    cname, run.image, run.state(), container_id=run.container_id, ready=False
                ),
            ),
        )
        self._set_status(namespace, name, status)
