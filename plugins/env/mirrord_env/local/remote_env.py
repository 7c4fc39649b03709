"""Fetching the target's environment through a session."""

from __future__ import annotations

from mirrord_core.session import Session
from mirrord_env.messages import EnvVars, GetEnv


async def fetch_remote_env(session: Session) -> dict[str, str]:
    """The target's environment (unfiltered; ``filter_env`` decides what the process gets)."""
    answer: EnvVars = await session.request(GetEnv())
    return dict(answer.env)
