"""Incoming traffic of the user's process: the target's connections reach its listeners.

The handler traps ``listen``: the supervisor performs the ``listen`` on a duplicate of the
tracee's socket (``pidfd_getfd``), learns the bound port, maps it through
``port_mapping`` and subscribes the remote port at the agent in the configured mode
before ``listen`` returns — so once the app is listening, traffic is already arriving.
Loopback-only listeners are left alone with ``incoming.ignore_localhost``.

Connections arrive through :mod:`mirrord_network.local.incoming_relay`, which connects to
the listener from loopback. So that the app sees its real client, ``accept``/``accept4``
on a subscribed listener are carried out by the supervisor: it accepts on the duplicate,
writes the remote client's address where the app asked for the peer address, and installs
the new socket in the app (``SECCOMP_ADDFD_FLAG_SEND``); ``getpeername`` of such a socket
reports the same client. On a blocking listener the accept waits on a thread of its own.
An accepted connection the app cannot take after all (its descriptor table is full, or its
accept was interrupted) is not closed: it goes back to the listener, and the app's next
accept gets it first, as the kernel's queue would have kept it.

A subscription ends when its listener is closed (checked every second through
``/proc/net/tcp``: the kernel lists every listening socket of this network namespace
with its inode) or when ``mirrord run`` ends, which closes the session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import logging
import os
import select
import socket
import threading
from collections.abc import Coroutine, Mapping
from typing import Any

import attrs

from mirrord_core.interception import (
    DEFERRED,
    Answer,
    Errno,
    Notification,
    TraceeMemoryError,
    Value,
)
from mirrord_core.interception.pending_signals import deliverable_signal_pending
from mirrord_core.protocol import Stream
from mirrord_core.session import Session, SessionError
from mirrord_network.local.accept_gate import AcceptGate
from mirrord_network.local.incoming_relay import (
    LocalListener,
    PeerBook,
    relay_incoming,
    relay_key,
)
from mirrord_network.local.outgoing_handlers import duplicate_socket, socket_inode
from mirrord_network.local.sockaddr import (
    InetAddress,
    encode_inet,
    write_address,
)
from mirrord_network.messages import (
    INCOMING_CONNECTION_STREAM,
    INCOMING_SUBSCRIBE_STREAM,
    IncomingConnection,
    Subscribe,
)

log = logging.getLogger("mirrord")

_TCP_LISTEN = "0A"
#: How often subscriptions check that their listener still exists.
LISTENER_CHECK_INTERVAL = 1.0
#: How long a blocking accept sleeps between checks that the tracee still waits.
ACCEPT_POLL_MS = 100
SUBSCRIBE_TIMEOUT = 30.0
_SOCK_NONBLOCK = 0o4000
_SOCK_CLOEXEC = 0o2000000


@attrs.frozen(kw_only=True)
class IncomingOptions:
    """What ``feature.network.incoming`` (and ``agent.flush_connections``) ask for."""

    mode: str
    port_mapping: Mapping[int, int] = attrs.field(factory=dict)
    ignore_localhost: bool = False
    header_filter: str | None = None
    http_ports: tuple[int, ...] = (80, 8080)
    flush_connections: bool = False


@attrs.frozen
class _AcceptRequest:
    """One accept of the app on a subscribed listener, carried out by the supervisor."""

    notification: Notification
    listener_inode: int
    flags: int
    address_pointer: int
    length_pointer: int


@attrs.define
class Subscription:
    """A remote port subscribed for one of the app's listeners."""

    remote_port: int
    listener: LocalListener
    inode: int
    stream: Stream | None = None
    task: asyncio.Task[None] | None = None


