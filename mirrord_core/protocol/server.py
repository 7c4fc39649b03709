"""A TCP listener that turns every accepted socket into a :class:`Connection`.

Each client is handled in its own task: a failed handshake, a protocol violation or a bug
in a handler ends that client's connection only, and nothing raised for one client reaches
the listener or the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mirrord_core.protocol.codec import Codec, default_codec
from mirrord_core.protocol.connection import (
    READ_BUFFER_LIMIT,
    Connection,
    ConnectionOptions,
    RequestHandler,
    StreamHandler,
    accept,
)
from mirrord_core.protocol.errors import HandshakeError
from mirrord_core.protocol.framing import FrameReader
from mirrord_core.protocol.registry import Message

log = logging.getLogger("mirrord.protocol")

ConnectionCallback = Callable[[Connection], Awaitable[None] | None]


class ProtocolServer:
    """Accepts authenticated protocol connections.

    ``on_connect`` runs after a successful handshake and ``on_disconnect`` after the
    connection closed (both optional, sync or async). :attr:`connections` holds the
    connections that are currently open.
    """

    def __init__(
        self,
        *,
        token: str,
        request_handlers: Mapping[type[Message] | str, RequestHandler] | None = None,
        stream_handlers: Mapping[str, StreamHandler] | None = None,
        codec: Codec | None = None,
        options: ConnectionOptions | None = None,
        on_connect: ConnectionCallback | None = None,
        on_disconnect: ConnectionCallback | None = None,
    ) -> None:
        self._token = token
        self._request_handlers = dict(request_handlers or {})
        self._stream_handlers = dict(stream_handlers or {})
        self.codec = codec if codec is not None else default_codec()
        self.options = options if options is not None else ConnectionOptions()
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        #: Open connections (after the handshake, until closed).
        self.connections: set[Connection] = set()
        #: Handshakes that failed so far (wrong token, garbage, timeouts).
        self.rejected = 0
        self._server: asyncio.Server | None = None
        self._client_tasks: set[asyncio.Task[None]] = set()
        #: Resumable sessions by id (kept while suspended, so a reconnecting client finds
        #: its session); maintained by :func:`accept`.
        self._sessions: dict[str, Connection] = {}

    async def start(
        self, host: str | None = None, port: int = 0, *, sock: socket.socket | None = None
    ) -> None:
        """Listen on ``host:port`` (port 0 picks a free port) or on a bound ``sock``."""
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            # asyncio.start_server's protocol, with a FrameReader as the reader.
            reader = FrameReader(limit=READ_BUFFER_LIMIT, loop=loop)
            return asyncio.StreamReaderProtocol(reader, self._on_client, loop=loop)

        if sock is not None:
            self._server = await loop.create_server(protocol, sock=sock)
        else:
            self._server = await loop.create_server(protocol, host, port)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the first listening socket."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not listening")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self, reason: str = "server shutting down") -> None:
        """Stop listening, close every connection with ``Goodbye(reason)``, wait for them."""
        if self._server is not None:
            self._server.close()
        await asyncio.gather(
            *(connection.close(reason) for connection in list(self.connections)),
            return_exceptions=True,
        )
        for task in list(self._client_tasks):
            task.cancel()
        if self._client_tasks:
            await asyncio.wait(list(self._client_tasks), timeout=self.options.close_timeout)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def __aenter__(self) -> ProtocolServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._client_tasks.add(task)
        try:
            await self._serve_client(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
        except Exception:
            # Last line of defence: nothing about one client may escape into asyncio.
            log.exception("unexpected error while serving a client")
            writer.transport.abort()
        finally:
            self._client_tasks.discard(task)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        try:
            connection = await accept(
                reader,
                writer,
                token=self._token,
                codec=self.codec,
                request_handlers=self._request_handlers,
                stream_handlers=self._stream_handlers,
                options=self.options,
                sessions=self._sessions,
            )
        except HandshakeError as exc:
            self.rejected += 1
            log.warning("client %s: %s", peer, exc)
            return
        if connection is None:
            return  # a suspended session resumed on this socket; its first task serves it
        log.info(
            "client %s (%s) connected, session %s",
            peer,
            connection.peer_name,
            connection.session_id,
        )
        self.connections.add(connection)
        try:
            await _call(self._on_connect, connection)
            reason = await connection.wait_closed()
            log.info("client %s (%s): %s", peer, connection.peer_name, reason)
        finally:
            self.connections.discard(connection)
            if not connection.closed:
                connection.abort("server shutting down")
            await _call(self._on_disconnect, connection)


async def _call(callback: ConnectionCallback | None, connection: Connection) -> None:
    if callback is None:
        return
    try:
        result: Any = callback(connection)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("connection callback %r failed", callback)
