"""The agent container every Kubernetes agent runs: image, command line, environment.

The Job and the ephemeral container differ only in how the agent finds the target
(``--container-id`` from ``containerStatuses`` vs ``--ephemeral``: it shares the target's
namespaces). The session token is an environment variable of the container, never an
argument, so it does not show in the pod's command line (``ps``, ``kubectl describe``).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from typing import Any

import attrs
from kubernetes import client

from mirrord_target.agent_image import DEFAULT_AGENT_IMAGE

TOKEN_ENV = "MIRRORD_AGENT_TOKEN"
AGENT_LABELS = {"app": "mirrord"}
# The agent listens in its own pod's network namespace, where any port is free. The range
# stays below Linux's ephemeral ports (32768-60999) all the same: where the agent shares a
# network namespace (an emulated node, hostNetwork), a port the kernel handed to some
# client connection would make the agent's bind fail.
AGENT_PORT_RANGE = (10000, 30000)


def random_agent_port() -> int:
    """A port in :data:`AGENT_PORT_RANGE` for an agent to listen on."""
    low, high = AGENT_PORT_RANGE
    return low + secrets.randbelow(high - low)


_NAME_ALPHABET = string.ascii_lowercase + string.digits


def random_suffix(length: int = 10) -> str:
    """Lowercase letters and digits, valid in any Kubernetes name."""
    return "".join(secrets.choice(_NAME_ALPHABET) for _ in range(length))


@attrs.frozen(kw_only=True)
class AgentSpec:
    """What the agent runs with, from the ``agent`` config section."""

    image: str
    image_pull_policy: str
    log_level: str
    communication_timeout: float | None
    network_interface: str | None
    startup_timeout: float
    ttl: int
    namespace: str | None
    pause: bool = False
    token: str = attrs.field(factory=lambda: secrets.token_hex(32), repr=False)
    port: int = attrs.field(factory=random_agent_port)

    @classmethod
    def from_config(cls, agent: Any) -> AgentSpec:
        """The spec of ``config.agent``; ``agent.image`` unset means this release's image."""
        return cls(
            image=agent.image or DEFAULT_AGENT_IMAGE,
            image_pull_policy=str(agent.image_pull_policy),
            log_level=agent.log_level,
            communication_timeout=None
            if agent.communication_timeout is None
            else float(agent.communication_timeout),
            network_interface=agent.network_interface,
            startup_timeout=float(agent.startup_timeout),
            ttl=int(agent.ttl),
            namespace=agent.namespace,
            pause=bool(agent.pause),
        )

    def args(self, target: list[str]) -> list[str]:
        """The arguments of ``mirrord agent``; ``target`` selects the target process."""
        args = ["--listen", f"0.0.0.0:{self.port}", *target, "--log-level", self.log_level]
        if self.communication_timeout is not None:
            args += ["--communication-timeout", f"{self.communication_timeout:g}"]
        if self.network_interface:
            args += ["--network-interface", self.network_interface]
        if self.pause:
            args.append("--pause")
        return args

    def env(self) -> list[client.V1EnvVar]:
        return [client.V1EnvVar(name=TOKEN_ENV, value=self.token)]

    def pull_policy(self) -> str | None:
        """``None`` (the empty setting) leaves the pull policy to the cluster."""
        return self.image_pull_policy or None


AGENT_COMMAND = ["mirrord", "agent"]


@attrs.frozen(kw_only=True)
class StartedAgent:
    """An agent that runs in the cluster and listens on ``pod:port`` in ``namespace``.

    ``what`` names it for the user (``job mirrord-agent-…``); ``release`` removes what
    was created for it, once the session is over.
    """

    what: str
    namespace: str
    pod: str
    port: int
    release: Callable[[], None] = attrs.field(default=lambda: None, repr=False)

    def describe(self) -> str:
        return f"{self.what} (pod {self.pod}, namespace {self.namespace})"


def privileged() -> client.V1SecurityContext:
    """The agent enters other processes' namespaces (CAP_SYS_ADMIN, CAP_SYS_PTRACE) and
    changes their network (CAP_NET_ADMIN): it runs privileged, as root."""
    return client.V1SecurityContext(
        privileged=True,
        run_as_user=0,
        capabilities=client.V1Capabilities(add=["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "NET_RAW"]),
    )
