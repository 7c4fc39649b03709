"""What plugins give the agent: request and stream handlers, and the context they run in."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs

from mirrord_core.protocol import Connection
from mirrord_core.protocol.connection import RequestHandler, StreamHandler
from mirrord_core.protocol.registry import Message

_CONTEXT_KEY = "mirrord.agent"


Lifespan = Callable[["AgentContext"], AbstractAsyncContextManager[Any]]


@attrs.frozen(kw_only=True)
class AgentHandlers:
    """One plugin's agent side: handlers by request message class and by stream kind."""

    requests: Mapping[type[Message], RequestHandler] = attrs.field(factory=dict)
    streams: Mapping[str, StreamHandler] = attrs.field(factory=dict)
    #: Agent-wide services, entered once before the first client is served and exited on
    #: every way out of the agent (e.g. the steal redirector, whose nft rules must go).
    #: Each is called with the :class:`AgentContext` and may keep what its handlers share
    #: in ``context.services``.
    lifespans: Sequence[Lifespan] = ()


@attrs.frozen(kw_only=True)
class AgentContext:
    """The target the agent serves, shared by every client connection.

    ``root_fd`` is an ``O_PATH`` descriptor of the target's root directory
    (``/proc/PID/root``); file access resolves beneath it.
    """

    pid: int
    root_fd: int
    network_interface: str | None = None
    #: Agent-wide objects that plugins' lifespans set up, by a key the plugin chooses.
    services: dict[str, Any] = attrs.field(factory=dict, eq=False)

    def attach(self, connection: Connection) -> None:
        """Make this context reachable from the handlers of ``connection``."""
        connection.state[_CONTEXT_KEY] = self

    @staticmethod
    def of(connection: Connection) -> AgentContext:
        """The context of the agent serving ``connection``."""
        return connection.state[_CONTEXT_KEY]


def merge_handlers(contributions: list[tuple[str, AgentHandlers]]) -> AgentHandlers:
    """One dispatch table from every plugin's handlers; a clash names both plugins."""
    requests: dict[type[Message], RequestHandler] = {}
    streams: dict[str, StreamHandler] = {}
    lifespans: list[Lifespan] = []
    owners: dict[object, str] = {}
    for plugin, handlers in contributions:
        if not isinstance(handlers, AgentHandlers):
            raise TypeError(
                f"plugin {plugin!r}: register_agent_handlers must return AgentHandlers, "
                f"got {type(handlers).__name__}"
            )
        for message, handler in handlers.requests.items():
            if message in requests:
                raise ValueError(
                    f"plugins {owners[message]!r} and {plugin!r} both handle {message.TAG}"
                )
            requests[message], owners[message] = handler, plugin
        for kind, handler in handlers.streams.items():
            if kind in streams:
                raise ValueError(f"plugins {owners[kind]!r} and {plugin!r} both serve {kind}")
            streams[kind], owners[kind] = handler, plugin
        lifespans.extend(handlers.lifespans)
    return AgentHandlers(requests=requests, streams=streams, lifespans=lifespans)
