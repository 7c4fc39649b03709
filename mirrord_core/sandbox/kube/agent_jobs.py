"""The job controller of the emulated cluster: Jobs (the agent's) run as local processes.

Creating a Job creates its pod ``<job>-<suffix>`` (labels ``job-name``,
``batch.kubernetes.io/job-name``, ``controller-uid``, owner reference to the Job), which
starts Pending/ContainerCreating and is then run by the node's ``Kubelet``: the agent
runs as a local process whose output is the pod log.

A failed pod is replaced until more than ``backoffLimit`` pods failed (default 6; the
delay doubles from one second, where a real controller starts at ten); then the Job fails
with ``BackoffLimitExceeded``. A finished Job is deleted ``ttlSecondsAfterFinished`` after
it finished. Deleting a Job follows ``propagationPolicy``: ``Background``/``Foreground``
delete its pods (stopping their processes), ``Orphan`` — the default of the API, as on a
real cluster — leaves them running.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import resources
from .events import EventRecorder
from .kubelet import BACKOFF_DELAY, DEFAULT_GRACE, Kubelet
from .node import HOST_IP, EmulatedNode, condition, container_status, name_suffix
from .status import ApiError, status_body
from .store import ObjectStore, now

log = logging.getLogger("mirrord.sandbox.kube")

DEFAULT_BACKOFF_LIMIT = 6


class JobController:
    """Creates, runs, retries, expires and deletes Jobs."""

    def __init__(
        self, store: ObjectStore, node: EmulatedNode, kubelet: Kubelet, events: EventRecorder
    ) -> None:
        self.store = store
        self.node = node
        self.kubelet = kubelet
        self.events = events
        kubelet.on_pod_change = self._pod_changed
        self._tasks: set[asyncio.Task[None]] = set()

    # creating ---------------------------------------------------------------------

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Store a (validated) Job with the API server's defaults and start its pod."""
        meta = body.setdefault("metadata", {})
        meta["namespace"] = namespace
        if not meta.get("name"):
            meta["name"] = f"{meta['generateName']}{name_suffix()}"
        spec = body["spec"]
        spec.setdefault("backoffLimit", DEFAULT_BACKOFF_LIMIT)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        body["status"] = {}
        job = self.store.create(resources.JOBS, body)
        uid = job["metadata"]["uid"]
        selector = {"batch.kubernetes.io/controller-uid": uid}
        template = job["spec"]["template"]
        template.setdefault("metadata", {})
        template["metadata"]["labels"] = {
            **(template["metadata"].get("labels") or {}),
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": job["metadata"]["name"],
            "controller-uid": uid,
            "job-name": job["metadata"]["name"],
        }
        pod_spec = template["spec"]
        pod_spec.setdefault("dnsPolicy", "ClusterFirst")
        pod_spec.setdefault("schedulerName", "default-scheduler")
        pod_spec.setdefault("terminationGracePeriodSeconds", DEFAULT_GRACE)
        pod_spec.setdefault("securityContext", {})
        job["spec"]["selector"] = {"matchLabels": selector}
        job["status"] = {"active": 1, "ready": 0, "startTime": now(), "uncountedTerminatedPods": {}}
        job = self.store.replace(resources.JOBS, job)
        self._new_pod(job)
        return job

    def _new_pod(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        template = job["spec"]["template"]
        spec = dict(template["spec"])
        scheduled = spec.get("nodeName") or self.node.name
        spec["nodeName"] = scheduled
        labels = dict(template["metadata"]["labels"])
        pod = self.store.create(
            resources.PODS,
            {
                "metadata": {
                    "name": f"{meta['name']}-{name_suffix()}",
                    "generateName": f"{meta['name']}-",
                    "namespace": meta["namespace"],
                    "labels": labels,
                    "annotations": dict(template["metadata"].get("annotations") or {}),
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": meta["name"],
                            "uid": meta["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                    "finalizers": ["batch.kubernetes.io/job-tracking"],
                },
                "spec": spec,
                "status": {
                    "phase": "Pending",
                    "qosClass": "BestEffort",
                    "hostIP": HOST_IP,
                    "hostIPs": [{"ip": HOST_IP}],
                    "startTime": now(),
                    "conditions": [condition("PodScheduled", True)],
                    "containerStatuses": [
                        container_status(
                            c["name"],
                            c["image"],
                            {"waiting": {"reason": "ContainerCreating"}},
                            container_id=None,
                            ready=False,
                        )
                        for c in spec["containers"]
                    ],
                },
            },
        )
        self.events.record(
            job,
            "SuccessfulCreate",
            f"Created pod: {pod['metadata']['name']}",
            component="job-controller",
        )
        if scheduled == self.node.name:
            self.events.record(
                pod,
                "Scheduled",
                f"Successfully assigned {meta['namespace']}/{pod['metadata']['name']} "
                f"to {scheduled}",
                component="default-scheduler",
            )
        else:

            def unschedulable(p: dict[str, Any]) -> None:
                p["status"].pop("containerStatuses", None)
                p["status"]["conditions"] = [
                    condition(
                        "PodScheduled", False, "NodeNotFound", f'node "{scheduled}" not found'
                    )
                ]

            self.store.update(
                resources.PODS, meta["namespace"], pod["metadata"]["name"], unschedulable
            )
        self.kubelet.schedule(meta["namespace"], pod["metadata"]["name"])

    # progress -----------------------------------------------------------------------

    def _job_of(self, namespace: str, pod_name: str) -> dict[str, Any] | None:
        pod = self.store.get(resources.PODS, namespace, pod_name)
        if pod is None:
            return None
        for owner in pod["metadata"].get("ownerReferences") or []:
            if owner.get("kind") == "Job":
                job = self.store.get(resources.JOBS, namespace, owner["name"])
                if job is not None and job["metadata"]["uid"] == owner["uid"]:
                    return job
        return None

    def _pod_changed(self, namespace: str, pod_name: str, phase: str, ready: bool) -> None:
        job = self._job_of(namespace, pod_name)
        if phase in ("Pending", "Running"):
            if job is not None:
                self.store.update(
                    resources.JOBS,
                    namespace,
                    job["metadata"]["name"],
                    lambda j: j["status"].update(ready=int(ready)),
                )
            return
        self.store.update(
            resources.PODS,
            namespace,
            pod_name,
            lambda p: p["metadata"].pop("finalizers", None),
        )
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        status = job["status"]
        name = job["metadata"]["name"]
        status["active"] = 0
        status["ready"] = 0
        if phase == "Succeeded":
            status["succeeded"] = status.get("succeeded", 0) + 1
            status["completionTime"] = now()
            status["conditions"] = [
                _job_condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
                _job_condition(
                    "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
                ),
            ]
            self.events.record(job, "Completed", "Job completed", component="job-controller")
        else:
            status["failed"] = status.get("failed", 0) + 1
            limit = job["spec"].get("backoffLimit", DEFAULT_BACKOFF_LIMIT)
            if status["failed"] > limit:
                message = "Job has reached the specified backoff limit"
                status["conditions"] = [
                    _job_condition("FailureTarget", "BackoffLimitExceeded", message),
                    _job_condition("Failed", "BackoffLimitExceeded", message),
                ]
                self.events.record(
                    job, "BackoffLimitExceeded", message, warning=True, component="job-controller"
                )
            else:
                status["active"] = 1
                delay = min(BACKOFF_DELAY * 2 ** (status["failed"] - 1), 10.0)
                asyncio.get_running_loop().call_later(
                    delay, self._retry, namespace, name, job["metadata"]["uid"]
                )
        self.store.replace(resources.JOBS, job)
        if status.get("conditions"):
            ttl = job["spec"].get("ttlSecondsAfterFinished")
            if ttl is not None:
                asyncio.get_running_loop().call_later(
                    float(ttl), self._expire, namespace, name, job["metadata"]["uid"]
                )

    def _retry(self, namespace: str, name: str, uid: str) -> None:
        job = self.store.get(resources.JOBS, namespace, name)
        if (
            job is not None
            and job["metadata"]["uid"] == uid
            and not job["metadata"].get("deletionTimestamp")
        ):
            self._new_pod(job)

    def _expire(self, namespace: str, name: str, uid: str) -> None:
        job = self.store.get(resources.JOBS, namespace, name)
        if job is not None and job["metadata"]["uid"] == uid:
            self.spawn(self.delete(namespace, name, "Background"))

    def spawn(self, coroutine: Any) -> None:
        """Run ``coroutine`` in the background; ``shutdown`` waits for it."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # deleting -----------------------------------------------------------------------

    def pods_of(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """The pods the Job owns."""
        uid = job["metadata"]["uid"]
        return [
            pod
            for pod in self.store.list(resources.PODS, job["metadata"]["namespace"])
            if any(o.get("uid") == uid for o in pod["metadata"].get("ownerReferences") or [])
        ]

    async def delete(self, namespace: str, name: str, propagation: str | None) -> dict[str, Any]:
        """Delete a Job with ``propagation`` (None: Orphan); the response body."""
        job = self.store.require(resources.JOBS, namespace, name)
        policy = propagation or "Orphan"
        if policy not in ("Orphan", "Background", "Foreground"):
            raise ApiError(
                422,
                "Invalid",
                'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported '
                f'value: "{policy}": supported values: "Foreground", "Background", "Orphan"',
            )
        pods = self.pods_of(job)
        details = {"name": name, "group": "batch", "kind": "jobs", "uid": job["metadata"]["uid"]}
        if policy == "Orphan":
            for pod in pods:
                self.store.update(
                    resources.PODS,
                    namespace,
                    pod["metadata"]["name"],
                    lambda p: p["metadata"].pop("ownerReferences", None),
                )
            self.store.delete(resources.JOBS, namespace, name)
            return status_body(200, "", "", details)
        if policy == "Background":
            self.store.delete(resources.JOBS, namespace, name)
            for pod in pods:
                self.spawn(self.kubelet.delete_pod(namespace, pod["metadata"]["name"]))
            return status_body(200, "", "", details)

        def mark(j: dict[str, Any]) -> None:
            j["metadata"]["deletionTimestamp"] = now()
            j["metadata"]["deletionGracePeriodSeconds"] = 0
            j["metadata"]["finalizers"] = ["foregroundDeletion"]

        marked = self.store.update(resources.JOBS, namespace, name, mark)

        async def foreground() -> None:
            await asyncio.gather(
                *(self.kubelet.delete_pod(namespace, p["metadata"]["name"]) for p in pods)
            )
            self.store.delete(resources.JOBS, namespace, name)

        self.spawn(foreground())
        assert marked is not None
        return marked

    async def shutdown(self) -> None:
        """Wait for deletions in progress (the emulator is stopping)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _job_condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    stamp = now()
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
    }
