"""The network plugin's hook implementations."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from mirrord_core.agent.handlers import AgentHandlers
from mirrord_core.hookspecs import hookimpl
from mirrord_core.user_errors import UserError
from mirrord_network.agent.handlers import AGENT_HANDLERS
from mirrord_network.config import NetworkConfig
from mirrord_network.local.dns_handlers import DnsFiles, target_files_available
from mirrord_network.local.incoming_handlers import IncomingTraffic, incoming_options
from mirrord_network.local.net_command import add_net_command
from mirrord_network.local.outgoing_handlers import OutgoingTraffic

log = logging.getLogger(__name__)


@hookimpl
def register_config_sections() -> Mapping[str, type]:
    return {"feature.network": NetworkConfig}


@hookimpl
def register_agent_handlers() -> AgentHandlers:
    return AGENT_HANDLERS


@hookimpl
def register_cli_commands(commands: Any) -> None:
    add_net_command(commands)


@hookimpl
def handle_outgoing(config: Any, session: Any) -> list[Any] | None:
    """Outgoing TCP/UDP and unix streams through the target, and remote DNS
    (``docs/network.md``)."""
    network: NetworkConfig = config.feature.network
    outgoing = network.outgoing
    if not (outgoing.tcp or outgoing.udp or network.dns or outgoing.unix_streams):
        return None
    loop = asyncio.get_running_loop()
    handlers: list[Any] = []
    if network.dns:
        if target_files_available():
            handlers.append(DnsFiles(session, loop))
        else:
            log.warning(
                "remote DNS reads the target's resolv.conf and hosts through the fs plugin "
                "(mirrord-fs), which is not installed: this machine's files are used"
            )
    handlers.append(
        OutgoingTraffic(
            session,
            loop,
            tcp=outgoing.tcp,
            udp=outgoing.udp,
            ignore_localhost=outgoing.ignore_localhost,
            remote_dns=network.dns,
            unix_streams=outgoing.unix_streams,
        )
    )
    return handlers


class IncomingConfigError(UserError):
    """The incoming settings cannot work together."""


@hookimpl
def handle_incoming(config: Any, session: Any) -> list[Any] | None:
    """Mirror or steal the target's incoming traffic to the process's listeners."""
    options = incoming_options(config)
    if options is None:
        return None
    if options.mode == "mirror" and config.agent.pause:
        raise IncomingConfigError(
            "agent.pause freezes the target, so it cannot answer the traffic mirrord would "
            'mirror: set feature.network.incoming.mode = "steal" (or pass --steal), or '
            "turn agent.pause off"
        )
    return [IncomingTraffic(session, asyncio.get_running_loop(), options)]
