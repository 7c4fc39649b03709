"""Hostile peers against a real agent: garbage, oversized frames, wrong tokens, malformed
and absurd requests, floods and fuzzed requests. Each gets an error or a closed
connection; the agent keeps serving a well-behaved client throughout and never reveals or
changes anything outside the target's root."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import struct
import time
import types
import typing
from collections.abc import Iterator
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirrord_core.protocol import (
    PROTOCOL_VERSION,
    ErrorResponse,
    Hello,
    Message,
    Ping,
    ProtocolError,
    Refused,
    Request,
    Response,
    Welcome,
    default_codec,
)
from mirrord_core.protocol.framing import MAX_FRAME_SIZE
from mirrord_core.sandbox import PodSpec, Sandbox
from mirrord_core.session import RemoteRequestError, Session, SessionError
from mirrord_core.target_model import AgentEndpoint
from mirrord_env.messages import GetEnv
from mirrord_fs import messages as fs
from mirrord_fs.agent import handlers as fs_agent
from mirrord_fs.local.remote_files import RemoteFiles
from mirrord_network.messages import Resolve

CONFIG = b"name: target\n"
EXTRA_PODS = [
    PodSpec("target", files={"/app/config.txt": CONFIG}),
    PodSpec("fuzzed", files={"/app/config.txt": CONFIG}),
]
codec = default_codec()


@pytest.fixture(scope="module")
def pods(sandbox: Sandbox, host_secret: Any) -> dict[str, Any]:
    """The two pods, each with links that escape its root for a naive implementation."""
    for name in ("target", "fuzzed"):
        app = sandbox.pod(name).root / "app"
        (app / "leak").symlink_to("../" * 16 + str(host_secret.file).lstrip("/"))
        (app / "hostdir").symlink_to(str(host_secret.directory))
    return {"target": sandbox.pod("target"), "fuzzed": sandbox.pod("fuzzed")}


@pytest.fixture(autouse=True)
def host_untouched(host_secret: Any) -> Iterator[None]:
    before = host_secret.snapshot()
    yield
    assert host_secret.snapshot() == before


# -- raw peers -----------------------------------------------------------------------------


class RawPeer:
    """A TCP connection to the agent that speaks (or breaks) the protocol by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, endpoint: AgentEndpoint) -> RawPeer:
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def send_message(self, message: Message) -> None:
        await self.send(codec.encode_frame(message))

    async def send_body(self, body: Any) -> None:
        """A frame whose body is ``body`` msgpack-encoded (any value, valid or not)."""
        packed = msgpack.packb(body, use_bin_type=True)
        await self.send(struct.pack(">I", len(packed)) + packed)

    async def receive(self, timeout: float = 5.0) -> Message | None:
        """The next message, or ``None`` at end of stream."""
        async with asyncio.timeout(timeout):
            try:
                header = await self.reader.readexactly(4)
            except asyncio.IncompleteReadError:
                return None
            except ConnectionError:
                return None
            (size,) = struct.unpack(">I", header)
            return codec.decode(await self.reader.readexactly(size))

    async def until_closed(self, timeout: float = 5.0) -> list[Message]:
        """Every message the agent sends until it closes the connection."""
        messages = []
        while (message := await self.receive(timeout)) is not None:
            messages.append(message)
        return messages

    async def handshake(self, token: str) -> None:
        await self.send_message(
            Hello(protocol_version=PROTOCOL_VERSION, token=token, client_name="raw")
        )
        assert isinstance(await self.receive(), Welcome)

    def close(self) -> None:
        self.writer.transport.abort()


async def healthy(session: Session) -> None:
    """The well-behaved client is served promptly and correctly."""
    started = time.monotonic()
    files = RemoteFiles(session)
    assert await files.read_file("/app/config.txt") == CONFIG
    with pytest.raises(FileNotFoundError):
        await files.read_file("/app/leak")
    assert await session.ping(timeout=5) < 5
    assert time.monotonic() - started < 5


