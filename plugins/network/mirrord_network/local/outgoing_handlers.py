"""Outgoing traffic of the user's process, made from the target (DESIGN §7).

The handler traps ``connect`` (and, for UDP, ``sendto``/``sendmsg`` on unconnected
sockets and ``recvfrom``/``recvmsg`` of redirected sockets) and decides per destination:

- AF_INET/AF_INET6 destinations are **remote**, except loopback when ``ignore_localhost``
  is set, loopback ports that the calling process itself listens on (mirrord 3.32), and
  port 53 when remote DNS is off (names then resolve with this machine's nameservers);
  other families stay local. With remote DNS on, port 53 is remote even when outgoing
  TCP/UDP are off (the resolver's queries must reach the pod's nameserver), and
  connecting to the nscd socket fails with ENOENT, so glibc asks the (target's)
  nameservers itself.
- AF_UNIX stream sockets whose path (or abstract name, without its leading NUL) one of
  the ``unix_streams`` regexes matches are connected in the target through a
  ``net.unix_connect`` stream (the agent resolves the path inside the target's root);
  the tracee's socket is connected to a unix relay in a private local directory. Other
  unix sockets stay local.
- For a remote TCP destination the supervisor first opens a ``net.tcp_connect`` stream
  through the session (on the event loop; the notification is answered later). If the
  target refuses or cannot reach the destination, the tracee's ``connect`` fails with the
  same errno — even on a non-blocking socket, where a real kernel would answer
  ``EINPROGRESS`` and report the error through ``SO_ERROR`` later; both are valid results
  of ``connect`` and every client handles them. On success, a loopback relay is started
  and the supervisor connects a duplicate of the tracee's socket (``pidfd_getfd``) to it,
  then answers 0, or ``EINPROGRESS`` for a non-blocking socket.
- A remote UDP destination gets a loopback UDP relay per (socket, destination) that
  forwards datagrams to a ``net.udp`` socket in the target. ``connect`` connects the
  tracee's socket to the relay; ``sendto``/``sendmsg`` to the destination are sent to the
  relay from a duplicate of the tracee's socket. Receiving calls that ask for the sender's
  address on such sockets are carried out by the supervisor so that the sender reads as
  the original destination (glibc's and musl's resolvers drop answers that do not come
  from the configured nameserver).
- ``getpeername`` of a redirected socket reports the original destination (or path).

Sockets are identified by their inode (``/proc/PID/fd/N`` → ``socket:[ino]``), which the
kernel never reuses while the socket lives, so fd reuse cannot confuse the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
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
from mirrord_core.protocol import Stream
from mirrord_core.session import Session, SessionError
from mirrord_network.local.relays import TcpRelay, UdpRelay
from mirrord_network.local.remote_network import RemoteDatagrams, connect_tcp, connect_unix
from mirrord_network.local.sockaddr import (
    MAX_SOCKADDR,
    InetAddress,
    encode_inet,
    encode_unix,
    family_of,
    parse_inet,
    parse_unix_path,
    python_address,
    write_address,
)
from mirrord_network.local.unix_relay import RelayDirectory, UnixStreamRelay

log = logging.getLogger(__name__)

#: Where glibc's nscd client connects; denied with DNS on so that answers come from the pod.
NSCD_SOCKETS = frozenset({b"/var/run/nscd/socket", b"/run/nscd/socket"})
DNS_PORT = 53
_MSGHDR = struct.Struct("=QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags
_IOVEC = struct.Struct("=QQ")
_MAX_IOV = 1024
_TCP_LISTEN = "0A"


@attrs.define
class Redirected:
    """A tracee socket that the supervisor connected to a relay."""

    #: The original destination as a sockaddr, as ``getpeername`` reports it.
    peer: bytes
    #: The UDP relay a connected UDP socket sends to (``None`` for streams).
    relay: UdpRelay | None = None


@attrs.frozen
class _StreamPlan:
    """How one remote stream connection (TCP or unix) is made and relayed."""

    description: str
    #: Opens the stream in the target (``OSError`` carries connect's errno).
    open: Callable[[], Awaitable[Stream]]
    relay: Callable[[Stream], TcpRelay]
    #: Where the tracee's socket connects to reach the relay.
    relay_address: Callable[[Any], Any]
    #: The sockaddr ``getpeername`` reports.
    peer: bytes
    #: The errno of a lost session.
    unreachable: int


def socket_inode(pid: int, fd: int) -> int | None:
    """The inode of the tracee's socket ``fd``, or ``None`` if ``fd`` is not a socket."""
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    if not link.startswith("socket:["):
        return None
    return int(link[8:-1])


