"""``core/v1`` Events, as the scheduler, kubelet and job controller record them.

Clients read them to explain a pod that does not start (``kubectl describe``): an image
that cannot be pulled, a Job that gave up.
"""

from __future__ import annotations

import secrets
from typing import Any

from . import resources
from .store import ObjectStore, now


class EventRecorder:
    """Records events about objects in the store."""

    def __init__(self, store: ObjectStore, node_name: str) -> None:
        self.store = store
        self.node_name = node_name

    def record(
        self,
        obj: dict[str, Any],
        reason: str,
        message: str,
        *,
        warning: bool = False,
        component: str = "kubelet",
        field_path: str | None = None,
    ) -> None:
        """Record one event about ``obj`` (a Pod, a Job …)."""
        meta = obj["metadata"]
        involved: dict[str, Any] = {
            "kind": obj.get("kind"),
            "apiVersion": obj.get("apiVersion"),
            "namespace": meta.get("namespace"),
            "name": meta["name"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        }
        if field_path:
            involved["fieldPath"] = field_path
        timestamp = now()
        source: dict[str, Any] = {"component": component}
        if component == "kubelet":
            source["host"] = self.node_name
        self.store.create(
            resources.EVENTS,
            {
                "metadata": {
                    "name": f"{meta['name']}.{secrets.token_hex(8)}",
                    "namespace": meta.get("namespace") or "default",
                },
                "involvedObject": involved,
                "reason": reason,
                "message": message,
                "type": "Warning" if warning else "Normal",
                "source": source,
                "firstTimestamp": timestamp,
                "lastTimestamp": timestamp,
                "count": 1,
                "reportingComponent": component,
                "reportingInstance": self.node_name if component == "kubelet" else "",
            },
        )