def guarded(pod: Any, agent_for: Any, open_session: Any, run: Any) -> tuple[AgentEndpoint, Any]:
    """An agent for ``pod`` and a runner that keeps a well-behaved client connected."""
    endpoint = agent_for(pod.pid)

    def call(body: Any, timeout: float = 60.0) -> Any:
        async def go() -> Any:
            async with open_session(endpoint, "well-behaved") as session:
                await healthy(session)
                result = await body(session)
                await healthy(session)
                return result

        return run(go(), timeout)

    return endpoint, call


def only_errors(messages: list[Message]) -> list[str]:
    """What the agent said before closing: it may only be an explanation of the refusal."""
    for message in messages:
        assert isinstance(message, ProtocolError | Refused), message
    return [getattr(m, "message", None) or getattr(m, "reason", "") for m in messages]


# -- before the handshake ----------------------------------------------------------------


GARBAGE = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n", "exceeds", id="http-request"),
    pytest.param(b"\xff\xff\xff\xff" + b"x" * 64, "exceeds", id="oversized-prefix"),
    pytest.param(struct.pack(">I", 64 * 1024 + 1) + b"x" * 100, "exceeds", id="above-hello-limit"),
    pytest.param(struct.pack(">I", 3) + b"\xc1\xc1\xc1", "not valid msgpack", id="bad-msgpack"),
    pytest.param(struct.pack(">I", 1) + b"\x93", "not valid msgpack", id="truncated-msgpack"),
    pytest.param(codec.encode_frame(Ping(nonce=1)), "expected a 'hello'", id="ping-first"),
    pytest.param(
        codec.encode_frame(Request(id=1, payload=GetEnv())),
        "expected a 'hello'",
        id="request-first",
    ),
    pytest.param(b"\x00\x00\x00\x00", "not valid msgpack", id="empty-frame"),
    pytest.param(
        struct.pack(">I", 8) + b"\x81\xa1t\xa4h\xffl\xff",
        "not valid msgpack",
        id="invalid-utf8-text",
    ),
]


@pytest.mark.parametrize(("data", "complaint"), GARBAGE)
def test_garbage_before_the_handshake_is_refused(
    pods: dict[str, Any], agent_for: Any, open_session: Any, run: Any, data: bytes, complaint: str
) -> None:
    endpoint, call = guarded(pods["target"], agent_for, open_session, run)

    async def body(session: Session) -> None:
        peer = await RawPeer.connect(endpoint)
        await peer.send(data)
        said = only_errors(await peer.until_closed())
        assert len(said) == 1 and complaint in said[0], said
        peer.close()

    call(body)


@pytest.mark.parametrize(
    ("hello", "complaint"),
    [
        pytest.param({"token": "0" * 64}, "invalid session token", id="wrong-token"),
        pytest.param({"token": ""}, "invalid session token", id="empty-token"),
        pytest.param({"protocol_version": 999}, "unsupported protocol version", id="version"),
        pytest.param({"token": 12345}, "expected a string", id="token-not-a-string"),
        pytest.param({"extra": 1}, "extra", id="unknown-field"),
    ],
)
def test_a_bad_hello_is_refused(
    pods: dict[str, Any],
    agent_for: Any,
    open_session: Any,
    run: Any,
    hello: dict[str, Any],
    complaint: str,
) -> None:
    endpoint, call = guarded(pods["target"], agent_for, open_session, run)

    async def body(session: Session) -> None:
        peer = await RawPeer.connect(endpoint)
        fields = {"t": "hello", "protocol_version": PROTOCOL_VERSION, "client_name": "x"}
        fields["token"] = endpoint.token
        fields.update(hello)
        await peer.send_body(fields)
        said = only_errors(await peer.until_closed())
        assert len(said) == 1 and complaint in said[0], said
        peer.close()

    call(body)


