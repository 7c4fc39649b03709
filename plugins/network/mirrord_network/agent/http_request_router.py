"""Routing the HTTP/1.x requests of one stolen connection by their headers.

With an HTTP header filter, a stolen connection is not handed over whole: each request is
parsed (with h11) and goes either to the *stolen* side (a pipe to the mirrord session,
opened on the first matching request) or to the *original destination* (the pod's own
app, connected on the first request that does not match). A request matches when the
filter finds a match in one of its ``Header-Name: value`` lines (``re.search``,
case-insensitively, as mirrord compiles the filter with ``(?i)``).

What goes where is byte-exact: the router forwards the bytes the client sent (head, body,
chunk framing and trailers) and the bytes each side answered, never a re-serialisation,
so header casing, order and whitespace are preserved. Bodies are streamed in chunks as
they arrive, never held whole. Responses are written back in request order, however the
requests were pipelined and whichever side answers first; each response is parsed only to
know where it ends (``HEAD``, 1xx such as ``100 Continue``, 204/304, chunked,
content-length and read-until-close bodies).

- ``Connection: close`` (either side) and HTTP/1.0 without keep-alive: the client
  connection is closed after that response, as the server would have done.
- ``Upgrade`` / ``CONNECT``: the request is routed like any other; if the side that got it
  switches protocols (``101``, or ``2xx`` to ``CONNECT``), the rest of the connection is a
  raw tunnel between the client and that side.
- Bytes that are not an HTTP/1.x request (TLS, the HTTP/2 preface, anything else, or a
  client that sends nothing for :data:`DETECTION_TIMEOUT`) are forwarded raw to the
  original destination, as is everything after a request the parser rejects.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import attrs
import h11

from mirrord_network.agent.byte_pipes import CHUNK, Pipe, close_quietly, copy_until_end

log = logging.getLogger("mirrord.agent.steal")

#: How long a client may take to send the start of its first request line.
DETECTION_TIMEOUT = 10.0
#: The longest request or response head accepted (longer ones are not parsed).
MAX_HEAD = 256 * 1024
#: The most bytes handed to the parser at once (bounds the parser's buffer copies).
_FEED = 64 * 1024

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# The request target: no spaces and no control characters.
_TARGET = rb"[^\x00-\x20\x7f]"
_REQUEST_LINE = re.compile(_TOKEN + rb"{1,64} " + _TARGET + rb"{1,65536} HTTP/1\.[0-9]\r?")
_METHOD = re.compile(_TOKEN + rb"{0,64}")
_PARTIAL_TARGET = re.compile(_TARGET + rb"{0,65536}")
_VERSION = b"HTTP/1."
_SWITCHING_METHOD = b"CONNECT"

Opener = Callable[[], Awaitable[Pipe]]


def looks_like_http1(data: bytes) -> bool | None:
    """Whether ``data`` starts like an HTTP/1.x request line; ``None`` while undecided."""
    line, newline, _ = data.partition(b"\n")
    if newline:
        return _REQUEST_LINE.fullmatch(line) is not None
    method, space, rest = line.partition(b" ")
    if not _METHOD.fullmatch(method) or (space and not method):
        return False
    target, space, version = rest.partition(b" ")
    if not _PARTIAL_TARGET.fullmatch(target) or (space and not target):
        return False
    if not space or len(version) <= len(_VERSION):
        return None if _VERSION.startswith(version) else False
    complete = version.startswith(_VERSION) and version[7:8].isdigit()
    return None if complete and version[8:] in (b"", b"\r") else False


def header_matches(request: h11.Request, header_filter: re.Pattern[str]) -> bool:
    """True when one of the request's ``Name: value`` lines contains a match."""
    return any(
        header_filter.search(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
        for name, value in request.headers.raw_items()
    )


def request_closes(request: h11.Request) -> bool:
    """True when the request ends its connection (``Connection: close``, or HTTP/1.0,
    whose keep-alive h11 does not support either)."""
    if request.http_version != b"1.1":
        return True
    return any(
        token.strip().lower() == b"close"
        for name, value in request.headers
        if name == b"connection"
        for token in value.split(b",")
    )


def case_insensitive(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """``pattern`` matching regardless of case (mirrord prefixes its filter with ``(?i)``)."""
    return re.compile(pattern.pattern, pattern.flags | re.IGNORECASE)


class _RawEventParser:
    """An h11 connection that also reports the exact bytes each step consumed."""

    def __init__(self, role: type[h11.CLIENT] | type[h11.SERVER]) -> None:
        self.connection = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)
        self._fed = bytearray()  # given to h11, not yet reported as consumed
        self._backlog = bytearray()  # not yet given to h11
        self._eof = False

    def feed(self, data: bytes) -> None:
        self._backlog += data

    def feed_eof(self) -> None:
        self._eof = True

    @property
    def buffered(self) -> bool:
        return bool(self._fed or self._backlog)

    def leftover(self) -> bytes:
        """Bytes received but not consumed by the parser."""
        return bytes(self._fed + self._backlog)

    def next_event(self) -> tuple[object, bytes]:
        """The next h11 event (or ``NEED_DATA``/``PAUSED``) and the bytes it consumed.

        ``NEED_DATA`` means that everything fed so far has been parsed.
        """
        consumed = b""
        while True:
            event = self.connection.next_event()
            consumed += self._take_consumed()
            if event is not h11.NEED_DATA or not (self._backlog or self._eof):
                return event, consumed
            if self._backlog:
                piece = bytes(self._backlog[:_FEED])
                del self._backlog[:_FEED]
                self._fed += piece
                self.connection.receive_data(piece)
            else:
                self.connection.receive_data(b"")
                self._eof = False

    def _take_consumed(self) -> bytes:
        consumed = len(self._fed) - len(self.connection.trailing_data[0])
        raw = bytes(self._fed[:consumed])
        del self._fed[:consumed]
        return raw


def _peer_closed(pipe: Pipe) -> bool:
    """True when the other side already ended ``pipe`` (as far as can be known now)."""
    check = getattr(pipe, "peer_closed", None) or getattr(pipe, "at_eof", None)
    return bool(check()) if check is not None else False


class Upstream:
    """One side requests are routed to, connected on first use, and again when it
    closed its connection while idle (a server's keep-alive timeout)."""

    def __init__(self, name: str, opener: Opener) -> None:
        self.name = name
        self._opener = opener
        self._pipe: Pipe | None = None
        self._opening: asyncio.Task[Pipe] | None = None
        #: Bytes read from the pipe that belong to a later response.
        self.buffer = bytearray()
        #: Requests routed here whose responses are not completely relayed yet.
        self.pending = 0

    @property
    def opened(self) -> bool:
        return self._pipe is not None

    async def pipe(self) -> Pipe:
        """The connection, opened on the first call (raises if it cannot be opened)."""
        if self._pipe is None:
            if self._opening is None:
                self._opening = asyncio.ensure_future(self._opener())
            self._pipe = await asyncio.shield(self._opening)
        return self._pipe

    async def pipe_for_request(self) -> Pipe:
        """:meth:`pipe`, but a new connection if the current one is idle and its other
        side has closed it: a request written there would be lost."""
        pipe = self._pipe
        if pipe is not None and not self.pending and not self.buffer and _peer_closed(pipe):
            self._pipe, self._opening = None, None
            await close_quietly(pipe)
        return await self.pipe()

    async def read(self) -> bytes:
        """Buffered bytes first, then the pipe's (``b""`` at its end)."""
        if self.buffer:
            data = bytes(self.buffer)
            self.buffer.clear()
            return data
        return await (await self.pipe()).read(CHUNK)

    async def close(self) -> None:
        if self._pipe is not None:
            await close_quietly(self._pipe)
        elif self._opening is not None:
            self._opening.cancel()

    def reset(self, reason: str) -> None:
        if self._pipe is not None:
            self._pipe.reset(reason)


@attrs.define(eq=False)
class _Exchange:
    """A routed request whose response is still to be relayed."""

    upstream: Upstream
    method: bytes
    #: The request's ``Upgrade`` headers (so the response parser accepts a ``101``).
    upgrade_headers: list[tuple[bytes, bytes]]
    #: Resolved with whether the upstream switched protocols (Upgrade/CONNECT only).
    switched: asyncio.Future[bool] | None
    #: The request itself ends the connection (``Connection: close``, HTTP/1.0).
    closes: bool


@attrs.define(eq=False)
class _Tunnel:
    """From here on, the connection is raw bytes between the client and ``upstream``."""

    upstream: Upstream


_Queued = _Exchange | _Tunnel | None


class _ResponseIncomplete(Exception):
    pass


class HttpRequestRouter:
    """Routes one stolen client connection's requests (see the module docstring)."""

    def __init__(
        self,
        client: Pipe,
        header_filter: re.Pattern[str],
        open_stolen: Opener,
        open_original: Opener,
    ) -> None:
        self.client = client
        self.filter = case_insensitive(header_filter)
        self.stolen = Upstream("stolen", open_stolen)
        self.original = Upstream("original destination", open_original)
        self._stolen_failed = False
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()

    async def run(self) -> None:
        """Serve the connection until it ends; the client and both sides are closed after."""
        try:
            is_http, data = await self._detect()
            if not is_http:
                self._queue.put_nowait(_Tunnel(self.original))
                await self._run_both(self._tunnel_from_client(self.original, data))
            else:
                await self._run_both(self._route_requests(data))
        except Exception as error:
            log.info("stolen connection aborted: %r", error)
            self._reset_all(f"aborted: {error!r}"[:200])
        except BaseException:
            self._reset_all("the agent stopped")
            raise
        finally:
            await self.stolen.close()
            await self.original.close()
            await close_quietly(self.client)

    def _reset_all(self, reason: str) -> None:
        self.client.reset(reason)
        self.stolen.reset(reason)
        self.original.reset(reason)

    async def _run_both(self, requests: Coroutine[Any, Any, None]) -> None:
        """``requests`` (client → upstreams) and the response relay, until both end."""
        try:
            async with asyncio.TaskGroup() as group:
                request_task = group.create_task(requests)
                group.create_task(self._relay_responses(request_task))
        except BaseExceptionGroup as group_error:
            # The first real failure explains the abort; the rest are its consequences.
            raise group_error.exceptions[0] from None

    async def _detect(self) -> tuple[bool, bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DETECTION_TIMEOUT
        data = b""
        while (verdict := looks_like_http1(data)) is None:
            try:
                chunk = await asyncio.wait_for(self.client.read(CHUNK), deadline - loop.time())
            except TimeoutError:
                return False, data
            if not chunk:
                return False, data
            data += chunk
        return verdict, data

    # -- client → upstreams ------------------------------------------------------------------

    async def _route_requests(self, data: bytes) -> None:
        parser = _RawEventParser(h11.SERVER)
        parser.feed(data)
        exchange: _Exchange | None = None
        unrouted = b""  # consumed before the request line (nothing, normally)
        while True:
            try:
                event, raw = parser.next_event()
            except h11.RemoteProtocolError as error:
                # Not a request we can parse: the rest goes raw to where it was going.
                upstream = exchange.upstream if exchange is not None else self.original
                log.info("unparseable request (%s): forwarding the rest raw", error)
                self._queue.put_nowait(_Tunnel(upstream))
                await self._tunnel_from_client(upstream, unrouted + parser.leftover())
                return
            if exchange is None:
                unrouted += raw
            elif raw:
                await (await exchange.upstream.pipe()).write(raw)
            if event is h11.NEED_DATA:
                chunk = await self.client.read(CHUNK)
                if chunk:
                    parser.feed(chunk)
                else:
                    parser.feed_eof()
            elif isinstance(event, h11.Request):
                exchange = await self._start_exchange(event, unrouted)
                unrouted = b""
            elif isinstance(event, h11.EndOfMessage):
                assert exchange is not None
                if exchange.switched is not None and await exchange.switched:
                    await self._tunnel_from_client(exchange.upstream, parser.leftover())
                    return
                if exchange.closes:
                    break
                leftover = parser.leftover()
                parser = _RawEventParser(h11.SERVER)
                parser.feed(leftover)
                exchange = None
            elif isinstance(event, h11.ConnectionClosed):
                # The client ended its side between requests: end ours to both sides.
                for upstream in (self.stolen, self.original):
                    if upstream.opened:
                        await (await upstream.pipe()).end()
                break
        self._queue.put_nowait(None)

    async def _start_exchange(self, request: h11.Request, head: bytes) -> _Exchange:
        upstream = self.original
        if not self._stolen_failed and header_matches(request, self.filter):
            try:
                await self.stolen.pipe_for_request()
                upstream = self.stolen
            except Exception as error:
                # The session that stole the port is gone: the pod's app answers instead.
                log.info("cannot reach the stealing session (%r): passing requests on", error)
                self._stolen_failed = True
        pipe = await upstream.pipe_for_request()
        upstream.pending += 1
        upgrade = [(b"upgrade", value) for name, value in request.headers if name == b"upgrade"]
        switches = bool(upgrade) or request.method == _SWITCHING_METHOD
        exchange = _Exchange(
            upstream=upstream,
            method=request.method,
            upgrade_headers=[(b"connection", b"upgrade"), *upgrade] if upgrade else [],
            switched=asyncio.get_running_loop().create_future() if switches else None,
            closes=request_closes(request),
        )
        await pipe.write(head)
        # Queued now, not when the body is in: the answer may come first (100 Continue).
        self._queue.put_nowait(exchange)
        return exchange

    async def _tunnel_from_client(self, upstream: Upstream, data: bytes) -> None:
        pipe = await upstream.pipe()
        if data:
            await pipe.write(data)
        await copy_until_end(self.client, pipe)

    # -- upstreams → client ------------------------------------------------------------------

    async def _relay_responses(self, request_task: asyncio.Task[None]) -> None:
        while (queued := await self._queue.get()) is not None:
            if isinstance(queued, _Tunnel):
                await self._tunnel_to_client(queued.upstream, b"")
                return
            try:
                keep_going = await self._relay_response(queued)
            finally:
                queued.upstream.pending -= 1
                if queued.switched is not None and not queued.switched.done():
                    queued.switched.set_result(False)
            if not keep_going:
                # The connection ends after this response: nothing more will be answered.
                request_task.cancel()
                break
        await self.client.end()

    async def _relay_response(self, exchange: _Exchange) -> bool:
        """Relay one response (and its 1xx); False when the connection ends after it."""
        upstream = exchange.upstream
        parser = _RawEventParser(h11.CLIENT)
        # Tell the parser what was asked: HEAD, CONNECT and Upgrade decide how the
        # response is framed. The bytes it would send are not used.
        parser.connection.send(
            h11.Request(
                method=exchange.method,
                target=b"/",
                headers=[(b"host", b"mirrord"), *exchange.upgrade_headers],
            )
        )
        parser.connection.send(h11.EndOfMessage())
        relayed = 0
        while True:
            try:
                event, raw = parser.next_event()
            except h11.RemoteProtocolError as error:
                if relayed == 0 and not parser.buffered:
                    return False  # closed before answering: so is the client connection
                message = f"bad response from the {upstream.name}: {error}"
                raise _ResponseIncomplete(message) from None
            if raw:
                relayed += len(raw)
                await self.client.write(raw)
            if event is h11.NEED_DATA:
                chunk = await upstream.read()
                if chunk:
                    parser.feed(chunk)
                else:
                    parser.feed_eof()
            elif event is h11.PAUSED:
                # Only after a 101 (or a 2xx to CONNECT): the protocol switched.
                assert exchange.switched is not None
                exchange.switched.set_result(True)
                await self._tunnel_to_client(upstream, parser.leftover())
                return False
            elif isinstance(event, h11.Response) and exchange.switched is not None:
                if not (exchange.method == _SWITCHING_METHOD and 200 <= event.status_code < 300):
                    exchange.switched.set_result(False)
            elif isinstance(event, h11.EndOfMessage):
                upstream.buffer[:0] = parser.leftover()
                their_state = parser.connection.their_state
                return not exchange.closes and their_state not in (h11.MUST_CLOSE, h11.CLOSED)
            elif isinstance(event, h11.ConnectionClosed):
                return False

    async def _tunnel_to_client(self, upstream: Upstream, data: bytes) -> None:
        if data:
            await self.client.write(data)
        while chunk := await upstream.read():
            await self.client.write(chunk)
        await self.client.end()


async def route_http_requests(
    client: Pipe, header_filter: re.Pattern[str], open_stolen: Opener, open_original: Opener
) -> None:
    """Serve one stolen connection with :class:`HttpRequestRouter`."""
    await HttpRequestRouter(client, header_filter, open_stolen, open_original).run()
