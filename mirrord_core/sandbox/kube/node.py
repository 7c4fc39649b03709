"""The emulated cluster's single node: what backs each pod object, and its images.

A pod object is only data; its ``PodBacking`` says where it really is: the network
namespace its port-forwards connect in (``None``: the host's, where the pod's address is
127.0.0.1), its main process, its containers' ids and log files, and the processes the
emulator started for it (an agent Job's container, ephemeral containers).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirrord_core.sandbox.process import ProcessRef

from .container_runtime import ContainerProcess, LocalContainerRuntime

NODE_NAME = "sandbox-node"
HOST_IP = "127.0.0.1"
# Real pod-name suffixes avoid vowels and look-alike digits, so they never spell words.
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def name_suffix(length: int = 5, seed: str | None = None) -> str:
    """A random (or, with ``seed``, a stable) suffix like the ones controllers append."""
    if seed is None:
        return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(length))
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_SUFFIX_ALPHABET[b % len(_SUFFIX_ALPHABET)] for b in digest[:length])


def container_id(seed: str | None = None) -> str:
    """A 64-hex-digit container id (stable for a given ``seed``)."""
    if seed is None:
        return secrets.token_hex(32)
    return hashlib.sha256(f"container/{seed}".encode()).hexdigest()


@dataclass
class PodBacking:
    """What is behind one pod object."""

    namespace: str
    name: str
    netns: str | None
    main_pid: ProcessRef | None
    container_ids: dict[str, str] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    processes: dict[str, ContainerProcess] = field(default_factory=dict)


class EmulatedNode:
    """The node every emulated pod runs on."""

    def __init__(
        self, runtime: LocalContainerRuntime, images: Iterable[str], name: str = NODE_NAME
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.images = set(images)
        self.pods: dict[tuple[str, str], PodBacking] = {}

    def image_available(self, image: str) -> bool:
        """Whether pulling ``image`` succeeds on this node."""
        return image in self.images

    def backing(self, namespace: str, name: str) -> PodBacking | None:
        """What backs pod ``namespace/name``, if the emulator runs it."""
        return self.pods.get((namespace, name))

    def node_object(self) -> dict[str, Any]:
        """The ``Node`` object."""
        return {
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "node-role.kubernetes.io/control-plane": "",
                },
            },
            "spec": {"podCIDR": "10.244.0.0/16"},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": HOST_IP},
                    {"type": "Hostname", "address": self.name},
                ],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                    }
                ],
                "nodeInfo": {
                    "architecture": "amd64",
                    "bootID": "",
                    "containerRuntimeVersion": "containerd://1.7.0",
                    "kernelVersion": "",
                    "kubeProxyVersion": "",
                    "kubeletVersion": "v1.30.0",
                    "machineID": "",
                    "operatingSystem": "linux",
                    "osImage": "mirrord sandbox",
                    "systemUUID": "",
                },
            },
        }


# pod status pieces shared by sandbox pods and agent pods ---------------------------


def condition(
    kind: str, status: bool, reason: str | None = None, message: str | None = None
) -> dict[str, Any]:
    """A ``PodCondition``."""
    result: dict[str, Any] = {"type": kind, "status": "True" if status else "False"}
    if reason:
        result["reason"] = reason
    if message:
        result["message"] = message
    return result


def running_conditions(ready: bool) -> list[dict[str, Any]]:
    """The conditions of a scheduled pod whose containers are (not) ready."""
    not_ready = None if ready else "ContainersNotReady"
    return [
        condition("PodReadyToStartContainers", True),
        condition("Initialized", True),
        condition("Ready", ready, not_ready),
        condition("ContainersReady", ready, not_ready),
        condition("PodScheduled", True),
    ]


def container_status(
    name: str,
    image: str,
    state: dict[str, Any],
    *,
    container_id: str | None,
    ready: bool,
) -> dict[str, Any]:
    """A ``ContainerStatus``."""
    status: dict[str, Any] = {
        "name": name,
        "image": image,
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "started": "running" in state,
        "state": state,
    }
    if container_id is not None and "waiting" not in state:
        status["containerID"] = f"containerd://{container_id}"
        status["imageID"] = f"{image}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"
    return status
