"""The network plugin's agent handlers: name resolution and outgoing traffic."""

from __future__ import annotations

import socket

from mirrord_core.agent.handlers import AgentContext, AgentHandlers
from mirrord_core.protocol import Connection, RequestFailed
from mirrord_network.agent.incoming import incoming_lifespan, subscribe
from mirrord_network.agent.outgoing import tcp_connect, udp_connect
from mirrord_network.agent.target_resolver import NameNotFound, ResolutionFailed, TargetResolver
from mirrord_network.agent.unix_outgoing import unix_connect
from mirrord_network.messages import (
    INCOMING_SUBSCRIBE_STREAM,
    NAME_NOT_FOUND,
    NAME_UNAVAILABLE,
    TCP_CONNECT_STREAM,
    UDP_STREAM,
    UNIX_CONNECT_STREAM,
    Addresses,
    Resolve,
)

#: Failure code of Resolve for a family other than AF_UNSPEC, AF_INET and AF_INET6
#: (getaddrinfo's EAI_FAMILY).
UNSUPPORTED_FAMILY = "unsupported_family"
_FAMILIES = (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6)


async def resolve(connection: Connection, request: Resolve) -> Addresses:
    if request.family not in _FAMILIES:
        raise RequestFailed(UNSUPPORTED_FAMILY, f"address family {request.family} not supported")
    resolver = TargetResolver(AgentContext.of(connection).root_fd)
    try:
        return Addresses(addresses=await resolver.resolve(request.name, request.family))
    except NameNotFound:
        raise RequestFailed(NAME_NOT_FOUND, f"{request.name[:255]}: name not found") from None
    except ResolutionFailed as err:
        raise RequestFailed(NAME_UNAVAILABLE, str(err)) from None


AGENT_HANDLERS = AgentHandlers(
    requests={Resolve: resolve},
    streams={
        TCP_CONNECT_STREAM: tcp_connect,
        UDP_STREAM: udp_connect,
        UNIX_CONNECT_STREAM: unix_connect,
        INCOMING_SUBSCRIBE_STREAM: subscribe,
    },
    lifespans=(incoming_lifespan,),
)
