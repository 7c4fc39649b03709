"""The env plugin's agent handlers."""

from __future__ import annotations

import os

from mirrord_core.agent.handlers import AgentContext, AgentHandlers
from mirrord_core.protocol import Connection
from mirrord_env.agent.environ_reader import read_environ
from mirrord_env.messages import EnvVars, GetEnv


def _wire_text(text: str) -> str:
    """Wire text for a name or value: bytes that are not UTF-8 (kept by the reader as
    surrogate escapes, which msgpack cannot carry) become U+FFFD, so one odd variable
    cannot make the whole environment unanswerable."""
    return os.fsencode(text).decode("utf-8", "replace")


async def get_env(connection: Connection, request: GetEnv) -> EnvVars:
    env = read_environ(AgentContext.of(connection).pid)
    return EnvVars(env={_wire_text(name): _wire_text(value) for name, value in env.items()})


AGENT_HANDLERS = AgentHandlers(requests={GetEnv: get_env})