def test_many_hostile_connections_at_once(
    pods: dict[str, Any], agent_for: Any, open_session: Any, run: Any
) -> None:
    endpoint, call = guarded(pods["target"], agent_for, open_session, run)

    async def one(index: int) -> list[Message]:
        peer = await RawPeer.connect(endpoint)
        kinds = [os.urandom(200), b"\xff" * 8, codec.encode_frame(Ping(nonce=index))]
        await peer.send(kinds[index % len(kinds)])
        try:
            return await peer.until_closed()
        finally:
            peer.close()

    async def vanishing() -> None:
        peer = await RawPeer.connect(endpoint)
        await peer.send(b"\x00\x00")  # half a header, then gone
        peer.close()

    async def silent() -> RawPeer:
        return await RawPeer.connect(endpoint)  # says nothing (handshake timeout later)

    async def body(session: Session) -> None:
        quiet = [await silent() for _ in range(20)]
        results = await asyncio.gather(
            *(one(i) for i in range(60)), *(vanishing() for _ in range(20))
        )
        for messages in results[:60]:
            only_errors(messages)
        await healthy(session)  # the silent peers hold nothing the others need
        for peer in quiet:
            peer.close()

    call(body)


# -- after the handshake ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        pytest.param([1, 2, 3], "invalid message", id="not-a-map"),
        pytest.param({"t": "no.such.message"}, "unknown message type", id="unknown-tag"),
        pytest.param(
            {"t": "request", "id": 1, "payload": {"t": "no.such.request"}},
            "unknown message type",
            id="unknown-payload",
        ),
        pytest.param(
            {"t": "request", "id": 1, "payload": {"t": "fs.open", "path": "/x"}},
            "flags",
            id="missing-field",
        ),
        pytest.param(
            {"t": "request", "id": 1, "payload": {"t": "fs.open", "path": b"/x", "flags": 0}},
            "expected a string",
            id="bytes-for-str",
        ),
        pytest.param(
            {
                "t": "request",
                "id": 1,
                "payload": {"t": "fs.read", "handle": "1", "offset": 0, "size": 1},
            },
            "expected an integer",
            id="str-for-int",
        ),
        pytest.param(
            {
                "t": "request",
                "id": 1,
                "payload": {"t": "fs.read", "handle": 1.0, "offset": 0, "size": 1},
            },
            "expected an integer",
            id="float-for-int",
        ),
        pytest.param({"t": "request", "id": 0, "payload": {"t": "env.get"}}, "id", id="id-zero"),
        pytest.param(
            {"t": "welcome", "protocol_version": 1, "session_id": "x"}, "welcome", id="welcome"
        ),
        pytest.param(
            {"t": "stream_data", "stream_id": 7, "data": b"x"}, "never opened", id="stray-data"
        ),
        pytest.param(
            {"t": "response", "id": 5, "payload": {"t": "ok"}}, "never sent", id="stray-response"
        ),
    ],
)
def test_malformed_messages_after_the_handshake_close_that_connection_only(
    pods: dict[str, Any], agent_for: Any, open_session: Any, run: Any, body: Any, complaint: str
) -> None:
    endpoint, call = guarded(pods["target"], agent_for, open_session, run)

    async def attack(session: Session) -> None:
        peer = await RawPeer.connect(endpoint)
        await peer.handshake(endpoint.token)
        await peer.send_body(body)
        said = only_errors(await peer.until_closed())
        assert len(said) == 1 and complaint in said[0], said
        peer.close()

    call(attack)


