"""What target resolution and agent spawning produce, shared by the core and plugins."""

from __future__ import annotations

from collections.abc import Callable

import attrs


@attrs.frozen(kw_only=True)
class ResolvedTarget:
    """A target resolved to something an agent can attach to.

    Kubernetes targets carry the pod, its node and the container's id and runtime; a local
    target (``pid/PID``) carries only ``pid``.
    """

    kind: str
    name: str
    namespace: str | None = None
    pod: str | None = None
    container: str | None = None
    container_id: str | None = None
    container_runtime: str | None = None
    node: str | None = None
    pid: int | None = None


@attrs.frozen(kw_only=True)
class AgentEndpoint:
    """How to reach a running agent, and how to let it go when the session ends."""

    host: str
    port: int
    token: str = attrs.field(repr=False)
    release: Callable[[], None] = attrs.field(default=lambda: None, repr=False)
    #: Reconnect to ``host:port`` and resume the session when the connection drops (the
    #: agent is behind a port-forward that a new connection re-establishes).
    resumable: bool = False
