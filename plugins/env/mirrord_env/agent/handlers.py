"""The env plugin's agent handlers."""

from __future__ import annotations

from mirrord_core.agent.handlers import AgentContext, AgentHandlers
from mirrord_core.protocol import Connection
from mirrord_env.agent.environ_reader import read_environ
from mirrord_env.messages import EnvVars, GetEnv


async def get_env(connection: Connection, request: GetEnv) -> EnvVars:
    return EnvVars(env=read_environ(AgentContext.of(connection).pid))


AGENT_HANDLERS = AgentHandlers(requests={GetEnv: get_env})