def test_requests_nobody_handles_are_answered_unsupported(
    pods: dict[str, Any], agent_for: Any, open_session: Any, run: Any
) -> None:
    endpoint, call = guarded(pods["target"], agent_for, open_session, run)

    async def attack(session: Session) -> None:
        peer = await RawPeer.connect(endpoint)
        await peer.handshake(endpoint.token)
        payloads: list[Message] = [
            Hello(protocol_version=PROTOCOL_VERSION, token=endpoint.token, client_name="x"),
            Ping(nonce=1),
            fs.FsData(data=b"x"),  # an answer type, not a request
        ]
        for request_id, payload in enumerate(payloads, start=1):
            await peer.send_message(Request(id=request_id, payload=payload))
            answer = await peer.receive()
            while isinstance(answer, Ping):  # heartbeats may come in between
                answer = await peer.receive()
            assert isinstance(answer, ErrorResponse), answer
            assert (answer.id, answer.code) == (request_id, "unsupported")
        await peer.send_message(Request(id=9, payload=fs.FsStat(path="/app/config.txt")))
        answer = await peer.receive()
        while isinstance(answer, Ping):
            answer = await peer.receive()
        assert isinstance(answer, Response) and answer.payload.size == len(CONFIG)
        peer.close()

    call(attack)


def test_an_oversized_frame_after_the_handshake_is_refused_unread(
    pods: dict[str, Any], agent_for: Any, open_session: Any, run: Any
) -> None:
    endpoint, call = guarded(pods["target"], agent_for, open_session, run)

    async def attack(session: Session) -> None:
        peer = await RawPeer.connect(endpoint)
        await peer.handshake(endpoint.token)
        await peer.send(struct.pack(">I", MAX_FRAME_SIZE + 1) + b"x" * 1000)
        said = only_errors(await peer.until_closed())
        assert len(said) == 1 and "exceeds the maximum frame size" in said[0]
        peer.close()

    call(attack)


ABSURD_REQUESTS: list[tuple[str, Message, int]] = [
    ("NUL in a path", fs.FsOpen(path="/app/config.txt\0/../../x", flags=0), errno.EINVAL),
    ("NUL in a stat", fs.FsStat(path="/app\0"), errno.EINVAL),
    ("NUL in mkdir", fs.FsMkdir(path="/tmp/a\0b"), errno.EINVAL),
    ("NUL in rename", fs.FsRename(source="/app/config.txt", destination="/tmp/\0"), errno.EINVAL),
    ("relative open", fs.FsOpen(path="app/config.txt", flags=0), errno.EINVAL),
    ("relative dotdot", fs.FsStat(path="../../etc/passwd"), errno.EINVAL),
    ("empty path", fs.FsReaddir(path=""), errno.EINVAL),
    ("negative offset", fs.FsRead(handle=1, offset=-1, size=10), errno.EINVAL),
    ("negative size", fs.FsRead(handle=1, offset=0, size=-10), errno.EINVAL),
    ("offset beyond off_t", fs.FsRead(handle=1, offset=2**64 - 1, size=10), errno.EINVAL),
    ("negative write offset", fs.FsWrite(handle=1, offset=-5, data=b"x"), errno.EINVAL),
    ("write offset beyond off_t", fs.FsWrite(handle=1, offset=2**63, data=b"x"), errno.EINVAL),
    ("negative truncate", fs.FsTruncate(path="/app/config.txt", length=-1), errno.EINVAL),
    (
        "truncate beyond off_t",
        fs.FsTruncate(path="/app/config.txt", length=2**64 - 1),
        errno.EINVAL,
    ),
    ("mode beyond int", fs.FsMkdir(path="/tmp/m", mode=2**40), errno.EINVAL),
    ("open flags all set", fs.FsOpen(path="/app/config.txt", flags=-1), errno.EINVAL),
    ("open flags beyond int", fs.FsOpen(path="/app/config.txt", flags=2**63), errno.EINVAL),
    ("access mode nonsense", fs.FsAccess(path="/app/config.txt", mode=-1), errno.EINVAL),
    ("huge name", fs.FsStat(path="/" + "a" * 5000), errno.ENAMETOOLONG),
    ("deep path", fs.FsStat(path="/a" * 3000), errno.ENAMETOOLONG),
    ("unknown handle", fs.FsRead(handle=2**63 - 1, offset=0, size=1), errno.EBADF),
    ("negative handle", fs.FsClose(handle=-1), errno.EBADF),
    ("fstat of nothing", fs.FsFstat(handle=0), errno.EBADF),
    ("rmdir of the root", fs.FsRmdir(path="/"), errno.EINVAL),
    ("unlink of the root", fs.FsUnlink(path="/"), errno.EINVAL),
    ("rename of the root", fs.FsRename(source="/", destination="/tmp/root"), errno.EINVAL),
    ("rmdir of dotdot", fs.FsRmdir(path="/tmp/.."), errno.EINVAL),
]


