"""Port-forwarding to the agent through the API server, as a loopback TCP listener.

The session connects to ``127.0.0.1:<port>`` like to any agent; each connection accepted
there is piped through a port-forward websocket of its own (``kubernetes.stream.
portforward``, the ``pods/portforward`` subresource) to the agent's port in its pod.

What "re-established" means: a websocket that drops ends the one connection it carried;
the listener stays, and the next connection gets a new websocket to the same agent. The
protocol session on the dropped connection reconnects here and resumes (the endpoint is
resumable, see docs/protocol.md), so its requests and streams carry on.

The first websocket is opened by :meth:`PortForwarder.start`, so a missing permission
(``create pods/portforward``) or an unreachable server is reported before the session
starts, as a one-line error.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.stream import portforward

from mirrord_target.local.kube_client import KubeApi

log = logging.getLogger("mirrord.target")

_CHUNK = 256 * 1024
# How long the proxy thread may take to see our end and close its own.
_FINISH_TIMEOUT = 5.0
# How often an idle pipe checks that its websocket is still connected.
_LIVENESS_INTERVAL = 1.0
_TCP_ESTABLISHED = 1


class PortForwarder:
    """A loopback listener forwarding each connection to ``pod:port`` in ``namespace``."""

    def __init__(self, api: KubeApi, pod: str, namespace: str, port: int) -> None:
        # kubernetes.stream patches its client's call_api while it opens a websocket: a
        # client of its own, and one opening at a time, keep other requests (and other
        # openings) from going through the patched method.
        self.api = api.fork()
        self._opening = threading.Lock()
        self.pod, self.namespace, self.remote_port = pod, namespace, port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._spare: Any = None  # an open websocket waiting for the next connection
        self._open: set[socket.socket] = set()
        self._closed = False
        self._accepter: threading.Thread | None = None

    def _open_websocket(self) -> Any:
        with self._opening:
            return self.api.call(
                portforward,
                self.api.core.connect_get_namespaced_pod_portforward,
                self.pod,
                self.namespace,
                ports=str(self.remote_port),
            )

    def start(self) -> PortForwarder:
        """Open the first websocket (raising a user error if that fails) and accept."""
        _quiet_proxy_thread_resets()
        try:
            self._spare = self._open_websocket()
        except BaseException:
            self._listener.close()
            self.api.close()
            raise
        self._accepter = threading.Thread(
            target=self._accept_loop,
            name=f"port-forward {self.pod}:{self.remote_port}",
            daemon=True,
        )
        self._accepter.start()
        return self

    def _take_websocket(self) -> Any:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and spare.connected:
            return spare
        if spare is not None:
            spare.close()
        return self._open_websocket()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            threading.Thread(
                target=self._serve, args=(conn,), name="port-forward connection", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            forward = self._take_websocket()
        except Exception as err:  # the client sees its connection close; say why
            log.warning("port-forward to %s/%s failed: %s", self.namespace, self.pod, err)
            conn.close()
            return
        with self._lock:
            if self._closed:
                forward.close()
                conn.close()
                return
            self._open.add(conn)
        remote = forward.socket(self.remote_port)
        try:
            _pipe(conn, remote, lambda: _websocket_alive(forward))
        finally:
            conn.close()
            _finish(remote)
            error = forward.error(self.remote_port)
            if error:
                log.warning("port-forward to %s/%s: %s", self.namespace, self.pod, error.strip())
            with self._lock:
                self._open.discard(conn)
            forward.close()

    def close(self) -> None:
        """Stop accepting and end every forwarded connection."""
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
            conns = list(self._open)
        # close() alone does not wake a thread blocked in accept(); shutdown() does.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        # Shutting the local side down wakes each pipe, whose thread closes its websocket.
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if spare is not None:
            with contextlib.suppress(Exception):
                spare.close()
        if self._accepter is not None:
            self._accepter.join(timeout=5)
        self.api.close()


def _finish(remote: Any) -> None:
    """End our side of a port-forward and let the client's proxy thread finish first.

    Closing the socket at once would break the proxy thread's pipe while it still
    delivers the agent's last bytes (it then dies with a traceback on stderr): shutting
    the write side down makes it close its side, which reading sees as EOF.
    """
    with contextlib.suppress(OSError):
        remote.shutdown(socket.SHUT_WR)
        remote.settimeout(_FINISH_TIMEOUT)
        while remote.recv(_CHUNK):
            pass


_PROXY_THREAD_PREFIX = "Kubernetes port forward proxy"
_hook_lock = threading.Lock()


def _quiet_proxy_thread_resets() -> None:
    """Log a kubernetes proxy thread's death by a reset websocket instead of printing its
    traceback: a dropped websocket is expected, and the session resumes over a new one."""
    with _hook_lock:
        previous = threading.excepthook
        if getattr(previous, "quiets_proxy_resets", False):
            return

        def hook(args: threading.ExceptHookArgs) -> None:
            thread = args.thread
            if (
                thread is not None
                and thread.name.startswith(_PROXY_THREAD_PREFIX)
                and isinstance(args.exc_value, ConnectionError)
            ):
                log.info("port-forward websocket lost: %s", args.exc_value)
                return
            previous(args)

        hook.quiets_proxy_resets = True  # type: ignore[attr-defined]
        threading.excepthook = hook


def _websocket_alive(forward: Any) -> bool:
    """Whether the websocket under ``forward`` is still an established TCP connection.

    The kubernetes client's proxy thread dies on a reset websocket (``ConnectionResetError``
    is not the exception it handles) without closing its end of our socket pair, so a
    reset would leave the pipe, and the session on it, waiting forever.
    """
    sock = getattr(getattr(forward, "websocket", None), "sock", None)
    if sock is None:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return False
    (state,) = struct.unpack_from("B", info)
    return bool(state == _TCP_ESTABLISHED)


def _pipe(local: socket.socket, remote: Any, alive: Callable[[], bool] = lambda: True) -> None:
    """Copy bytes both ways until either side closes (or ``alive()``, asked about once a
    second, says the remote's carrier is gone)."""
    peers = {local.fileno(): remote, remote.fileno(): local}
    with selectors.DefaultSelector() as selector:
        selector.register(local, selectors.EVENT_READ)
        selector.register(remote.fileno(), selectors.EVENT_READ)
        checked = time.monotonic()
        while True:
            events = selector.select(_LIVENESS_INTERVAL)
            if time.monotonic() - checked >= _LIVENESS_INTERVAL:
                if not alive():
                    return
                checked = time.monotonic()
            for key, _ in events:
                source = local if key.fd == local.fileno() else remote
                try:
                    data = source.recv(_CHUNK)
                except OSError:
                    return
                if not data:
                    return
                try:
                    peers[key.fd].sendall(data)
                except OSError:
                    return