def holds_socket(tgid: int, inode: int) -> bool:
    """Whether the process ``tgid`` still has the socket ``inode`` open."""
    link = f"socket:[{inode}]"
    try:
        entries = os.listdir(f"/proc/{tgid}/fd")
    except OSError:
        return False
    for entry in entries:
        try:
            if os.readlink(f"/proc/{tgid}/fd/{entry}") == link:
                return True
        except OSError:
            continue
    return False


def listening_locally(tgid: int, port: int) -> bool:
    """Whether the process ``tgid`` itself has a TCP socket listening on ``port``."""
    inodes: set[str] = set()
    wanted = f"{port:04X}"
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{tgid}/net/{table}") as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if (
                        len(fields) > 9
                        and fields[3] == _TCP_LISTEN
                        and fields[1].rsplit(":", 1)[1] == wanted
                    ):
                        inodes.add(fields[9])
        except OSError:
            continue
    if not inodes:
        return False
    links = {f"socket:[{inode}]" for inode in inodes}
    try:
        entries = os.listdir(f"/proc/{tgid}/fd")
    except OSError:
        return False
    for entry in entries:
        try:
            if os.readlink(f"/proc/{tgid}/fd/{entry}") in links:
                return True
        except OSError:
            continue
    return False


def duplicate_socket(notification: Notification, fd: int) -> socket.socket | None:
    """The tracee's socket ``fd`` (``pidfd_getfd``), or ``None`` when it is not one (the
    syscall then runs natively and fails as the kernel decides)."""
    try:
        duplicate = notification.pidfd_getfd(fd)
    except OSError:
        return None
    try:
        return socket.socket(fileno=duplicate)
    except OSError:
        os.close(duplicate)
        return None


def _normalize(address: tuple[Any, ...]) -> tuple[str, int]:
    host = str(address[0])
    return (host.removeprefix("::ffff:"), int(address[1]))


def _is_nonblocking(sock: socket.socket) -> bool:
    return bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)