def test_absurd_requests_get_errno_answers_and_the_connection_stays_open(
    pods: dict[str, Any], agent_for: Any, open_session: Any, run: Any
) -> None:
    endpoint, call = guarded(pods["target"], agent_for, open_session, run)

    async def attack(session: Session) -> list[str]:
        async with open_session(endpoint, "absurd") as absurd:
            handle = await RemoteFiles(absurd).open("/app/config.txt")
            assert handle == 1
            wrong = []
            for description, request, expected in ABSURD_REQUESTS:
                try:
                    answer = await absurd.request(request, timeout=10)
                except OSError as err:
                    if err.errno != expected:
                        wrong.append(
                            f"{description}: {err!r}, expected {errno.errorcode[expected]}"
                        )
                else:
                    wrong.append(f"{description}: answered {answer!r:.100}")
            # Reading far past the end, or asking for far too much, is merely short.
            far = await absurd.request(fs.FsRead(handle=1, offset=2**40, size=2**63 - 1))
            assert far.data == b""
            whole = await absurd.request(fs.FsRead(handle=1, offset=0, size=2**64 - 1))
            assert whole.data == CONFIG
            assert await absurd.ping() < 5
            return wrong

    assert call(attack) == []
    assert (pods["target"].root / "app/config.txt").read_bytes() == CONFIG


def test_a_flood_of_requests_never_read_does_not_starve_others(
    pods: dict[str, Any], agent_for: Any, open_session: Any, run: Any
) -> None:
    """A peer pipelining requests without reading answers is held back by TCP and the
    agent's output limit; the well-behaved client is served all along."""
    endpoint, call = guarded(pods["target"], agent_for, open_session, run)

    async def attack(session: Session) -> None:
        peer = await RawPeer.connect(endpoint)
        await peer.handshake(endpoint.token)
        frames = b"".join(
            codec.encode_frame(Request(id=i, payload=fs.FsReaddir(path="/bin")))
            for i in range(1, 3001)
        )
        peer.writer.write(frames)  # not drained: the kernel buffers what it can
        for _ in range(5):
            await healthy(session)
            await asyncio.sleep(0.1)
        peer.close()
        await healthy(session)

    call(attack)


def test_a_stream_whose_reader_never_reads_stalls_only_itself(
    pods: dict[str, Any], agent_for: Any, open_session: Any, run: Any
) -> None:
    (pods["target"].root / "app" / "big.bin").write_bytes(os.urandom(8 << 20))
    endpoint, call = guarded(pods["target"], agent_for, open_session, run)

    async def attack(session: Session) -> None:
        async with open_session(endpoint, "stalled") as stalled:
            streams = [
                await stalled.open_stream(fs.READ_FILE_STREAM, fs.FsReadFile(path="/app/big.bin"))
                for _ in range(20)
            ]
            for _ in range(3):
                await healthy(session)
                assert await stalled.ping(timeout=5) < 5  # its own connection is fine too
            for stream in streams:
                stream.reset("done")

    call(attack)


# -- fuzzing ------------------------------------------------------------------------------------

