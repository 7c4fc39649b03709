"""Hook specifications: everything a mirrord plugin can provide.

Grouped by lifecycle: registration (read once when plugins load), session setup
(``mirrord run`` resolving the target and starting the agent), process setup (what the
user's process starts with and which syscalls are handled), and the agent side.
Hooks on a per-syscall path return handler objects once; the hot path never calls
``pm.hook``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

import pluggy

from mirrord_core.agent.handlers import AgentHandlers
from mirrord_core.handler_protocols import SyscallHandler
from mirrord_core.target_model import AgentEndpoint, ResolvedTarget

PROJECT_NAME = "mirrord"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- registration ------------------------------------------------------------------------


@hookspec
def register_config_sections() -> Mapping[str, type]:
    """Declare the config sections this plugin owns.

    Receives nothing. Returns ``{dotted_path: attrs_class}``, e.g.
    ``{"feature.fs": FsConfig}``; paths are ``feature.<name>`` or a new top-level key.
    Collected from every plugin; two plugins claiming one path is an error.
    """


@hookspec
def register_agent_handlers() -> AgentHandlers:
    """Declare what the agent serves for this plugin.

    Receives nothing. Returns an :class:`~mirrord_core.agent.handlers.AgentHandlers`:
    request handlers by message class (``async def h(connection, payload)``) and stream
    handlers by stream kind (``async def h(stream, open_payload)``). Collected from every
    plugin; the agent merges them once at start-up and a message or stream kind claimed
    by two plugins is an error. Handlers find the target through
    ``AgentContext.of(connection)``.
    """


@hookspec
def register_cli_commands(commands: Any) -> None:
    """Add this plugin's sub-commands to the ``mirrord`` command line.

    Receives the argparse sub-parsers object of ``mirrord``. Returns nothing: the plugin
    calls ``commands.add_parser(...)`` (or :func:`mirrord_core.cli.target_options.
    command_parser`, which adds ``-f`` and the run flags) and sets a ``handler`` default
    taking the parsed arguments and returning the exit status. Collected: called for every
    plugin while the CLI is built. Handlers raise :class:`~mirrord_core.user_errors.
    UserError` subclasses for failures the user can act on.
    """


# -- session setup (mirrord run) ----------------------------------------------------------


@hookspec(firstresult=True)
def resolve_target(config: Any) -> ResolvedTarget | None:
    """Turn the configured target into something an agent can attach to.

    Receives the resolved config tree. Returns a :class:`ResolvedTarget`, or ``None`` when
    this plugin does not handle the configured target kind. First result wins.
    """


@hookspec(firstresult=True)
def spawn_agent(config: Any, target: ResolvedTarget | None) -> AgentEndpoint | None:
    """Start (or find) an agent for ``target`` and say how to reach it.

    Receives the config and the resolved target (``None`` when ``connect_tcp`` names an
    agent). Returns an :class:`AgentEndpoint` whose ``release`` stops what was started,
    or ``None`` when this plugin cannot spawn for that target. First result wins.
    """


# -- process setup -------------------------------------------------------------------------


@hookspec(firstresult=True)
def fetch_remote_env(config: Any, session: Any) -> Awaitable[Mapping[str, str]] | None:
    """Fetch the target's environment for the user's process.

    Receives the config and the agent session. Returns an awaitable of the target's
    (unfiltered) environment, or ``None`` when this plugin does not provide it (then the
    process starts with the local environment only). First result wins; the core awaits
    it once per ``mirrord run`` and passes it through :func:`filter_env`.
    """


@hookspec
def filter_env(config: Any, remote_env: Mapping[str, str]) -> Mapping[str, str] | None:
    """Decide the environment the user's process starts with.

    Receives the config and the target's environment. Returns the environment to use, or
    ``None`` to leave it unchanged. Chained: implementations run in plugin order and each
    receives the previous one's result as ``remote_env`` (see
    :func:`mirrord_core.plugin_manager.apply_env_filters`).
    """


@hookspec
def hook_fs(config: Any, session: Any) -> list[SyscallHandler] | None:
    """Provide the file-system interception handlers for a session.

    Receives the config and the agent session. Returns handler objects (the syscalls
    they need trapped and how to answer them), or ``None`` when the feature is off.
    Collected from every plugin; called once per session, never per syscall.
    """


@hookspec
def handle_outgoing(config: Any, session: Any) -> list[SyscallHandler] | None:
    """Provide handlers for outgoing traffic (``connect``, ``sendto``, DNS).

    Receives the config and the agent session. Returns handler objects, or ``None``.
    Collected from every plugin; called once per session.
    """


@hookspec
def handle_incoming(config: Any, session: Any) -> list[SyscallHandler] | None:
    """Provide handlers for incoming traffic (``bind``/``listen``/``accept``) and the relay.

    Receives the config and the agent session. Returns handler objects, or ``None``.
    Collected from every plugin; called once per session.
    """
