"""The ``feature.network`` section: incoming traffic, outgoing traffic and DNS."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from mirrord_core.config import (
    ConfigValueError,
    Flag,
    PortList,
    PortMapping,
    Regex,
    RegexList,
    describe,
    parse_bool_text,
    setting,
)


class IncomingMode(enum.Enum):
    """How traffic arriving at the target's ports reaches the local process."""

    MIRROR = "mirror"
    STEAL = "steal"
    OFF = "off"


MODE_NAMES = tuple(mode.value for mode in IncomingMode)


def incoming_mode_from_env(text: str) -> IncomingMode:
    """``MIRRORD_AGENT_TCP_STEAL_TRAFFIC``: ``true`` steals, ``false`` mirrors, or a mode."""
    lowered = text.strip().lower()
    try:
        return IncomingMode(lowered)
    except ValueError:
        pass
    try:
        return IncomingMode.STEAL if parse_bool_text(lowered) else IncomingMode.MIRROR
    except ConfigValueError:
        raise ConfigValueError(
            f"expected true, false or one of {', '.join(MODE_NAMES)}, got {text!r}"
        ) from None


def _toggle_only(value: Any, disabled: Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, bool):
        return {} if value else disabled
    raise ConfigValueError(f"expected true/false or a table, got {describe(value)}")


@attrs.frozen(kw_only=True)
class HttpFilterConfig:
    """Steal only HTTP requests whose headers match (steal mode only)."""

    header_filter: Regex | None = setting(
        default=None,
        env="MIRRORD_HTTP_HEADER_FILTER",
        doc="Regex matched against each request's 'Header-Name: value' lines; only "
        "matching requests are stolen, the rest reach the target unchanged.",
    )
    ports: PortList = setting(
        default=PortList([80, 8080]),
        env="MIRRORD_HTTP_HEADER_FILTER_PORTS",
        doc="Ports on which the HTTP filter applies (other stolen ports are stolen whole).",
    )

    @classmethod
    def from_shorthand(cls, value: Any) -> Mapping[str, Any]:
        """``true``/``false`` keep the defaults (the filter is set only by its keys)."""
        return _toggle_only(value, {})

    @classmethod
    def shorthand_schema(cls) -> list[dict[str, Any]]:
        return [{"type": "boolean"}]


@attrs.frozen(kw_only=True)
class IncomingConfig:
    """Incoming traffic: mirror (a copy reaches the process) or steal (the process answers)."""

    mode: IncomingMode = setting(
        default=IncomingMode.MIRROR,
        env="MIRRORD_AGENT_TCP_STEAL_TRAFFIC",
        env_parser=incoming_mode_from_env,
        flags=(
            Flag(
                names=("--steal",),
                const=IncomingMode.STEAL,
                help="steal incoming traffic instead of mirroring it",
            ),
        ),
        doc="mirror (default): copies of the traffic reach the process; steal: the process "
        "answers instead of the target; off: no incoming traffic.",
    )
    http_filter: HttpFilterConfig = setting(
        factory=HttpFilterConfig,
        doc="HTTP header filter for stealing (formerly http_header_filter).",
    )
    port_mapping: PortMapping = setting(
        factory=PortMapping,
        doc="[[local, remote], …]: the local port to subscribe as which remote port.",
    )
    ignore_localhost: bool = setting(
        default=False,
        doc="Do not subscribe ports the process binds on localhost only (unstable).",
    )

    @classmethod
    def from_shorthand(cls, value: Any) -> Mapping[str, Any]:
        """``incoming = "steal"`` is ``incoming = {mode = "steal"}``."""
        if isinstance(value, Mapping):
            return value
        if isinstance(value, str):
            return {"mode": value}
        if isinstance(value, bool):
            return {"mode": (IncomingMode.MIRROR if value else IncomingMode.OFF).value}
        raise ConfigValueError(
            f"expected a mode ({', '.join(MODE_NAMES)}) or a table, got {describe(value)}"
        )

    @classmethod
    def shorthand_schema(cls) -> list[dict[str, Any]]:
        return [{"type": "boolean"}, {"type": "string", "enum": list(MODE_NAMES)}]


@attrs.frozen(kw_only=True)
class OutgoingConfig:
    """Outgoing traffic: connections made from the target's network namespace."""

    tcp: bool = setting(
        default=True,
        env="MIRRORD_TCP_OUTGOING",
        flags=(
            Flag(names=("--no-outgoing",), const=False, help="disable outgoing TCP and UDP"),
            Flag(names=("--no-tcp-outgoing",), const=False, help="disable outgoing TCP"),
        ),
        doc="Make outgoing TCP connections from the target.",
    )
    udp: bool = setting(
        default=True,
        env="MIRRORD_UDP_OUTGOING",
        flags=(
            Flag(names=("--no-outgoing",), const=False, help="disable outgoing TCP and UDP"),
            Flag(names=("--no-udp-outgoing",), const=False, help="disable outgoing UDP"),
        ),
        doc="Send outgoing UDP from the target.",
    )
    ignore_localhost: bool = setting(
        default=False,
        doc="Connect to localhost locally instead of on the target (unstable).",
    )
    unix_streams: RegexList = setting(
        factory=RegexList,
        env="MIRRORD_OUTGOING_REMOTE_UNIX_STREAMS",
        doc="Regexes of unix socket paths to connect to on the target.",
    )

    @classmethod
    def from_shorthand(cls, value: Any) -> Mapping[str, Any]:
        """``outgoing = false`` disables both TCP and UDP."""
        return _toggle_only(value, {"tcp": False, "udp": False})

    @classmethod
    def shorthand_schema(cls) -> list[dict[str, Any]]:
        return [{"type": "boolean"}]


@attrs.frozen(kw_only=True)
class NetworkConfig:
    """Controls the network feature: incoming, outgoing and DNS."""

    incoming: IncomingConfig = setting(factory=IncomingConfig, doc="Incoming traffic.")
    outgoing: OutgoingConfig = setting(factory=OutgoingConfig, doc="Outgoing traffic.")
    dns: bool = setting(
        default=True,
        env="MIRRORD_REMOTE_DNS",
        flags=(Flag(names=("--no-remote-dns",), const=False, help="resolve names locally"),),
        doc="Resolve names as the target does (its resolv.conf, hosts and DNS server).",
    )

    @classmethod
    def from_shorthand(cls, value: Any) -> Mapping[str, Any]:
        """``network = false`` turns off incoming, outgoing and remote DNS."""
        return _toggle_only(
            value, {"incoming": IncomingMode.OFF.value, "outgoing": False, "dns": False}
        )

    @classmethod
    def shorthand_schema(cls) -> list[dict[str, Any]]:
        return [{"type": "boolean"}]