INTERESTING_PATHS = [
    "/",
    "/app",
    "/app/config.txt",
    "/app/leak",
    "/app/hostdir",
    "/app/hostdir/secret.txt",
    "/app/../../../../..",
    "/tmp",
    "/tmp/fuzz",
    "/tmp/fuzz/file",
    "/dev/zero",
    "/dev/full",
    "/dev/null",
    "/proc/self/root",
    "/etc/passwd",
    "/bin/busybox",
    "relative",
    "",
    "/a\0b",
    "//",
    "/.",
    "/..",
]
paths = st.one_of(
    st.sampled_from(INTERESTING_PATHS),
    st.tuples(
        st.sampled_from(["/", "/app/", "/tmp/", "/tmp/fuzz/", "/app/hostdir/", "/app/leak/"]),
        st.one_of(
            st.sampled_from(["", "file", "dir", "..", "../..", "config.txt"]), st.text(max_size=12)
        ),
    ).map("".join),
    st.text(max_size=40),  # anything at all, relative paths included
)
integers = st.one_of(
    st.sampled_from([0, 1, 2, 3, -1, 2**31 - 1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1]),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(min_value=0, max_value=4),
)
sizes = st.one_of(integers, st.integers(min_value=0, max_value=1 << 20))
flag_sets = st.lists(
    st.sampled_from(
        [
            os.O_RDONLY,
            os.O_WRONLY,
            os.O_RDWR,
            os.O_CREAT,
            os.O_EXCL,
            os.O_TRUNC,
            os.O_APPEND,
            os.O_DIRECTORY,
            os.O_NOFOLLOW,
            os.O_PATH,
            os.O_TMPFILE,
            os.O_NONBLOCK,
            os.O_SYNC,
            os.O_NOATIME,
        ]
    ),
    max_size=4,
).map(lambda flags: sum(set(flags)))
open_flags = st.one_of(flag_sets, flag_sets, flag_sets, integers)  # mostly valid flags
modes = st.one_of(integers, st.sampled_from([0o644, 0o755, 0o7777, 0]))
REQUESTS = st.one_of(
    st.builds(fs.FsOpen, path=paths, flags=open_flags, mode=modes),
    st.builds(fs.FsOpen, path=st.sampled_from(INTERESTING_PATHS), flags=open_flags, mode=modes),
    st.builds(fs.FsRead, handle=integers, offset=integers, size=sizes),
    st.builds(fs.FsWrite, handle=integers, offset=integers, data=st.binary(max_size=4096)),
    st.builds(fs.FsClose, handle=integers),
    st.builds(fs.FsStat, path=paths, follow_symlinks=st.booleans()),
    st.builds(fs.FsFstat, handle=integers),
    st.builds(fs.FsAccess, path=paths, mode=integers),
    st.builds(fs.FsReadlink, path=paths),
    st.builds(fs.FsReaddir, path=paths),
    st.builds(fs.FsMkdir, path=paths, mode=modes),
    st.builds(fs.FsUnlink, path=paths),
    st.builds(fs.FsRmdir, path=paths),
    st.builds(fs.FsRename, source=paths, destination=paths),
    st.builds(fs.FsTruncate, path=paths, length=st.one_of(integers, st.integers(0, 1 << 20))),
    st.builds(fs.FsStatfs, path=paths),
    st.builds(fs.FsReadFile, path=paths),
    st.builds(
        Resolve,
        name=st.one_of(st.text(max_size=80), st.sampled_from(["api", "web"])),
        family=integers,
    ),
    st.just(GetEnv()),
    st.deferred(lambda: other_fs_requests),
)


