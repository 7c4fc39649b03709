"""The kubelet of the emulated node: pulling images, starting containers, pod status.

``Kubelet`` runs the pods the emulator creates (an agent Job's pods): a pod pinned to
another node stays Pending; an image the node does not have leaves the container waiting
in ``ErrImagePull``, then ``ImagePullBackOff`` (message ``failed to pull image "<img>":
not found``), with the Warning events a kubelet records; otherwise each container runs as
a local process (``container_runtime``), the pod is Running once they started and
Succeeded/Failed once they exited. ``launch`` and ``pull_failed`` are shared with the
ephemeral containers of any pod.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mirrord_core.sandbox.netns import netns_path

from . import resources
from .container_runtime import (
    ContainerProcess,
    ContainerStartError,
    command_line,
    container_env,
    security_wrapper,
)
from .events import EventRecorder
from .node import (
    HOST_IP,
    EmulatedNode,
    PodBacking,
    container_id,
    container_status,
    running_conditions,
)
from .store import ObjectStore, now

PULL_DELAY = 0.05
BACKOFF_DELAY = 0.5
DEFAULT_GRACE = 30

Obj = dict[str, Any]


def pull_failure_message(image: str) -> str:
    """What the runtime says about an image that is not there."""
    return f'failed to pull image "{image}": not found'


def pull_waiting_state(image: str, reason: str) -> Obj:
    """The waiting state of a container whose image cannot be pulled."""
    message = pull_failure_message(image)
    if reason == "ImagePullBackOff":
        message = f'Back-off pulling image "{image}": ErrImagePull: {message}'
    return {"waiting": {"reason": reason, "message": message}}


def pod_fields(pod: Obj, node_name: str) -> dict[str, str]:
    """The pod fields ``valueFrom.fieldRef`` can name."""
    meta = pod["metadata"]
    return {
        "metadata.name": meta["name"],
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", node_name),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.hostIP": HOST_IP,
        "status.podIP": HOST_IP,
    }


def _pod_ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod["status"].get("conditions") or []
    )


class Kubelet:
    """Starts containers on the node and runs the pods the emulator creates."""

    def __init__(self, store: ObjectStore, node: EmulatedNode, events: EventRecorder) -> None:
        self.store = store
        self.node = node
        self.events = events
        #: Called with (namespace, pod, phase, ready) whenever a pod's phase or readiness changed.
        self.on_pod_change: Callable[[str, str, str, bool], None] = lambda ns, pod, phase, ready: (
            None
        )

    # shared by pods and ephemeral containers ------------------------------------------

    def launch(
        self,
        pod: Obj,
        backing: PodBacking,
        container: Obj,
        *,
        field_path: str,
        ephemeral: bool,
        on_exit: Callable[[ContainerProcess], None],
    ) -> tuple[Obj, ContainerProcess | None]:
        """Start one container of ``pod``; its status (running, or failed to start).

        An ephemeral container joins the pod's network namespace and targets its
        ``targetContainerName``; a regular container of a pod without a namespace of its
        own runs in the host's, on loopback.
        """
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        cname, image = container["name"], container["image"]
        cid = container_id()
        backing.container_ids[cname] = cid
        backing.logs[cname] = self.node.runtime.log_path(namespace, name, cname)
        self.events.record(
            pod,
            "Pulled",
            f'Container image "{image}" already present on machine',
            field_path=field_path,
        )
        env = container_env(container, pod_fields(pod, self.node.name), name)
        spec = pod["spec"]
        target = container.get("targetContainerName") or spec["containers"][0]["name"]
        try:
            argv = command_line(
                container,
                env,
                loopback=backing.netns is None,
                ephemeral_container_id=backing.container_ids.get(target) if ephemeral else None,
            )
            prefix = []
            if ephemeral and backing.netns is not None:
                prefix = ["nsenter", f"--net={netns_path(backing.netns)}", "--"]
            # An ephemeral container shares its target's PID namespace, which sandbox pods
            # do not have (the host's); a regular one has its own unless hostPID.
            own_pids = not ephemeral and not spec.get("hostPID")
            argv = prefix + security_wrapper(spec, container, own_pid_namespace=own_pids) + argv
            run = self.node.runtime.start(
                namespace=namespace,
                pod=name,
                container_id=cid,
                container=container,
                argv=argv,
                env=env,
                on_exit=on_exit,
            )
        except ContainerStartError as err:
            self.events.record(
                pod, "Failed", f"Error: {err.message}", warning=True, field_path=field_path
            )
            state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": err.reason,
                    "message": err.message,
                    "startedAt": now(),
                    "finishedAt": now(),
                    "containerID": f"containerd://{cid}",
                }
            }
            return container_status(cname, image, state, container_id=cid, ready=False), None
        backing.processes[cname] = run
        self.events.record(pod, "Created", f"Created container: {cname}", field_path=field_path)
        self.events.record(pod, "Started", f"Started container {cname}", field_path=field_path)
        # Ephemeral containers are never "ready": they have no probes and serve nothing.
        ready = not ephemeral
        return container_status(cname, image, run.state(), container_id=cid, ready=ready), run

    def pull_failed(
        self, pod: Obj, container: Obj, field_path: str, set_state: Callable[[Obj], None]
    ) -> None:
        """Report ``ErrImagePull`` now and ``ImagePullBackOff`` shortly after."""
        image = container["image"]
        set_state(pull_waiting_state(image, "ErrImagePull"))
        message = pull_failure_message(image)
        self.events.record(
            pod,
            "Failed",
            f'Failed to pull image "{image}": {message}',
            warning=True,
            field_path=field_path,
        )
        self.events.record(
            pod, "Failed", "Error: ErrImagePull", warning=True, field_path=field_path
        )
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]

        def back_off() -> None:
            if self.store.get(resources.PODS, namespace, name) is None:
                return
            set_state(pull_waiting_state(image, "ImagePullBackOff"))
            self.events.record(
                pod, "BackOff", f'Back-off pulling image "{image}"', field_path=field_path
            )
            self.events.record(
                pod, "Failed", "Error: ImagePullBackOff", warning=True, field_path=field_path
            )

        asyncio.get_running_loop().call_later(BACKOFF_DELAY, back_off)

    # pods the emulator runs ----------------------------------------------------------------

    def schedule(self, namespace: str, name: str) -> None:
        """Start working on a freshly created pod (shortly, as a kubelet would)."""
        asyncio.get_running_loop().call_later(PULL_DELAY, self._run, namespace, name)

    def _run(self, namespace: str, name: str) -> None:
        pod = self.store.get(resources.PODS, namespace, name)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        if pod["spec"].get("nodeName") != self.node.name:
            return  # bound to a node that does not exist: nothing ever runs it
        containers = pod["spec"]["containers"]
        for container in containers:
            self.events.record(
                pod, "Pulling", f'Pulling image "{container["image"]}"', field_path=_path(container)
            )
        missing = [c for c in containers if not self.node.image_available(c["image"])]
        if missing:
            for container in missing:
                self.pull_failed(
                    pod,
                    container,
                    _path(container),
                    lambda state, cname=container["name"]: self._set_waiting(
                        namespace, name, cname, state
                    ),
                )
            return
        backing = PodBacking(namespace=namespace, name=name, netns=None, main_pid=None)
        self.node.pods[(namespace, name)] = backing
        statuses = [
            self.launch(
                pod,
                backing,
                container,
                field_path=_path(container),
                ephemeral=False,
                on_exit=lambda run: self._container_exited(namespace, name),
            )[0]
            for container in containers
        ]
        self._set_statuses(namespace, name, statuses)

    def _set_waiting(self, namespace: str, name: str, container: str, state: Obj) -> None:
        def change(pod: Obj) -> None:
            for status in pod["status"].get("containerStatuses") or []:
                if status["name"] == container:
                    status["state"] = state
            pod["status"]["conditions"] = running_conditions(False)

        self.store.update(resources.PODS, namespace, name, change)

    def _container_exited(self, namespace: str, name: str) -> None:
        backing = self.node.backing(namespace, name)
        pod = self.store.get(resources.PODS, namespace, name)
        if backing is None or pod is None:
            return
        statuses = []
        for status in pod["status"].get("containerStatuses", []):
            run = backing.processes.get(status["name"])
            if run is not None:
                status = container_status(
                    status["name"],
                    status["image"],
                    run.state(),
                    container_id=run.container_id,
                    ready=run.running,
                )
            statuses.append(status)
        self._set_statuses(namespace, name, statuses)

    def _set_statuses(self, namespace: str, name: str, statuses: list[Obj]) -> None:
        terminated = [s["state"].get("terminated") for s in statuses]
        if all(terminated):
            phase = "Succeeded" if all(t["exitCode"] == 0 for t in terminated) else "Failed"
        else:
            phase = "Running"
        ready = phase == "Running" and all(s["ready"] for s in statuses)
        before = self.store.get(resources.PODS, namespace, name)
        if before is None:
            return
        was = (before["status"].get("phase"), _pod_ready(before))

        def change(pod: Obj) -> None:
            pod["status"].update(
                phase=phase,
                conditions=running_conditions(ready),
                containerStatuses=statuses,
                podIP=HOST_IP,
                podIPs=[{"ip": HOST_IP}],
            )

        self.store.update(resources.PODS, namespace, name, change)
        if was != (phase, ready):
            self.on_pod_change(namespace, name, phase, ready)

    async def delete_pod(self, namespace: str, name: str, grace: float | None = None) -> None:
        """Delete a pod: stop its containers (SIGTERM, SIGKILL after the grace period),
        then remove the object."""
        pod = self.store.get(resources.PODS, namespace, name)
        if pod is None:
            return
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE)
        seconds = int(grace)
        self.store.update(
            resources.PODS,
            namespace,
            name,
            lambda p: p["metadata"].update(
                deletionTimestamp=now(), deletionGracePeriodSeconds=seconds
            ),
        )
        backing = self.node.pods.pop((namespace, name), None)
        if backing is not None:
            for cname, run in backing.processes.items():
                if run.running:
                    self.events.record(
                        pod,
                        "Killing",
                        f"Stopping container {cname}",
                        field_path=f"spec.containers{{{cname}}}",
                    )
            await asyncio.gather(
                *(self.node.runtime.stop(run, float(seconds)) for run in backing.processes.values())
            )
        self.store.delete(resources.PODS, namespace, name)


def _path(container: Obj) -> str:
    return f"spec.containers{{{container['name']}}}"
