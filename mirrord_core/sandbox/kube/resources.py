"""The API resources the emulator serves: names, kinds, groups and verbs, as discovery shows them.

One table serves discovery (``/api/v1``, ``/apis/apps/v1``, …), error messages (``pods
"x" not found``, ``jobs.batch "x" not found``) and authorization (``cannot create
resource "jobs" in API group "batch"``), so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """One REST resource (or subresource) of the emulated API."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]
    short_names: tuple[str, ...] = ()
    #: The client model that describes the object (``V1Pod``); validates bodies.
    model: str = ""

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``group/version`` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How error messages name it: ``pods``, ``jobs.batch``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        """The kind of a list of these objects (``PodList``)."""
        return f"{self.kind}List"


_READ = ("get", "list", "watch")

NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False, _READ, ("ns",), "V1Namespace")
NODES = Resource("", "v1", "nodes", "Node", False, _READ, ("no",), "V1Node")
PODS = Resource("", "v1", "pods", "Pod", True, (*_READ, "delete"), ("po",), "V1Pod")
POD_LOG = Resource("", "v1", "pods/log", "Pod", True, ("get",))
POD_PORTFORWARD = Resource(
    "", "v1", "pods/portforward", "PodPortForwardOptions", True, ("create", "get")
)
POD_EPHEMERAL = Resource(
    "", "v1", "pods/ephemeralcontainers", "Pod", True, ("get", "patch", "update"), (), "V1Pod"
)
EVENTS = Resource("", "v1", "events", "Event", True, _READ, ("ev",), "CoreV1Event")
DEPLOYMENTS = Resource(
    "apps", "v1", "deployments", "Deployment", True, _READ, ("deploy",), "V1Deployment"
)
REPLICASETS = Resource(
    "apps", "v1", "replicasets", "ReplicaSet", True, _READ, ("rs",), "V1ReplicaSet"
)
JOBS = Resource("batch", "v1", "jobs", "Job", True, (*_READ, "create", "delete"), (), "V1Job")
ACCESS_REVIEWS = Resource(
    "authorization.k8s.io",
    "v1",
    "selfsubjectaccessreviews",
    "SelfSubjectAccessReview",
    False,
    ("create",),
    (),
    "V1SelfSubjectAccessReview",
)

ALL: tuple[Resource, ...] = (
    NAMESPACES,
    NODES,
    PODS,
    POD_LOG,
    POD_PORTFORWARD,
    POD_EPHEMERAL,
    EVENTS,
    DEPLOYMENTS,
    REPLICASETS,
    JOBS,
    ACCESS_REVIEWS,
)


def group_versions() -> dict[str, str]:
    """Every non-core group the emulator serves, with its (only) version."""
    return {r.group: r.version for r in ALL if r.group}


def resources_of(group: str, version: str) -> list[Resource]:
    """The resources of one group version (core: group ``""``)."""
    return [r for r in ALL if r.group == group and r.version == version]


def find(group: str, plural: str) -> Resource | None:
    """The resource called ``plural`` (``pods/log`` for a subresource) in ``group``."""
    return next((r for r in ALL if r.group == group and r.plural == plural), None)
