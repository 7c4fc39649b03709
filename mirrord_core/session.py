"""The client side of a session with an agent: connect, authenticate, request, stream.

Plugins use :class:`Session` from ``mirrord run`` (and tests use it directly). Errors a
user can act on — the agent is unreachable, refused the token, or went away — are
:class:`SessionError` with a sentence that says so; a failed remote operation is the
:class:`OSError` the same operation fails with locally.
"""

from __future__ import annotations

import os
from typing import Any

from mirrord_core.protocol import (
    ConnectFailed,
    Connection,
    ConnectionLost,
    HandshakeRefused,
    Message,
    RequestFailed,
    Stream,
    open_connection,
)
from mirrord_core.protocol.connection import StreamHandler
from mirrord_core.protocol.errors import StreamRefused
from mirrord_core.target_model import AgentEndpoint
from mirrord_core.user_errors import UserError


class SessionError(UserError):
    """The session with the agent cannot be used; the message says why."""


class RemoteRequestError(SessionError):
    """The agent answered a request with a failure that is not an OS error (``code``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Session:
    """One authenticated connection to an agent."""

    def __init__(self, connection: Connection, endpoint: AgentEndpoint) -> None:
        self.connection = connection
        self.endpoint = endpoint

    @classmethod
    async def connect(
        cls, endpoint: AgentEndpoint, *, client_name: str = "mirrord", timeout: float = 10.0
    ) -> Session:
        """Connect to the agent at ``endpoint`` and authenticate with its token.

        A resumable endpoint's session survives a dropped connection: operations wait while
        the session reconnects to the same address (within the agent's grace period), and
        fail with :class:`SessionError` only if the agent cannot resume it.
        """
        where = f"{endpoint.host}:{endpoint.port}"
        try:
            connection = await open_connection(
                endpoint.host,
                endpoint.port,
                token=endpoint.token,
                client_name=client_name,
                connect_timeout=timeout,
                resumable=endpoint.resumable,
            )
        except ConnectFailed as err:
            raise SessionError(f"the agent at {where} is unreachable: {err}") from None
        except HandshakeRefused as err:
            raise SessionError(f"the agent at {where} refused the session: {err.reason}") from None
        except ConnectionLost as err:
            raise SessionError(f"the handshake with the agent at {where} failed: {err}") from None
        return cls(connection, endpoint)

    async def request(self, payload: Message, *, timeout: float | None = None) -> Any:
        """Send one request and return the agent's answer.

        Raises the :class:`OSError` the operation failed with in the target, or
        :class:`SessionError` when the agent is gone.
        """
        try:
            return await self.connection.request(payload, timeout=timeout)
        except RequestFailed as err:
            if err.errno is not None:
                raise err.to_os_error() from None
            raise RemoteRequestError(err.code, err.message) from None
        except ConnectionLost as err:
            raise SessionError(f"lost the agent: {err}") from None

    async def open_stream(
        self, kind: str, payload: Message | None = None, *, timeout: float | None = None
    ) -> Stream:
        """Open a stream of ``kind`` (an outgoing connection, a file's contents …)."""
        try:
            return await self.connection.open_stream(kind, payload, timeout=timeout)
        except StreamRefused as err:
            if err.errno is not None:
                raise OSError(err.errno, os.strerror(err.errno)) from None
            raise SessionError(f"the agent refused the {kind} stream: {err}") from None
        except ConnectionLost as err:
            raise SessionError(f"lost the agent: {err}") from None

    def serve_streams(self, kind: str, handler: StreamHandler) -> None:
        """Accept streams of ``kind`` that the agent opens (an incoming connection …).

        ``handler(stream, open_payload)`` runs on the session's event loop; the stream
        closes when it returns, and is reset if it raises.
        """
        self.connection.serve_streams(kind, handler)

    async def ping(self, *, timeout: float | None = 10.0) -> float:
        """Round-trip time to the agent, in seconds."""
        try:
            return await self.connection.ping(timeout=timeout)
        except ConnectionLost as err:
            raise SessionError(f"lost the agent: {err}") from None

    async def close(self) -> None:
        """End the session politely."""
        await self.connection.close("session finished")

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
