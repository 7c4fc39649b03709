"""Programs the steal tests run inside sandbox pods' network namespaces.

``python steal_programs.py COMMAND`` (started with ``ip netns exec <pod netns>``):

- ``app --name N --port P [--record DIR] [--echo]``: an HTTP/1.1 server (h11; keep-alive,
  pipelining, chunked, ``100 Continue``, ``HEAD``, ``Upgrade: echo``) answering each
  request with a JSON description of it (``{"app": N, "method", "target", "body_len",
  "body_sha256", ...}``); ``GET /big?size=N[&chunked=1]`` answers N pattern bytes instead.
  It records the raw bytes of each connection in ``DIR/<n>.raw``. With ``--echo`` it is a
  raw TCP echo server instead. Prints ``{"ready": port}`` once listening.
- ``redirector [--record DIR]``: a :class:`StealRedirector` plus a "local app" (the app
  above, named ``local``) standing for the mirrord session: the opener connects to it.
  Commands are JSON lines on stdin (``steal``, ``release``, ``close``), answers JSON lines
  on stdout (``{"reply": ...}``), interleaved with ``{"event": "opened", ...}`` lines.
- ``client --host H --port P [--raw-dir DIR]``: a JSON scenario on stdin's first line
  (``{"requests": [...], "pipelined": bool, "read_eof": bool}``); sends the requests on
  one connection, byte for byte as built here (saved as ``DIR/<i>.raw``), and prints one
  JSON line per response, then ``{"done": true}``. A request with ``"pause": true`` waits
  for a line on stdin before it is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import logging
import re
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11

from mirrord_network.agent.byte_pipes import Pipe, SocketPipe
from mirrord_network.agent.steal_redirector import (
    PortAlreadyStolen,
    StealRedirector,
    StolenConnectionInfo,
)

_PATTERN = bytes(range(256)) * 4096  # 1 MiB


def pattern(size: int) -> Iterator[bytes]:
    """``size`` bytes of the test pattern, in pieces of at most 1 MiB."""
    while size > 0:
        piece = _PATTERN[: min(size, len(_PATTERN))]
        size -= len(piece)
        yield piece


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern(size):
        digest.update(piece)
    return digest.hexdigest()


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# -- the app ---------------------------------------------------------------------------------


class HttpApp:
    """The HTTP/1.1 test app (see the module docstring)."""

    def __init__(self, name: str, record: Path | None) -> None:
        self.name = name
        self.record = record
        self._connections = itertools.count()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = next(self._connections)
        record = open(self.record / f"{number}.raw", "wb") if self.record else None  # noqa: SIM115
        try:
            await self._serve(reader, writer, record)
        except (ConnectionError, h11.ProtocolError):
            pass
        finally:
            if record is not None:
                record.close()
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record):
        connection = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        digest = hashlib.sha256()
        body_len = 0
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                if connection.they_are_waiting_for_100_continue:
                    writer.write(
                        connection.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                data = await reader.read(1 << 16)
                if record is not None:
                    record.write(data)
                    record.flush()
                connection.receive_data(data)
            elif isinstance(event, h11.Request):
                request, digest, body_len = event, hashlib.sha256(), 0
            elif isinstance(event, h11.Data):
                digest.update(event.data)
                body_len += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                if (
                    request.target == b"/upgrade"
                    and connection.their_state is h11.MIGHT_SWITCH_PROTOCOL
                ):
                    switch = h11.InformationalResponse(
                        status_code=101, headers=[("Upgrade", "echo"), ("Connection", "Upgrade")]
                    )
                    writer.write(connection.send(switch))
                    await self._echo(reader, writer, connection.trailing_data[0], record)
                    return
                await self._respond(connection, writer, request, body_len, digest.hexdigest())
                # /then-close: close the connection after answering, without saying so
                # first, as servers do with idle keep-alive connections.
                if connection.our_state is h11.MUST_CLOSE or request.target == b"/then-close":
                    return
                connection.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return

    async def _respond(self, connection, writer, request, body_len, sha256) -> None:
        url = urllib.parse.urlsplit(request.target.decode())
        query = dict(urllib.parse.parse_qsl(url.query))
        headers = [("X-App", self.name)]
        if url.path == "/big":
            size = int(query["size"])
            if not query.get("chunked"):
                headers.append(("Content-Length", str(size)))
            writer.write(connection.send(h11.Response(status_code=200, headers=headers)))
            if request.method != b"HEAD":
                for piece in pattern(size):
                    writer.write(connection.send(h11.Data(data=piece)))
                    await writer.drain()
        else:
            body = json.dumps(
                {
                    "app": self.name,
                    "method": request.method.decode(),
                    "target": request.target.decode(),
                    "body_len": body_len,
                    "body_sha256": sha256,
                }
            ).encode()
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            writer.write(connection.send(h11.Response(status_code=200, headers=headers)))
            if request.method != b"HEAD":
                writer.write(connection.send(h11.Data(data=body)))
        writer.write(connection.send(h11.EndOfMessage()))
        await writer.drain()

    async def _echo(self, reader, writer, pending: bytes, record) -> None:
        data = pending
        while True:
            if data:
                writer.write(f"{self.name}:".encode() + data)
                await writer.drain()
            data = await reader.read(1 << 16)
            if not data:
                return
            if record is not None:
                record.write(data)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def app_main(args: argparse.Namespace) -> None:
    if args.echo:
        server = await asyncio.start_server(echo, "0.0.0.0", args.port)
    else:
        app = HttpApp(args.name, Path(args.record) if args.record else None)
        server = await asyncio.start_server(app.serve, "0.0.0.0", args.port)
    emit({"ready": server.sockets[0].getsockname()[1]})
    await server.serve_forever()


# -- the redirector --------------------------------------------------------------------------


async def redirector_main(args: argparse.Namespace) -> None:
    # The redirector's log goes to stderr, which the tests show when something fails.
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    local = HttpApp("local", Path(args.record) if args.record else None)
    local_server = await asyncio.start_server(local.serve, "127.0.0.1", 0)
    local_port = local_server.sockets[0].getsockname()[1]

    async def open_local(info: StolenConnectionInfo) -> Pipe:
        emit({"event": "opened", "client": info.client, "destination": info.destination})
        return await SocketPipe.connect("127.0.0.1", local_port)

    async def fail(info: StolenConnectionInfo) -> Pipe:
        emit({"event": "refused", "client": info.client})
        raise ConnectionRefusedError("the session is gone")

    redirector = StealRedirector()
    await redirector.start()
    emit({"reply": {"table": redirector.table_name, "listener_port": redirector.listener_port}})
    releases = {}
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := await stdin.readline():
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "steal":
                pattern_text = command.get("filter")
                releases[command["port"]] = redirector.steal(
                    command["port"],
                    fail if command.get("opener") == "fail" else open_local,
                    re.compile(pattern_text) if pattern_text is not None else None,
                    flush_connections=command.get("flush", False),
                )
            elif op == "release":
                releases.pop(command["port"])()
            elif op == "close":
                await redirector.close()
            emit({"reply": {"ok": True}})
        except PortAlreadyStolen as error:
            emit({"reply": {"error": str(error), "type": "PortAlreadyStolen"}})
        except Exception as error:
            emit({"reply": {"error": str(error), "type": type(error).__name__}})
    await redirector.close()


# -- the client ------------------------------------------------------------------------------


def build_request(spec: dict[str, Any], host: str) -> tuple[bytes, bytes]:
    """The raw head and body of the request ``spec`` describes."""
    lines = [f"{spec.get('method', 'GET')} {spec.get('target', '/')} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in spec.get("headers", [])]
    size = spec.get("body_size", 0)
    if spec.get("chunked"):
        lines.append("Transfer-Encoding: chunked")
    elif size or spec.get("method") in ("POST", "PUT"):
        lines.append(f"Content-Length: {size}")
    if spec.get("expect_continue"):
        lines.append("Expect: 100-continue")
    if spec.get("close"):
        lines.append("Connection: close")
    if spec.get("upgrade") is not None:
        lines += ["Connection: Upgrade", "Upgrade: echo"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    body = b"".join(pattern(size))
    if spec.get("chunked"):
        piece = spec.get("chunk_size", 100_000)
        chunks = [body[i : i + piece] for i in range(0, len(body), piece)]
        # Upper-case hex and a chunk extension: forwarded as sent, not re-encoded.
        framed = [f"{len(c):X};ext=1\r\n".encode() + c + b"\r\n" for c in chunks]
        body = b"".join(framed) + b"0\r\nX-Trailer: done\r\n\r\n"
    return head, body


class ResponseReader:
    """Reads responses off one connection (h11, one parser per response)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buffer = b""

    async def read_interim(self) -> int:
        while b"\r\n\r\n" not in self.buffer:
            data = await self.reader.read(1 << 16)
            if not data:
                raise ConnectionError("closed before the interim response")
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1])

    async def read(self, method: str, upgrade: bool) -> dict[str, Any]:
        connection = h11.Connection(h11.CLIENT)
        headers = [("Host", "x")] + (
            [("Connection", "upgrade"), ("Upgrade", "echo")] if upgrade else []
        )
        connection.send(h11.Request(method=method, target="/", headers=headers))
        connection.send(h11.EndOfMessage())
        if self.buffer:  # (an empty receive_data would mean the end of the stream)
            connection.receive_data(self.buffer)
        self.buffer = b""
        result: dict[str, Any] = {"interim": []}
        digest, body = hashlib.sha256(), bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await self.reader.read(1 << 16))
            elif isinstance(event, h11.InformationalResponse):
                result["interim"].append(event.status_code)
                if event.status_code == 101:
                    result["status"] = 101
                    self.buffer = connection.trailing_data[0]
                    return result
            elif isinstance(event, h11.Response):
                result["status"] = event.status_code
                result["headers"] = [[n.decode(), v.decode()] for n, v in event.headers.raw_items()]
            elif isinstance(event, h11.Data):
                digest.update(event.data)
                if len(body) < 65536:
                    body += event.data
                result["body_len"] = result.get("body_len", 0) + len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.buffer = connection.trailing_data[0]
                result["body_sha256"] = digest.hexdigest()
                result.setdefault("body_len", 0)
                if result["body_len"] < 65536:
                    result["body"] = body.decode("latin-1")
                return result
            else:
                raise ConnectionError(f"unexpected {event!r}")


