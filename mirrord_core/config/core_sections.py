"""The configuration keys the core owns: the top level and ``agent``.

Feature sections (``feature.fs``, ``feature.env``, ``feature.network``) and ``target``
belong to plugins; :mod:`mirrord_core.config.layout` assembles the whole tree.
Defaults and environment variables are mirrord 3.32's.
"""

from __future__ import annotations

import attrs

from mirrord_core.config.fields import Flag, setting
from mirrord_core.config.values import ChoiceString, HostPort, StringList, UInt16, UInt64


class ImagePullPolicy(ChoiceString):
    """A Kubernetes image pull policy; the empty string leaves the choice to the cluster."""

    choices = ("Always", "IfNotPresent", "Never", "")


@attrs.frozen(kw_only=True)
class AgentConfig:
    """Configuration of the mirrord agent that serves the session next to the target."""

    log_level: str = setting(
        default="info",
        env="MIRRORD_AGENT_RUST_LOG",
        flags=(Flag(names=("-l", "--agent-log-level"), help="agent log level"),),
        doc="Log level of the agent (anything RUST_LOG accepts: error, warn, info, debug, "
        "trace, or per-module directives).",
    )
    namespace: str | None = setting(
        default=None,
        env="MIRRORD_AGENT_NAMESPACE",
        flags=(Flag(names=("-a", "--agent-namespace"), help="namespace to place the agent in"),),
        doc="Namespace the agent runs in; defaults to the target's namespace.",
    )
    image: str | None = setting(
        default=None,
        env="MIRRORD_AGENT_IMAGE",
        flags=(Flag(names=("-i", "--agent-image"), help="agent image"),),
        doc="Image of the agent; defaults to the image matching this mirrord's version.",
    )
    image_pull_policy: ImagePullPolicy = setting(
        default=ImagePullPolicy("IfNotPresent"),
        env="MIRRORD_AGENT_IMAGE_PULL_POLICY",
        doc="Kubernetes image pull policy of the agent: Always, IfNotPresent or Never "
        '("" leaves it to the cluster).',
    )
    ttl: UInt16 = setting(
        default=UInt16(1),
        env="MIRRORD_AGENT_TTL",
        flags=(Flag(names=("--agent-ttl",), help="agent TTL in seconds"),),
        doc="Seconds the agent's Job is kept after the agent exits (ttlSecondsAfterFinished).",
    )
    ephemeral: bool = setting(
        default=False,
        env="MIRRORD_EPHEMERAL_CONTAINER",
        flags=(
            Flag(
                names=("-e", "--ephemeral-container"),
                const=True,
                help="run the agent as an ephemeral container of the target pod",
            ),
        ),
        doc="Run the agent as an ephemeral container of the target pod instead of a Job.",
    )
    communication_timeout: UInt16 | None = setting(
        default=None,
        env="MIRRORD_AGENT_COMMUNICATION_TIMEOUT",
        doc="Seconds the agent waits for a client before exiting when none is connected.",
    )
    startup_timeout: UInt64 = setting(
        default=UInt64(60),
        env="MIRRORD_AGENT_STARTUP_TIMEOUT",
        flags=(Flag(names=("--agent-startup-timeout",), help="seconds to wait for the agent"),),
        doc="Seconds to wait for the agent to become ready before giving up.",
    )
    network_interface: str | None = setting(
        default=None,
        env="MIRRORD_AGENT_NETWORK_INTERFACE",
        doc="Interface the agent sniffs for mirroring; defaults to the interface of the "
        "target's default route, else eth0.",
    )
    pause: bool = setting(
        default=False,
        env="MIRRORD_PAUSE",
        flags=(
            Flag(
                names=("-p", "--pause"),
                const=True,
                help="pause the target while mirrord runs (unstable)",
            ),
        ),
        doc="Freeze the target's processes while clients are connected (unstable).",
    )
    flush_connections: bool = setting(
        default=True,
        env="MIRRORD_AGENT_STEALER_FLUSH_CONNECTIONS",
        doc="Drop established connections when stealing starts so they reconnect into the "
        "redirect (unstable).",
    )


@attrs.frozen(kw_only=True)
class CoreTopLevel:
    """Top-level keys owned by the core (sections are added by the layout)."""

    accept_invalid_certificates: bool = setting(
        default=False,
        env="MIRRORD_ACCEPT_INVALID_CERTIFICATES",
        flags=(
            Flag(
                names=("-c", "--accept-invalid-certificates"),
                const=True,
                help="accept invalid TLS certificates of the Kubernetes API server",
            ),
        ),
        doc="Accept invalid (e.g. self-signed) TLS certificates of the Kubernetes API server.",
    )
    skip_processes: StringList = setting(
        factory=StringList,
        env="MIRRORD_SKIP_PROCESSES",
        flags=(
            Flag(
                names=("--skip-processes",),
                help="processes mirrord leaves alone, separated by ';'",
            ),
        ),
        doc="Names of processes that run entirely locally (e.g. an IDE's debugger).",
    )
    connect_tcp: HostPort | None = setting(
        default=None,
        env="MIRRORD_CONNECT_TCP",
        doc="HOST:PORT of an agent that is already running; skips target resolution and "
        "agent creation.",
    )
    connect_agent_name: str | None = setting(
        default=None,
        env="MIRRORD_CONNECT_AGENT",
        doc="Name of a running agent pod to connect to.",
    )
    connect_agent_port: UInt16 | None = setting(
        default=None,
        env="MIRRORD_CONNECT_PORT",
        doc="Port of the running agent named by connect_agent_name.",
    )
    operator: bool = setting(
        default=True,
        env="MIRRORD_OPERATOR_ENABLE",
        doc="Look for the mirrord operator in the cluster and use it when installed.",
    )
    kubeconfig: str | None = setting(
        default=None,
        env="MIRRORD_KUBECONFIG",
        doc="Path of the kubeconfig file; defaults to KUBECONFIG, ~/.kube/config or the "
        "in-cluster configuration.",
    )
    sip_binaries: StringList = setting(
        factory=StringList,
        doc="Binaries to patch for macOS SIP; accepted for compatibility, unused on Linux.",
    )


@attrs.frozen(kw_only=True)
class CoreFeature:
    """Keys of ``feature`` owned by the core (feature sections are added by the layout)."""

    capture_error_trace: bool = setting(
        default=False,
        env="MIRRORD_CAPTURE_ERROR_TRACE",
        flags=(
            Flag(
                names=("--capture-error-trace",),
                const=True,
                help="accepted for compatibility with mirrord",
            ),
        ),
        doc="mirrord's crash-report switch; accepted for compatibility and reported by a "
        "warning, mirrord for Python writes no crash trace.",
    )