def listening_inodes() -> set[int]:
    """Inodes of every TCP socket listening in this network namespace."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == _TCP_LISTEN:
                        inodes.add(int(fields[9]))
        except OSError:
            continue
    return inodes


def _normalize(host: str) -> str:
    return host.removeprefix("::ffff:")


class IncomingTraffic:
    """The syscall handler of incoming traffic (one per ``mirrord run``)."""

    syscalls = frozenset({"listen", "accept", "accept4", "getpeername"})

    def __init__(
        self, session: Session, loop: asyncio.AbstractEventLoop, options: IncomingOptions
    ) -> None:
        self.session = session
        self.loop = loop
        self.options = options
        self._lock = threading.Lock()
        #: Subscriptions by remote port (a listener replaced by a new one keeps the port).
        self._by_port: dict[int, Subscription] = {}
        #: Inodes of the subscribed listeners (the notification thread's fast check).
        self._listener_inodes: set[int] = set()
        #: Sockets the supervisor accepted for the app, by inode → the real client.
        self._accepted: dict[int, InetAddress] = {}
        #: Connections accepted for the app that it could not take, by listener inode.
        self._returned: dict[int, collections.deque[socket.socket]] = {}
        self._peers = PeerBook()
        self._futures: set[Any] = set()
        self._watcher: asyncio.Task[None] | None = None
        session.serve_streams(INCOMING_CONNECTION_STREAM, self._serve_connection)

    def __repr__(self) -> str:
        return f"<IncomingTraffic mode={self.options.mode}>"

    # -- dispatch ----------------------------------------------------------------------

    def handle(self, notification: Notification) -> Answer | None:
        try:
            syscall = notification.syscall
            if syscall == "listen":
                return self._listen(notification)
            if syscall in ("accept", "accept4"):
                return self._accept(notification)
            if syscall == "getpeername":
                return self._getpeername(notification)
        except (TraceeMemoryError, ProcessLookupError):
            return None
        return None

    # -- listen ------------------------------------------------------------------------

    def _listen(self, notification: Notification) -> Answer | None:
        fd, backlog = notification.args[:2]
        duplicate = duplicate_socket(notification, fd)
        if duplicate is None:
            return None
        with duplicate:
            if duplicate.type != socket.SOCK_STREAM or duplicate.family not in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                return None
            backlog = backlog & 0xFFFFFFFF
            if backlog >= 0x80000000 or backlog > 65535:
                backlog = socket.SOMAXCONN  # the kernel clamps negative/huge backlogs too
            try:
                duplicate.listen(backlog)
            except OSError as err:
                return Errno(err.errno or errno.EINVAL)
            host, port = duplicate.getsockname()[:2]
            family = duplicate.family
        inode = socket_inode(notification.pid, fd)
        address = InetAddress(_normalize(host), port, family)
        if inode is None or (self.options.ignore_localhost and address.is_loopback):
            return Value(0)
        with self._lock:
            if inode in self._listener_inodes:
                # listen again on a subscribed socket: only the backlog changes.
                for subscription in self._by_port.values():
                    if subscription.inode == inode:
                        gate = subscription.listener.gate
                        self.loop.call_soon_threadsafe(gate.resize, backlog)
                return Value(0)
        remote_port = self.options.port_mapping.get(port, port)
        listener = LocalListener(address, family, AcceptGate(backlog))
        self._submit(self._subscribe(notification, remote_port, listener, inode), notification)
        return DEFERRED

    async def _subscribe(
        self, notification: Notification, remote_port: int, listener: LocalListener, inode: int
    ) -> None:
        with self._lock:
            existing = self._by_port.get(remote_port)
            if existing is not None:
                # The app replaced the listener of a port (closed and listened again): the
                # subscription carries on for the new socket.
                self._drop_listener(existing.inode)
                existing.listener, existing.inode = listener, inode
                self._listener_inodes.add(inode)
        if existing is not None:
            notification.respond_value(0)
            return
        subscription = Subscription(remote_port=remote_port, listener=listener, inode=inode)
        with self._lock:
            self._by_port[remote_port] = subscription
            self._listener_inodes.add(inode)
        options = self.options
        try:
            subscription.stream = await self.session.open_stream(
                INCOMING_SUBSCRIBE_STREAM,
                Subscribe(
                    port=remote_port,
                    mode=options.mode,
                    header_filter=options.header_filter,
                    http_ports=list(options.http_ports),
                    flush_connections=options.flush_connections,
                ),
                timeout=SUBSCRIBE_TIMEOUT,
            )
        except (SessionError, OSError, TimeoutError) as err:
            self._forget(subscription)
            log.warning(
                "mirrord: port %d of the target is not %s: %s",
                remote_port,
                "stolen" if options.mode == "steal" else "mirrored",
                err,
            )
        else:
            subscription.task = asyncio.current_task()
            self._ensure_watcher()
        finally:
            notification.respond_value(0)
        if subscription.stream is not None:
            await self._hold(subscription)

    async def _hold(self, subscription: Subscription) -> None:
        """Keep the subscription until the agent ends it or the listener goes away."""
        stream = subscription.stream
        assert stream is not None
        try:
            while await stream.read():
                pass
            log.warning(
                "mirrord: the agent ended the subscription of port %d", subscription.remote_port
            )
        except asyncio.CancelledError:
            pass
        except Exception as err:  # the stream's failures: reset, session lost
            log.debug("subscription of port %d ended: %s", subscription.remote_port, err)
        finally:
            self._forget(subscription)
            await stream.close()

    def _forget(self, subscription: Subscription) -> None:
        with self._lock:
            if self._by_port.get(subscription.remote_port) is subscription:
                del self._by_port[subscription.remote_port]
            self._drop_listener(subscription.inode)

    def _drop_listener(self, inode: int) -> None:
        """Forget a listener (with the lock held), closing the connections it got back
        for the app: with the listener, the kernel would have reset them too."""
        self._listener_inodes.discard(inode)
        for connection in self._returned.pop(inode, ()):
            connection.close()

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = self.loop.create_task(self._watch_listeners())

    async def _watch_listeners(self) -> None:
        while True:
            await asyncio.sleep(LISTENER_CHECK_INTERVAL)
            with self._lock:
                subscriptions = list(self._by_port.values())
            if not subscriptions:
                return
            alive = await asyncio.to_thread(listening_inodes)
            for subscription in subscriptions:
                if subscription.inode not in alive and subscription.task is not None:
                    subscription.task.cancel()

    # -- connections from the agent ----------------------------------------------------

    async def _serve_connection(self, stream: Stream, info: IncomingConnection) -> None:
        with self._lock:
            subscription = self._by_port.get(info.port)
        if subscription is None:
            raise OSError(errno.ECONNREFUSED, f"port {info.port} is not subscribed")
        await relay_incoming(stream, info, subscription.listener, self._peers)

    # -- accept ------------------------------------------------------------------------

    def _accept(self, notification: Notification) -> Answer | None:
        fd, address_pointer, length_pointer = notification.args[:3]
        flags = notification.args[3] if notification.syscall == "accept4" else 0
        with self._lock:
            if not self._listener_inodes:
                return None
        inode = socket_inode(notification.pid, fd)
        with self._lock:
            if inode is None or inode not in self._listener_inodes:
                return None
        duplicate = duplicate_socket(notification, fd)
        if duplicate is None:
            return None
        request = _AcceptRequest(notification, inode, flags, address_pointer, length_pointer)
        if fcntl.fcntl(duplicate.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK:
            with duplicate:
                while True:
                    accepted = self._take_returned(inode)
                    if accepted is None:
                        try:
                            accepted, _ = duplicate.accept()
                        except BlockingIOError:
                            return Errno(errno.EAGAIN)
                        except OSError as err:
                            return Errno(err.errno or errno.EINVAL)
                    answer = self._hand_over(request, accepted)
                    if answer is not None:
                        return answer
        # A blocking listener: wait on a thread of its own, not on the notification thread.
        thread = threading.Thread(
            target=self._accept_blocking,
            args=(request, duplicate),
            name="mirrord accept",
            daemon=True,
        )
        thread.start()
        return DEFERRED

    def _accept_blocking(self, request: _AcceptRequest, duplicate: socket.socket) -> None:
        notification = request.notification
        answer: Answer | None = None
        with duplicate:
            poller = select.poll()
            poller.register(duplicate.fileno(), select.POLLIN)
            while answer is None:
                accepted = self._take_returned(request.listener_inode)
                if accepted is None:
                    ready = poller.poll(ACCEPT_POLL_MS)
                    # Also checked when a connection is ready: one accepted for a tracee
                    # that no longer waits would only have to go back.
                    if not notification.is_valid():
                        return  # the tracee was killed while waiting
                    if not ready:
                        if deliverable_signal_pending(notification.pid):
                            answer = Errno(errno.EINTR)  # Ctrl-C and friends get through
                            break
                        continue
                    try:
                        accepted, _ = duplicate.accept()
                    except OSError as err:
                        answer = Errno(err.errno or errno.EINVAL)
                        break
                answer = self._hand_over(request, accepted)
        with contextlib.suppress(OSError):
            answer.deliver(notification)

    def _hand_over(self, request: _AcceptRequest, accepted: socket.socket) -> Answer | None:
        """Make ``accepted`` the result of the app's accept, reporting the real client as
        its peer. A connection the app cannot take goes back to the listener; ``None``
        when it was reset before the app got it (it is dropped: accept the next one)."""
        notification = request.notification
        try:
            peer = accepted.getpeername()
        except OSError:
            accepted.close()
            return None
        try:
            client = self._peers.claim(relay_key(peer))
            if client is not None:
                with self._lock:
                    self._accepted[os.fstat(accepted.fileno()).st_ino] = client
                    if len(self._accepted) > 4096:
                        self._accepted.pop(next(iter(self._accepted)))
            reported = client or InetAddress(_normalize(str(peer[0])), int(peer[1]))
            if request.address_pointer and request.length_pointer:
                write_address(
                    notification,
                    encode_inet(reported, accepted.family),
                    request.address_pointer,
                    request.length_pointer,
                )
        except (TraceeMemoryError, ProcessLookupError):
            # Like the kernel when it cannot write the address: the connection is dropped.
            accepted.close()
            return Errno(errno.EFAULT)
        except BaseException:
            accepted.close()
            raise
        accepted.setblocking(not request.flags & _SOCK_NONBLOCK)
        cloexec = bool(request.flags & _SOCK_CLOEXEC)
        try:
            installed = notification.inject_fd(accepted.fileno(), cloexec=cloexec) is not None
        except BaseException:
            accepted.close()
            raise
        if installed:
            accepted.close()
        else:
            # The app did not get it (a full descriptor table fails its accept with
            # EMFILE, as the kernel's would; or it stopped waiting): it stays queued.
            self._give_back(request.listener_inode, accepted)
        return DEFERRED  # answered by the injection

    def _take_returned(self, listener_inode: int) -> socket.socket | None:
        with self._lock:
            returned = self._returned.get(listener_inode)
            return returned.popleft() if returned else None

    def _give_back(self, listener_inode: int, accepted: socket.socket) -> None:
        with self._lock:
            if listener_inode in self._listener_inodes:
                self._returned.setdefault(listener_inode, collections.deque()).append(accepted)
                return
        accepted.close()  # the listener is gone: so is its queue

    # -- getpeername -------------------------------------------------------------------

    def _getpeername(self, notification: Notification) -> Answer | None:
        fd, pointer, length_pointer = notification.args[:3]
        with self._lock:
            if not self._accepted:
                return None
        inode = socket_inode(notification.pid, fd)
        with self._lock:
            client = self._accepted.get(inode) if inode is not None else None
        if client is None:
            return None
        duplicate = duplicate_socket(notification, fd)
        if duplicate is None:
            return None
        with duplicate:
            family = duplicate.family
        write_address(notification, encode_inet(client, family), pointer, length_pointer)
        return Value(0)

    # -- plumbing ----------------------------------------------------------------------

    def _submit(self, coroutine: Coroutine[Any, Any, None], notification: Notification) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        self._futures.add(future)

        def done(finished: Any) -> None:
            self._futures.discard(finished)
            error = None if finished.cancelled() else finished.exception()
            if error is not None:
                log.error("incoming traffic handler failed on %r", notification, exc_info=error)
            if not notification.answered:
                with contextlib.suppress(OSError):
                    notification.respond_value(0)

        future.add_done_callback(done)

    def close(self) -> None:
        """End every subscription (called after the command ended, from any thread)."""

        def cancel_all() -> None:
            for future in list(self._futures):
                future.cancel()
            if self._watcher is not None:
                self._watcher.cancel()

        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(cancel_all)


def incoming_options(config: Any) -> IncomingOptions | None:
    """The incoming options of a resolved config, or ``None`` when incoming is off."""
    incoming = config.feature.network.incoming
    mode = incoming.mode.value
    if mode == "off":
        return None
    return IncomingOptions(
        mode=mode,
        port_mapping={int(local): int(remote) for local, remote in incoming.port_mapping},
        ignore_localhost=incoming.ignore_localhost,
        header_filter=(
            str(incoming.http_filter.header_filter)
            if incoming.http_filter.header_filter is not None
            else None
        ),
        http_ports=tuple(int(p) for p in incoming.http_filter.ports),
        flush_connections=bool(config.agent.flush_connections),
    )
