"""The emulated cluster's objects: JSON documents with resource versions, and their watchers.

Everything runs on the API server's event loop, so there is no locking. Objects are plain
JSON (what the API returns); callers get deep copies and write back whole objects, and
every change bumps the cluster-wide resource version and is offered to the watchers.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .resources import Resource
from .status import ApiError, already_exists, not_found

Obj = dict[str, Any]
HISTORY = 4096


def now() -> str:
    """The current time as the API writes timestamps (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``ADDED``, ``MODIFIED`` or ``DELETED`` with the object after it."""

    type: str
    resource: Resource
    obj: Obj
    resource_version: int


class Watcher:
    """A subscription to every change of one resource; iterate with ``await next_event()``."""

    def __init__(self, store: ObjectStore, resource: Resource, backlog: list[WatchEvent]) -> None:
        self._store = store
        self.resource = resource
        self.queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        for event in backlog:
            self.queue.put_nowait(event)

    async def next_event(self, timeout: float | None) -> WatchEvent | None:
        """The next change, or None after ``timeout`` seconds without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Stop receiving changes."""
        self._store._watchers.discard(self)


class ObjectStore:
    """Objects by (resource, namespace, name), with a global resource version.

    ``validate``, when given, checks every object written (the emulator's own objects
    must deserialize with the client's models too).
    """

    def __init__(self, validate: Callable[[Resource, Obj], None] | None = None) -> None:
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._version = 1
        self._watchers: set[Watcher] = set()
        self._validate = validate
        # Recent changes, so a watch can resume from a list's resource version.
        self._history: collections.deque[WatchEvent] = collections.deque(maxlen=HISTORY)

    @property
    def resource_version(self) -> str:
        """The version of the latest change, as lists report it."""
        return str(self._version)

    def _key(self, resource: Resource, namespace: str | None, name: str) -> tuple[str, str, str]:
        return (resource.plural, namespace or "", name)

    def _publish(self, kind: str, resource: Resource, obj: Obj) -> None:
        event = WatchEvent(kind, resource, copy.deepcopy(obj), self._version)
        self._history.append(event)
        for watcher in list(self._watchers):
            if watcher.resource.plural == resource.plural:
                watcher.queue.put_nowait(event)

    def _stamp(self, obj: Obj) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        """A copy of the object, or None."""
        found = self._objects.get(self._key(resource, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def require(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        """A copy of the object; 404 NotFound if there is none."""
        found = self.get(resource, namespace, name)
        if found is None:
            raise not_found(resource, name)
        return found

    def list(self, resource: Resource, namespace: str | None = None) -> list[Obj]:
        """Copies of the objects of ``resource`` (in ``namespace`` unless None), sorted."""
        return [copy.deepcopy(obj) for obj in self._iter(resource, namespace)]

    def _iter(self, resource: Resource, namespace: str | None) -> Iterator[Obj]:
        for key in sorted(self._objects):
            plural, ns, _ = key
            if plural == resource.plural and (namespace is None or ns == namespace):
                yield self._objects[key]

    def create(self, resource: Resource, obj: Obj) -> Obj:
        """Add a new object: uid, creation time and resource version are set here."""
        meta = obj.setdefault("metadata", {})
        key = self._key(resource, meta.get("namespace"), meta["name"])
        if key in self._objects:
            raise already_exists(resource, meta["name"])
        obj["kind"], obj["apiVersion"] = resource.kind, resource.api_version
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        self._check(resource, obj)
        self._stamp(obj)
        self._objects[key] = copy.deepcopy(obj)
        self._publish("ADDED", resource, obj)
        return copy.deepcopy(obj)

    def replace(self, resource: Resource, obj: Obj) -> Obj:
        """Write back an existing object; a no-op (same version) if nothing changed."""
        meta = obj["metadata"]
        key = self._key(resource, meta.get("namespace"), meta["name"])
        current = self._objects.get(key)
        if current is None:
            raise not_found(resource, meta["name"])
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        if obj == current:
            return copy.deepcopy(current)
        self._check(resource, obj)
        self._stamp(obj)
        self._objects[key] = copy.deepcopy(obj)
        self._publish("MODIFIED", resource, obj)
        return copy.deepcopy(obj)

    def update(
        self, resource: Resource, namespace: str | None, name: str, change: Callable[[Obj], None]
    ) -> Obj | None:
        """Apply ``change`` to a copy of the object and write it back; None if it is gone."""
        obj = self.get(resource, namespace, name)
        if obj is None:
            return None
        change(obj)
        return self.replace(resource, obj)

    def delete(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        """Remove the object; returns it (None if there was none)."""
        obj = self._objects.pop(self._key(resource, namespace, name), None)
        if obj is None:
            return None
        self._stamp(obj)
        self._publish("DELETED", resource, obj)
        return copy.deepcopy(obj)

    def watch(self, resource: Resource, since: int | None = None) -> Watcher:
        """Subscribe to the changes of ``resource``: those after version ``since`` (410
        Expired if they are no longer known), or from now on."""
        backlog: list[WatchEvent] = []
        if since is not None:
            oldest = self._history[0].resource_version if self._history else self._version + 1
            if since < oldest - 1 and len(self._history) == self._history.maxlen:
                raise ApiError(410, "Expired", f"too old resource version: {since} ({oldest - 1})")
            backlog = [
                e
                for e in self._history
                if e.resource_version > since and e.resource.plural == resource.plural
            ]
        watcher = Watcher(self, resource, backlog)
        self._watchers.add(watcher)
        return watcher

    def _check(self, resource: Resource, obj: Obj) -> None:
        if self._validate is not None:
            self._validate(resource, obj)