def _field_strategy(name: str, annotation: Any) -> st.SearchStrategy[Any] | None:
    """Random values for one field of a request, by its type (None: unsupported type)."""
    if annotation is str:
        return paths if name in ("path", "source", "destination", "target") else st.text()
    if annotation is int:
        return integers
    if annotation is bytes:
        return st.binary(max_size=4096)
    if annotation is bool:
        return st.booleans()
    if typing.get_origin(annotation) is typing.Literal:
        return st.sampled_from(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arms = [_field_strategy(name, arm) for arm in typing.get_args(annotation)]
        if annotation is not type(None) and all(arm is not None for arm in arms):
            return st.one_of(*arms)  # type: ignore[arg-type]
    if annotation is type(None):
        return st.none()
    return None


def _generic_requests() -> st.SearchStrategy[Message]:
    """Every fs request the agent handles, with random values in each field by type, so
    requests added later are fuzzed too."""
    strategies = []
    for message in fs_agent.AGENT_HANDLERS.requests:
        hints = typing.get_type_hints(message)
        fields = {}
        for field in attrs.fields(message):
            strategy = _field_strategy(field.name, hints[field.name])
            if strategy is None:
                break
            fields[field.name] = strategy
        else:
            strategies.append(st.builds(message, **fields))
    assert len(strategies) >= 15, strategies
    return st.one_of(*strategies)


other_fs_requests = _generic_requests()


def test_fuzzed_requests_are_answered_and_the_agent_never_dies(
    pods: dict[str, Any], host_secret: Any, agent_for: Any, agent_pid: Any
) -> None:
    pod = pods["fuzzed"]
    (pod.root / "tmp" / "fuzz").mkdir()
    endpoint = agent_for(pod.pid)
    loop = asyncio.new_event_loop()
    answered: dict[str, int] = {}

    async def connect() -> tuple[Session, Session]:
        return (
            await Session.connect(endpoint, client_name="fuzzer"),
            await Session.connect(endpoint, client_name="well-behaved"),
        )

    fuzzer, bystander = loop.run_until_complete(connect())

    async def send(request: Message) -> None:
        if isinstance(request, fs.FsReadFile):
            try:
                stream = await fuzzer.open_stream(fs.READ_FILE_STREAM, request, timeout=10)
            except OSError:
                answered["stream refused"] = answered.get("stream refused", 0) + 1
                return
            first = await asyncio.wait_for(stream.read(), 10)
            assert host_secret.content not in first
            stream.reset("enough")
            answered["stream"] = answered.get("stream", 0) + 1
            return
        try:
            answer = await fuzzer.request(request, timeout=10)
        except OSError as err:
            assert err.errno is not None
            answered[errno.errorcode.get(err.errno, str(err.errno))] = 1 + answered.get(
                errno.errorcode.get(err.errno, str(err.errno)), 0
            )
            return
        except RemoteRequestError as err:
            # Resolve failures are name errors by design; anything else is a bug.
            assert isinstance(request, Resolve) and err.code != "internal_error", err
            answered[err.code] = answered.get(err.code, 0) + 1
            return
        answered[answer.TAG] = answered.get(answer.TAG, 0) + 1
        data = getattr(answer, "data", b"")
        assert host_secret.content not in data
        assert host_secret.directory.name not in getattr(answer, "names", [])

    @settings(
        max_examples=250,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(REQUESTS, min_size=1, max_size=6))
    def fuzz(requests: list[Message]) -> None:
        async def batch() -> None:
            for request in requests:
                await send(request)
            assert await bystander.ping(timeout=5) < 5

        loop.run_until_complete(asyncio.wait_for(batch(), 60))

    try:
        fuzz()
        assert not fuzzer.connection.closed and not bystander.connection.closed
        assert os.path.exists(f"/proc/{agent_pid(endpoint)}")
        # Both kinds of answer were exercised.
        assert answered.get("EINVAL", 0) > 0 and answered.get("ok", 0) > 0, answered

        async def after() -> None:
            # Whatever the fuzzer renamed or removed in the pod, nothing reaches the host.
            files = RemoteFiles(bystander)
            for path in ("/app/leak", "/app/hostdir/secret.txt", "/../../" + str(host_secret.file)):
                with pytest.raises(OSError):
                    await files.read_file(path)

        loop.run_until_complete(after())
    finally:

        async def close() -> None:
            for session in (fuzzer, bystander):
                with contextlib.suppress(SessionError):
                    await session.close()

        loop.run_until_complete(close())
        loop.close()
    # Nothing was created outside the pod: the host's secret directory is checked by the
    # autouse fixture; the pod's own root is where every write landed.
    assert host_secret.file.read_bytes() == host_secret.content