async def raw_exchange(host: str, port: int, data: bytes) -> None:
    """Send ``data``, half-close, and print everything that comes back."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    writer.write_eof()
    try:
        emit({"raw": (await reader.read()).hex()})
    except ConnectionError as error:
        emit({"error": f"{type(error).__name__}: {error}"})
    writer.close()
    emit({"done": True})


async def client_main(args: argparse.Namespace) -> None:
    scenario = json.loads(sys.stdin.readline())
    if "raw" in scenario:
        await raw_exchange(args.host, args.port, bytes.fromhex(scenario["raw"]))
        return
    requests = scenario["requests"]
    built = [build_request(spec, f"{args.host}:{args.port}") for spec in requests]
    if args.raw_dir:
        for index, (head, body) in enumerate(built):
            Path(args.raw_dir, f"{index}.raw").write_bytes(head + body)
    reader, writer = await asyncio.open_connection(args.host, args.port, limit=1 << 20)
    responses = ResponseReader(reader)
    try:
        if scenario.get("pipelined"):
            writer.write(b"".join(head + body for head, body in built))
            for index, spec in enumerate(requests):
                emit({"index": index, **await responses.read(spec.get("method", "GET"), False)})
        else:
            for index, (spec, (head, body)) in enumerate(zip(requests, built, strict=True)):
                if spec.get("pause"):
                    emit({"paused": index})
                    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
                writer.write(head)
                interim = []
                if spec.get("expect_continue"):
                    await writer.drain()
                    interim.append(await responses.read_interim())
                writer.write(body)
                await writer.drain()
                response = await responses.read(spec.get("method", "GET"), "upgrade" in spec)
                response["interim"] = interim + response["interim"]
                if response.get("status") == 101:
                    payload = spec["upgrade"].encode()
                    writer.write(payload)
                    await writer.drain()
                    echoed = responses.buffer
                    while not echoed.endswith(payload) and (data := await reader.read(1 << 16)):
                        echoed += data
                    response["echo"] = echoed.decode("latin-1")
                emit({"index": index, **response})
        if scenario.get("read_eof"):
            emit({"eof": responses.buffer + await reader.read() == b""})
    except (ConnectionError, h11.ProtocolError) as error:
        emit({"error": f"{type(error).__name__}: {error}"})
    finally:
        writer.close()
    emit({"done": True})


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    app = commands.add_parser("app")
    app.add_argument("--name", default="pod")
    app.add_argument("--port", type=int, required=True)
    app.add_argument("--record")
    app.add_argument("--echo", action="store_true")
    redirector = commands.add_parser("redirector")
    redirector.add_argument("--record")
    client = commands.add_parser("client")
    client.add_argument("--host", required=True)
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--raw-dir")
    args = parser.parse_args()
    runner = {"app": app_main, "redirector": redirector_main, "client": client_main}
    asyncio.run(runner[args.command](args))


if __name__ == "__main__":
    main()
