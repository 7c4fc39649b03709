"""Authentication and authorization of the emulated API: one user, one token, a denial list.

The kubeconfig's user (``developer``) authenticates with a bearer token; anything else
is 401. Authorization is RBAC-shaped: everything is allowed except requests in a
forbidden namespace and the ``VERB RESOURCE`` pairs denied explicitly (``create jobs``,
``create pods/portforward``, ``patch pods/ephemeralcontainers``), which get the 403 a
real API server gives, naming the user, verb, resource, API group and namespace.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .resources import Resource
from .status import forbidden

DEFAULT_USER = "developer"
DEFAULT_FORBIDDEN_NAMESPACES = ("restricted",)


class AccessPolicy:
    """Who may do what; safe to change from another thread while the server runs."""

    def __init__(
        self,
        *,
        user: str = DEFAULT_USER,
        forbidden_namespaces: Iterable[str] = DEFAULT_FORBIDDEN_NAMESPACES,
        denied: Iterable[str] = (),
    ) -> None:
        self.user = user
        self._lock = threading.Lock()
        self._namespaces = set(forbidden_namespaces)
        self._denied = {self._parse(d) for d in denied}

    @staticmethod
    def _parse(permission: str) -> tuple[str, str]:
        verb, _, resource = permission.strip().partition(" ")
        if not verb or not resource.strip():
            raise ValueError(
                f"a permission is 'VERB RESOURCE' (e.g. 'create jobs'), got {permission!r}"
            )
        return verb, resource.strip()

    @property
    def forbidden_namespaces(self) -> frozenset[str]:
        """Namespaces in which every request is refused."""
        with self._lock:
            return frozenset(self._namespaces)

    def forbid_namespace(self, namespace: str) -> None:
        """Refuse every request in ``namespace`` from now on."""
        with self._lock:
            self._namespaces.add(namespace)

    def deny(self, permission: str) -> None:
        """Refuse ``"VERB RESOURCE"`` everywhere (e.g. ``"create pods/portforward"``)."""
        with self._lock:
            self._denied.add(self._parse(permission))

    def allow(self, permission: str) -> None:
        """Undo ``deny``."""
        with self._lock:
            self._denied.discard(self._parse(permission))

    def allows(self, verb: str, resource: Resource, namespace: str | None) -> bool:
        """Whether the user may ``verb`` ``resource`` in ``namespace``."""
        with self._lock:
            if namespace is not None and namespace in self._namespaces:
                return False
            return (verb, resource.plural) not in self._denied

    def check(
        self, verb: str, resource: Resource, namespace: str | None, name: str | None = None
    ) -> None:
        """Raise the 403 Forbidden a real cluster gives unless allowed."""
        if not self.allows(verb, resource, namespace):
            raise forbidden(self.user, verb, resource, namespace, name)
