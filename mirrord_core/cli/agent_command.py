"""``mirrord agent``: the agent process (what the agent image and local targets run).

The session token never appears on the command line (where ``ps`` shows it): it comes
from ``--token-file`` or the ``MIRRORD_AGENT_TOKEN`` environment variable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from mirrord_core.agent.handlers import merge_handlers
from mirrord_core.agent.log_level import python_level
from mirrord_core.agent.runtime import AgentOptions, AgentRuntime, AgentStartupError
from mirrord_core.agent.target_process import TargetNotFound, pid_of_container
from mirrord_core.plugin_manager import get_plugins
from mirrord_core.user_errors import UserError

TOKEN_ENV = "MIRRORD_AGENT_TOKEN"


class AgentCommandError(UserError):
    """The agent cannot start; the message says why."""


def add_agent_command(commands: Any) -> None:
    """Register ``mirrord agent``."""
    parser = commands.add_parser(
        "agent",
        help="run the mirrord agent (started for you by mirrord run)",
        description="Serve a target's environment, files, DNS and network to mirrord "
        f"clients. The session token is read from --token-file or ${TOKEN_ENV}.",
    )
    parser.add_argument(
        "--listen",
        required=True,
        metavar="HOST:PORT",
        help="address to listen on (port 0: any free port)",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-pid", type=int, metavar="PID", help="target process")
    target.add_argument(
        "--container-id",
        metavar="ID",
        help="target container (its process is found in /proc/*/cgroup)",
    )
    target.add_argument(
        "--ephemeral",
        action="store_true",
        help="run as an ephemeral container of the target (target pid 1)",
    )
    parser.add_argument(
        "--communication-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="exit when no client connected within this time (default 30)",
    )
    parser.add_argument("--network-interface", metavar="IF", help="interface to sniff on")
    parser.add_argument(
        "--pause",
        action="store_true",
        help="freeze the target while clients are connected (agent.pause)",
    )
    parser.add_argument("--log-level", default="info", help="RUST_LOG-style level")
    parser.add_argument("--token-file", metavar="FILE", help="file holding the session token")
    parser.set_defaults(handler=_agent)


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            with open(args.token_file) as file:
                token = file.read().strip()
        except OSError as err:
            raise AgentCommandError(f"cannot read the token file: {err.strerror}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if len(token) < 16:
        raise AgentCommandError(
            f"a session token of at least 16 characters is required (--token-file or {TOKEN_ENV})"
        )
    return token


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise AgentCommandError(f"--listen expects HOST:PORT, got {value!r}")
    return host, int(port)


def _agent(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=python_level(args.log_level),
        format="%(asctime)s agent[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    host, port = _listen(args.listen)
    try:
        if args.container_id:
            pid = pid_of_container(args.container_id)
        else:
            pid = 1 if args.ephemeral else args.target_pid
        loaded = get_plugins()
        contributions = [
            (loaded.manager.get_name(impl.plugin) or "?", impl.function())
            for impl in loaded.manager.hook.register_agent_handlers.get_hookimpls()
        ]
        handlers = merge_handlers([(name, h) for name, h in contributions if h is not None])
        options = AgentOptions(
            listen_host=host,
            listen_port=port,
            pid=pid,
            token=_token(args),
            communication_timeout=args.communication_timeout,
            network_interface=args.network_interface,
            pause=args.pause,
            container=bool(args.container_id or args.ephemeral),
        )
        runtime = AgentRuntime(options, handlers, on_ready=_announce)
        return runtime.run()
    except (TargetNotFound, AgentStartupError, TypeError, ValueError) as err:
        raise AgentCommandError(str(err)) from None
    except PermissionError as err:
        raise AgentCommandError(
            f"cannot enter the target (pid {args.target_pid}): {err.strerror}; the agent "
            "needs root (CAP_SYS_ADMIN, CAP_SYS_PTRACE)"
        ) from None


def _announce(host: str, port: int) -> None:
    # The spawner waits for this line: it says the listener is up and where.
    sys.stdout.write(json.dumps({"ready": {"host": host, "port": port, "pid": os.getpid()}}) + "\n")
    sys.stdout.flush()