def compile_unix_streams(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regex searching for any of ``patterns`` (``None`` when there are none)."""
    patterns = list(patterns)
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))


def unix_stream_name(path: bytes) -> str:
    """What the ``unix_streams`` regexes are matched against, as mirrord does: the path,
    or an abstract name without its leading NUL, non-UTF-8 bytes replaced."""
    return (path[1:] if path[:1] == b"\0" else path).decode("utf-8", "replace")


class OutgoingTraffic:
    """The syscall handler of outgoing TCP and UDP (one per ``mirrord run``)."""

    def __init__(
        self,
        session: Session,
        loop: asyncio.AbstractEventLoop,
        *,
        tcp: bool = True,
        udp: bool = True,
        ignore_localhost: bool = False,
        remote_dns: bool = True,
        unix_streams: Iterable[str] = (),
    ) -> None:
        self.session = session
        self.loop = loop
        self.tcp = tcp
        self.udp = udp
        self.ignore_localhost = ignore_localhost
        #: With remote DNS, the nscd socket is refused; without, port 53 stays local.
        self.remote_dns = remote_dns
        #: Unix socket paths connected in the target (``None``: all stay local).
        self.unix_streams = compile_unix_streams(unix_streams)
        names = {"connect"}
        if tcp or udp or remote_dns or self.unix_streams is not None:
            names.add("getpeername")
        if udp or remote_dns:
            names |= {"sendto", "sendmsg", "recvfrom", "recvmsg"}
        self.syscalls = frozenset(names)
        #: Without an address argument, sendto and recvfrom are the socket's own business
        #: (every send/recv of a TCP socket): not trapped (_sendto, _recvfrom answer None).
        self.trap_only_if_set = {"sendto": 4, "recvfrom": 4}
        self._lock = threading.Lock()
        #: Redirected sockets by inode (getpeername, and receive-side address rewriting).
        self._redirected: dict[int, Redirected] = {}
        #: UDP relays of unconnected sockets: inode → destination → relay.
        self._udp_relays: dict[int, dict[InetAddress, UdpRelay]] = {}
        #: Every UDP relay's address → the destination it stands for.
        self._relay_origins: dict[tuple[str, int], InetAddress] = {}
        #: UDP sockets whose received datagrams may come from a relay.
        self._udp_sockets: set[int] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._relays: set[UdpRelay] = set()
        self._unix_relays = RelayDirectory()
        self._closed = False

    def __repr__(self) -> str:
        return f"<OutgoingTraffic tcp={self.tcp} udp={self.udp}>"

    # -- dispatch ----------------------------------------------------------------------

    def handle(self, notification: Notification) -> Answer | None:
        try:
            return self._handle(notification)
        except (TraceeMemoryError, ProcessLookupError):
            # A bad pointer (the kernel reports EFAULT when the syscall runs), or a
            # tracee that is gone.
            return None

    def _handle(self, notification: Notification) -> Answer | None:
        syscall = notification.syscall
        if syscall == "connect":
            return self._connect(notification)
        if syscall == "getpeername":
            return self._getpeername(notification)
        if syscall == "recvfrom":
            return self._recvfrom(notification)
        if syscall == "sendto":
            return self._sendto(notification)
        if syscall == "sendmsg":
            return self._sendmsg(notification)
        if syscall == "recvmsg":
            return self._recvmsg(notification)
        return None

    # -- deciding ----------------------------------------------------------------------

    def _remote_destination(self, notification: Notification, data: bytes) -> InetAddress | None:
        address = parse_inet(data)
        if address is None or address.port == 0 or address.is_unspecified:
            return None
        if address.port == DNS_PORT and not self.remote_dns:
            return None  # DNS off: names resolve with this machine's nameservers
        if address.is_loopback:
            if self.ignore_localhost:
                return None
            if listening_locally(notification.tgid, address.port):
                return None
        return address

    # -- connect -----------------------------------------------------------------------

    def _connect(self, notification: Notification) -> Answer | None:
        fd, pointer, length = notification.args[:3]
        if length < 2 or pointer == 0:
            return None
        data = notification.read_memory(pointer, min(length, MAX_SOCKADDR))
        family = family_of(data)
        if family == socket.AF_UNIX:
            path = parse_unix_path(data)
            if self.remote_dns and path in NSCD_SOCKETS:
                return Errno(errno.ENOENT)
            if path and self.unix_streams and self.unix_streams.search(unix_stream_name(path)):
                return self._connect_remote_unix(notification, fd, path)
            return None
        if family not in (socket.AF_INET, socket.AF_INET6):
            return None
        destination = self._remote_destination(notification, data)
        if destination is None:
            return None
        dns = self.remote_dns and destination.port == DNS_PORT
        if not (self.tcp or self.udp or dns):
            return None
        duplicate = duplicate_socket(notification, fd)
        if duplicate is None:
            return None
        try:
            kind = duplicate.type
            if kind == socket.SOCK_STREAM and (self.tcp or dns):
                coroutine: Coroutine[Any, Any, None] = self._connect_tcp(
                    notification, duplicate, destination
                )
            elif kind == socket.SOCK_DGRAM and (self.udp or dns):
                coroutine = self._connect_udp(notification, duplicate, destination)
            else:
                duplicate.close()
                return None
        except BaseException:
            duplicate.close()
            raise
        self._submit(coroutine, notification)
        return DEFERRED

    async def _connect_tcp(
        self, notification: Notification, duplicate: socket.socket, destination: InetAddress
    ) -> None:
        relay_family = (
            socket.AF_INET6
            if duplicate.family == socket.AF_INET6 and ":" in destination.host
            else socket.AF_INET
        )
        await self._connect_stream(
            notification,
            duplicate,
            _StreamPlan(
                description=str(destination),
                open=lambda: connect_tcp(self.session, destination.host, destination.port),
                relay=lambda stream: TcpRelay(stream, relay_family),
                relay_address=lambda relay: python_address(
                    InetAddress(*relay.address), duplicate.family
                ),
                peer=encode_inet(destination, duplicate.family),
                unreachable=errno.ENETUNREACH,
            ),
        )

    def _connect_remote_unix(
        self, notification: Notification, fd: int, path: bytes
    ) -> Answer | None:
        duplicate = duplicate_socket(notification, fd)
        if duplicate is None:
            return None
        if duplicate.type != socket.SOCK_STREAM:
            duplicate.close()  # datagram and seqpacket unix sockets stay local (mirrord)
            return None
        abstract = path[:1] == b"\0"
        plan = _StreamPlan(
            description=f"unix socket {path!r}",
            open=lambda: connect_unix(
                self.session, path[1:] if abstract else path, abstract=abstract
            ),
            relay=lambda stream: UnixStreamRelay(stream, self._unix_relays.new_path()),
            relay_address=lambda relay: relay.path,
            peer=encode_unix(path),
            unreachable=errno.ECONNREFUSED,
        )
        self._submit(self._connect_stream(notification, duplicate, plan), notification)
        return DEFERRED

    async def _connect_stream(
        self, notification: Notification, duplicate: socket.socket, plan: _StreamPlan
    ) -> None:
        """Open the stream in the target, connect the tracee's socket to a relay of it,
        answer the ``connect``, then pipe until the connection ends."""
        with duplicate:
            try:
                stream = await plan.open()
            except OSError as error:
                log.debug("connect to %s in the target failed: %s", plan.description, error)
                notification.respond_errno(error.errno or errno.ECONNREFUSED)
                return
            except SessionError as error:
                log.warning("connect to %s: %s", plan.description, error)
                notification.respond_errno(plan.unreachable)
                return
            try:
                relay = plan.relay(stream)
            except OSError as error:
                await stream.close()
                notification.respond_errno(error.errno or plan.unreachable)
                return
            inode = socket_inode(notification.pid, notification.args[0])
            # A unix connect to a listener with room in its backlog completes at once,
            # blocking socket or not; a non-blocking TCP one may answer EINPROGRESS.
            result = duplicate.connect_ex(plan.relay_address(relay))
            if isinstance(relay, UnixStreamRelay):
                relay.unlink()  # connected (or failed): nobody else may use the path
            if result not in (0, errno.EINPROGRESS):
                relay.listener.close()
                await stream.close()
                notification.respond_errno(result)
                return
            if inode is not None:
                with self._lock:
                    self._redirected[inode] = Redirected(plan.peer)
            if result == 0:
                notification.respond_value(0)
            else:
                notification.respond_errno(errno.EINPROGRESS)
        try:
            await relay.run()
        finally:
            if inode is not None:
                with self._lock:
                    self._redirected.pop(inode, None)

    async def _connect_udp(
        self, notification: Notification, duplicate: socket.socket, destination: InetAddress
    ) -> None:
        with duplicate:
            inode = socket_inode(notification.pid, notification.args[0])
            try:
                relay = await self._udp_relay(destination, notification.tgid, inode)
            except OSError as error:
                notification.respond_errno(error.errno or errno.ENETUNREACH)
                return
            except SessionError as error:
                log.warning("UDP to %s: %s", destination, error)
                notification.respond_errno(errno.ENETUNREACH)
                return
            result = duplicate.connect_ex(
                python_address(InetAddress(*relay.address), duplicate.family)
            )
            if result != 0:
                await relay.close()
                notification.respond_errno(result)
                return
            if inode is not None:
                with self._lock:
                    peer = encode_inet(destination, duplicate.family)
                    self._redirected[inode] = Redirected(peer, relay)
                    self._udp_sockets.add(inode)
            notification.respond_value(0)

    async def _udp_relay(self, destination: InetAddress, tgid: int, inode: int | None) -> UdpRelay:
        remote = await RemoteDatagrams.connect(self.session, destination.host, destination.port)
        family = socket.AF_INET6 if ":" in destination.host else socket.AF_INET

        def in_use() -> bool:
            return inode is not None and holds_socket(tgid, inode)

        try:
            relay = UdpRelay(remote, family, in_use)
        except BaseException:
            await remote.close()
            raise
        with self._lock:
            self._relay_origins[_normalize(relay.address)] = destination
            self._relays.add(relay)
        task = relay.start()
        self._tasks.add(task)

        def forget(_: object) -> None:
            self._tasks.discard(task)
            with self._lock:
                self._relay_origins.pop(_normalize(relay.address), None)
                self._relays.discard(relay)
                relays = self._udp_relays.get(inode) if inode is not None else None
                if relays is not None:
                    for key, value in list(relays.items()):
                        if value is relay:
                            del relays[key]
                    if not relays:
                        del self._udp_relays[inode]  # type: ignore[arg-type]
                if inode is not None and not self._udp_relays.get(inode):
                    redirected = self._redirected.get(inode)
                    if redirected is None or redirected.relay is relay:
                        self._redirected.pop(inode, None)
                        self._udp_sockets.discard(inode)

        task.add_done_callback(forget)
        return relay

    # -- getpeername -------------------------------------------------------------------

    def _getpeername(self, notification: Notification) -> Answer | None:
        if not self._redirected:
            return None
        fd, pointer, length_pointer = notification.args[:3]
        inode = socket_inode(notification.pid, fd)
        with self._lock:
            redirected = self._redirected.get(inode) if inode is not None else None
        if redirected is None:
            return None
        write_address(notification, redirected.peer, pointer, length_pointer)
        return Value(0)

    # -- UDP without connect -----------------------------------------------------------

    def _sendto(self, notification: Notification) -> Answer | None:
        fd, buffer, size, flags, pointer, length = notification.args[:6]
        if pointer == 0 or length < 2:
            return None
        data = notification.read_memory(pointer, min(length, MAX_SOCKADDR))
        return self._send_unconnected(notification, fd, data, [(buffer, size)], flags)

    def _sendmsg(self, notification: Notification) -> Answer | None:
        fd, header_pointer, flags = notification.args[:3]
        header = _MSGHDR.unpack(notification.read_memory(header_pointer, _MSGHDR.size))
        name, name_length, iov, iov_length, _control, control_length, _ = header
        if name == 0 or name_length < 2 or control_length:
            return None
        if iov_length > _MAX_IOV:
            return None
        data = notification.read_memory(name, min(name_length, MAX_SOCKADDR))
        vectors = [
            _IOVEC.unpack(notification.read_memory(iov + i * _IOVEC.size, _IOVEC.size))
            for i in range(iov_length)
        ]
        return self._send_unconnected(notification, fd, data, vectors, flags)

    def _send_unconnected(
        self,
        notification: Notification,
        fd: int,
        address: bytes,
        vectors: list[tuple[int, int]],
        flags: int,
    ) -> Answer | None:
        if family_of(address) not in (socket.AF_INET, socket.AF_INET6):
            return None
        destination = self._remote_destination(notification, address)
        if destination is None or not (
            self.udp or (self.remote_dns and destination.port == DNS_PORT)
        ):
            return None
        inode = socket_inode(notification.pid, fd)
        if inode is None:
            return None
        duplicate = duplicate_socket(notification, fd)
        if duplicate is None:
            return None
        if duplicate.type != socket.SOCK_DGRAM:
            duplicate.close()
            return None
        payload = b"".join(notification.read_memory(base, size) for base, size in vectors if size)
        with self._lock:
            relay = self._udp_relays.get(inode, {}).get(destination)
        if relay is not None and not relay.closed:
            with duplicate:
                return self._send_to_relay(duplicate, payload, flags, relay)

        async def later() -> None:
            with duplicate:
                try:
                    relay = await self._udp_relay(destination, notification.tgid, inode)
                except OSError as error:
                    notification.respond_errno(error.errno or errno.ENETUNREACH)
                    return
                except SessionError:
                    notification.respond_errno(errno.ENETUNREACH)
                    return
                with self._lock:
                    self._udp_relays.setdefault(inode, {})[destination] = relay
                    self._udp_sockets.add(inode)
                self._send_to_relay(duplicate, payload, flags, relay).deliver(notification)

        self._submit(later(), notification)
        return DEFERRED

    @staticmethod
    def _send_to_relay(
        duplicate: socket.socket, payload: bytes, flags: int, relay: UdpRelay
    ) -> Answer:
        try:
            sent = duplicate.sendto(
                payload,
                flags | socket.MSG_DONTWAIT,
                python_address(InetAddress(*relay.address), duplicate.family),
            )
        except OSError as error:
            return Errno(error.errno or errno.EIO)
        return Value(sent)

    # -- receiving from a relay --------------------------------------------------------

    def _recvfrom(self, notification: Notification) -> Answer | None:
        fd, buffer, size, flags, pointer, length_pointer = notification.args[:6]
        if pointer == 0 or not self._udp_sockets:
            return None
        return self._receive(notification, fd, [(buffer, size)], flags, pointer, length_pointer)

    def _recvmsg(self, notification: Notification) -> Answer | None:
        if not self._udp_sockets:
            return None
        fd, header_pointer, flags = notification.args[:3]
        header = _MSGHDR.unpack(notification.read_memory(header_pointer, _MSGHDR.size))
        name, _name_length, iov, iov_length, _control, control_length, _ = header
        if name == 0 or control_length or iov_length > _MAX_IOV:
            return None
        vectors = [
            _IOVEC.unpack(notification.read_memory(iov + i * _IOVEC.size, _IOVEC.size))
            for i in range(iov_length)
        ]
        # msg_namelen sits at offset 8 of struct msghdr.
        return self._receive(notification, fd, vectors, flags, name, header_pointer + 8)

    def _receive(
        self,
        notification: Notification,
        fd: int,
        vectors: list[tuple[int, int]],
        flags: int,
        pointer: int,
        length_pointer: int,
    ) -> Answer | None:
        inode = socket_inode(notification.pid, fd)
        if inode is None or inode not in self._udp_sockets:
            return None
        duplicate = duplicate_socket(notification, fd)
        if duplicate is None:
            return None
        size = sum(length for _, length in vectors)
        answer = self._try_receive(
            notification, duplicate, vectors, size, flags, pointer, length_pointer
        )
        if answer is not None:
            duplicate.close()
            return answer
        if flags & socket.MSG_DONTWAIT or _is_nonblocking(duplicate):
            duplicate.close()
            return Errno(errno.EAGAIN)
        # A blocking receive with nothing queued: wait on the event loop.
        self.loop.call_soon_threadsafe(
            self._wait_readable,
            notification,
            duplicate,
            vectors,
            size,
            flags,
            pointer,
            length_pointer,
        )
        return DEFERRED

    def _wait_readable(
        self,
        notification: Notification,
        duplicate: socket.socket,
        vectors: list[tuple[int, int]],
        size: int,
        flags: int,
        pointer: int,
        length_pointer: int,
    ) -> None:
        fileno = duplicate.fileno()
        check: list[asyncio.TimerHandle] = []

        def finish(answer: Answer | None) -> None:
            self.loop.remove_reader(fileno)
            for handle in check:
                handle.cancel()
            duplicate.close()
            if answer is not None and not notification.answered:
                with contextlib.suppress(OSError):
                    answer.deliver(notification)

        def readable() -> None:
            try:
                answer = self._try_receive(
                    notification, duplicate, vectors, size, flags, pointer, length_pointer
                )
            except Exception as error:  # the tracee went away, say
                log.debug("receive for %r failed: %s", notification, error)
                finish(None)
                return
            if answer is not None:
                finish(answer)

        def still_waiting() -> None:
            check.clear()
            if self._closed or not notification.is_valid():
                finish(None)
                return
            check.append(self.loop.call_later(1.0, still_waiting))

        self.loop.add_reader(fileno, readable)
        check.append(self.loop.call_later(1.0, still_waiting))

    def _try_receive(
        self,
        notification: Notification,
        duplicate: socket.socket,
        vectors: list[tuple[int, int]],
        size: int,
        flags: int,
        pointer: int,
        length_pointer: int,
    ) -> Answer | None:
        """Receive one datagram for the tracee; ``None`` when none is queued."""
        try:
            data, sender = duplicate.recvfrom(max(size, 1), flags | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as error:
            return Errno(error.errno or errno.EIO)
        data = data[:size]
        offset = 0
        for base, length in vectors:
            if offset >= len(data):
                break
            piece = data[offset : offset + length]
            notification.write_memory(base, piece)
            offset += len(piece)
        with self._lock:
            origin = self._relay_origins.get(_normalize(sender))
        address = origin if origin is not None else InetAddress(*_normalize(sender))
        encoded = encode_inet(address, duplicate.family)
        write_address(notification, encoded, pointer, length_pointer)
        return Value(len(data))

    # -- plumbing ----------------------------------------------------------------------

    def _submit(self, coroutine: Coroutine[Any, Any, None], notification: Notification) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        self._tasks.add(future)

        def done(finished: asyncio.Future[Any] | Any) -> None:
            self._tasks.discard(finished)
            error = None if finished.cancelled() else finished.exception()
            if error is not None:
                log.error("outgoing traffic handler failed on %r", notification, exc_info=error)
            if not notification.answered:
                with contextlib.suppress(OSError):
                    notification.respond_errno(errno.ENETUNREACH)

        future.add_done_callback(done)

    def close(self) -> None:
        """Stop every relay (called after the command ended, from any thread)."""
        self._closed = True
        self._unix_relays.remove()

        def cancel_all() -> None:
            for task in list(self._tasks):
                task.cancel()

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            cancel_all()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs
                self.loop.call_soon_threadsafe(cancel_all)
