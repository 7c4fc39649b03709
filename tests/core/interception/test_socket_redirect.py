"""Acting on a tracee's socket with ``pidfd_getfd``: a trapped ``connect`` to a closed
local port is carried out by the supervisor on a duplicate of the tracee's socket (the
same open file description), towards a local server instead. Blocking connects (Python)
(Python, busybox wget) and non-blocking ones (curl, Go, Node) both work. Only loopback is
used."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord_core.interception import Errno, Notification, Value, run_intercepted

BODY = b"hello from the local server\n"


class Server:
    """A tiny HTTP/1.0 server on 127.0.0.1 answering every request with ``BODY``."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                self.connections += 1
                connection.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request and b"\n\n" not in request:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                connection.sendall(
                    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY)
                )

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nobody listens on (held bound, so nobody will)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    yield holder.getsockname()[1]
    holder.close()


def sockaddr(data: bytes) -> tuple[str, int] | None:
    """(IPv4 address, port) of a sockaddr_in or an IPv4-mapped sockaddr_in6."""
    family = int.from_bytes(data[:2], sys.byteorder)
    port = int.from_bytes(data[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntoa(data[4:8]), port
    if family == socket.AF_INET6 and data[8:20] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntoa(data[20:24]), port
    return None


class RedirectConnect:
    """Connects the tracee's socket to ``to`` when it connects to ``original``."""

    syscalls = frozenset({"connect"})

    def __init__(self, original: tuple[str, int], to: tuple[str, int]) -> None:
        self.original = original
        self.to = to
        self.redirected: list[str] = []

    def handle(self, notification: Notification) -> object:
        fd, address, length = notification.args[:3]
        if sockaddr(notification.read_memory(address, min(length, 28))) != self.original:
            return None
        duplicate = socket.socket(fileno=notification.pidfd_getfd(fd))
        try:
            blocking = not fcntl.fcntl(duplicate.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
            family = duplicate.family
            target = self.to if family == socket.AF_INET else ("::ffff:" + self.to[0], self.to[1])
            # The duplicate shares the tracee's open file description: connecting it
            # connects the tracee's socket, blocking or not, as the tracee set it.
            result = duplicate.connect_ex(target)
        finally:
            duplicate.close()
        self.redirected.append("blocking" if blocking else "non-blocking")
        if result in (0, errno.EINPROGRESS):
            return Value(0) if result == 0 else Errno(errno.EINPROGRESS)
        return Errno(result)


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is needed for this test: apt-get install {package}"
    return path


def _command(client: str, url: str, go_probe: Path) -> list[str]:
    host_port = url.removeprefix("http://").rstrip("/")
    host, port = host_port.split(":")
    if client == "python":
        code = (
            f"import socket; s = socket.create_connection(({host!r}, {port}));"
            "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); data = b''\n"
            "while chunk := s.recv(4096): data += chunk\n"
            "print(data.split(b'\\r\\n\\r\\n', 1)[1].decode(), end='')"
        )
        return [sys.executable, "-c", code]
    if client == "curl":
        return [_tool("curl", "curl"), "-s", "--max-time", "10", url]
    if client == "go-static":
        return [str(go_probe), url]
    if client == "node":
        script = (
            f"require('http').get({url!r}, r => {{ r.setEncoding('utf8');"
            " r.on('data', d => process.stdout.write(d)); })"
        )
        return [_tool("node", "nodejs"), "-e", script]
    if client == "busybox-static":
        return ["timeout", "10", "/usr/bin/busybox", "wget", "-q", "-O", "-", url]
    raise AssertionError(client)


@pytest.mark.parametrize("client", ["python", "curl", "go-static", "node", "busybox-static"])
def test_connect_is_redirected(
    client: str,
    server: Server,
    closed_port: int,
    go_probe: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{closed_port}/"
    handler = RedirectConnect(("127.0.0.1", closed_port), server.address)
    assert run_intercepted(_command(client, url, go_probe), handlers=[handler]) == 0
    assert capfd.readouterr().out == BODY.decode()
    assert server.connections == 1 and len(handler.redirected) == 1
    expected = "blocking" if client in ("python", "busybox-static") else "non-blocking"
    assert handler.redirected == [expected]


def test_without_the_handler_the_port_is_closed(
    closed_port: int, capfd: pytest.CaptureFixture[str]
) -> None:
    code = f"import socket; socket.create_connection(('127.0.0.1', {closed_port}))"
    assert run_intercepted([sys.executable, "-c", code]) == 1
    assert "ConnectionRefusedError" in capfd.readouterr().err
