"""The agent process: bind, enter the target's network namespace, serve, exit on time.

The listener is bound before ``setns`` so it stays reachable from where the client
connects (the node, a port-forward) while every socket the handlers open afterwards lives
in the target's network namespace. The agent exits when no client came within
``communication_timeout``, when its last client leaves, when the target process exits,
or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

import attrs

from mirrord_core.agent.handlers import AgentContext, AgentHandlers
from mirrord_core.agent.target_freezer import FreezeError, TargetFreezer
from mirrord_core.agent.target_process import TargetNotFound, check_alive, wait_for_exit
from mirrord_core.linux.namespaces import enter_network_namespace, same_network_namespace
from mirrord_core.protocol import Connection, ProtocolServer

log = logging.getLogger("mirrord.agent")
_ROOT_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


@attrs.frozen(kw_only=True)
class AgentOptions:
    """How one agent runs (from ``mirrord agent``'s arguments)."""

    listen_host: str
    listen_port: int
    pid: int
    token: str = attrs.field(repr=False)
    communication_timeout: float = 30.0
    network_interface: str | None = None
    #: ``agent.pause``: freeze the target while clients are connected.
    pause: bool = False
    #: The target is a container (found by id or as an ephemeral container's pid 1).
    container: bool = False


class AgentStartupError(Exception):
    """The agent cannot start serving; the message says why (e.g. the address is in use)."""


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when the host is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=64)


class AgentRuntime:
    """Runs one agent until one of its exit conditions holds."""

    def __init__(
        self,
        options: AgentOptions,
        handlers: AgentHandlers,
        on_ready: Callable[[str, int], None] | None = None,
    ) -> None:
        self.options = options
        self.handlers = handlers
        self._on_ready = on_ready
        self.exit_reason = ""

    def run(self) -> int:
        """Bind, enter the target, serve; returns the process exit status."""
        options = self.options
        check_alive(options.pid)
        try:
            listener = bind_listener(options.listen_host, options.listen_port)
        except OSError as err:
            where = f"{options.listen_host}:{options.listen_port}"
            raise AgentStartupError(f"cannot listen on {where}: {err.strerror or err}") from None
        try:
            root_fd = os.open(f"/proc/{options.pid}/root", _ROOT_FLAGS)
        except (FileNotFoundError, ProcessLookupError):
            listener.close()
            raise TargetNotFound(f"no process with pid {options.pid}") from None
        try:
            if not same_network_namespace("self", options.pid):
                enter_network_namespace(options.pid)
            context = AgentContext(
                pid=options.pid, root_fd=root_fd, network_interface=options.network_interface
            )
            return asyncio.run(self._serve_with_services(listener, context))
        finally:
            listener.close()
            os.close(root_fd)

    async def _serve_with_services(self, listener: socket.socket, context: AgentContext) -> int:
        freezer = (
            TargetFreezer(self.options.pid, container=self.options.container)
            if self.options.pause
            else None
        )
        try:
            async with contextlib.AsyncExitStack() as services:
                for lifespan in self.handlers.lifespans:
                    await services.enter_async_context(lifespan(context))
                return await self._serve(listener, context, freezer)
        finally:
            if freezer is not None:
                freezer.thaw()

    async def _serve(
        self, listener: socket.socket, context: AgentContext, freezer: TargetFreezer | None
    ) -> int:
        loop = asyncio.get_running_loop()
        clients = 0
        ever_connected = asyncio.Event()
        all_left = asyncio.Event()
        stop = asyncio.Event()

        def connected(connection: Connection) -> None:
            nonlocal clients
            context.attach(connection)
            clients += 1
            all_left.clear()
            ever_connected.set()
            log.info("client %s connected (%d connected)", connection.peer_name, clients)
            if freezer is not None:
                try:
                    freezer.freeze()
                except (FreezeError, OSError) as err:
                    log.error("cannot pause the target: %s", err)

        def disconnected(connection: Connection) -> None:
            nonlocal clients
            clients -= 1
            log.info("client %s left: %s", connection.peer_name, connection.close_reason)
            if clients == 0:
                all_left.set()
                if freezer is not None:
                    freezer.thaw()

        server = ProtocolServer(
            token=self.options.token,
            request_handlers=self.handlers.requests,
            stream_handlers=self.handlers.streams,
            on_connect=connected,
            on_disconnect=disconnected,
        )
        await server.start(sock=listener)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        host, port = listener.getsockname()[:2]
        log.info("agent for pid %d listening on %s:%d", self.options.pid, host, port)
        if self._on_ready is not None:
            self._on_ready(host, port)

        async def first_client() -> str:
            try:
                await asyncio.wait_for(ever_connected.wait(), self.options.communication_timeout)
            except TimeoutError:
                return f"no client connected within {self.options.communication_timeout:g} s"
            await all_left.wait()
            return "the last client left"

        async def target_exit() -> str:
            await wait_for_exit(self.options.pid)
            return f"the target process {self.options.pid} exited"

        async def stopped() -> str:
            await stop.wait()
            return "stopped by a signal"

        waiters = [asyncio.ensure_future(w()) for w in (first_client, target_exit, stopped)]
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.exit_reason = next(iter(done)).result()
        log.info("agent exiting: %s", self.exit_reason)
        await server.close(f"the agent is exiting: {self.exit_reason}")
        return 0
