"""How many relay connections may wait in a local listener's accept queue at once.

The relay (:mod:`mirrord_network.local.incoming_relay`) connects to the app's listener
once per connection the agent sends, and the agent sends them in bursts (a capture batch,
a busy event loop, the session's latency). The kernel keeps at most ``backlog`` connections
that the app has not accepted yet. Beyond that it drops the relay's SYN (its connect then
waits a second for the retransmission), and when the retransmitted SYNs of a burst arrive
together it answers them with SYN cookies: the relay's connect succeeds, but if the accept
queue is still full when its bytes arrive, the kernel drops the handshake and resets the
connection — the request is lost although the app was never down. (Python's
``socketserver`` listens with a backlog of 5.)

So the relay keeps its unaccepted connections within the backlog: it enters the listener's
gate before connecting and leaves when the app accepts the connection (the supervisor
accepts on its behalf, :mod:`mirrord_network.local.incoming_handlers`) or the relay
connection ends. The others wait in the relay, their bytes in their stream, until the app
catches up; none is refused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

_SOMAXCONN_FILE = Path("/proc/sys/net/core/somaxconn")


def accept_queue_capacity(backlog: int) -> int:
    """How many connections the kernel queues for a listener with ``backlog``: the
    backlog as the kernel clamps it (to ``net.core.somaxconn`` of this network
    namespace), and at least one (a backlog of 0 still queues one connection)."""
    try:
        somaxconn = int(_SOMAXCONN_FILE.read_text())
    except (OSError, ValueError):
        somaxconn = 4096
    return max(1, min(backlog, somaxconn))


class AcceptGate:
    """The relay connections to one listener that the app has not accepted yet, at most
    :attr:`capacity`. Used on the event loop's thread; :meth:`admit` hands out a release
    function that any thread may call."""

    def __init__(self, backlog: int) -> None:
        self.capacity = accept_queue_capacity(backlog)
        self.pending = 0
        """Connections admitted and not yet accepted or ended."""
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        """Connections waiting for room."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def resize(self, backlog: int) -> None:
        """The app called ``listen`` again with another backlog."""
        self.capacity = accept_queue_capacity(backlog)
        self._wake()

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[Callable[[], None]]:
        """Wait for room, then hold it until the block ends or the function it yields
        (thread-safe, idempotent) is called: call it once the app accepted."""
        loop = asyncio.get_running_loop()
        while self.pending >= self.capacity:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # A wake-up meant for this waiter must not be lost with it.
                if waiter.done() and not waiter.cancelled():
                    self._wake()
                raise
        self.pending += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.pending -= 1
                self._wake()

        def release_threadsafe() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
                loop.call_soon_threadsafe(release)

        try:
            yield release_threadsafe
        finally:
            release()

    def _wake(self) -> None:
        room = self.capacity - self.pending
        while room > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1
