"""Stealing with an HTTP header filter, against real sandbox pods.

The web pod's "own app" is the test HTTP app (``steal_programs.py app``) on
:data:`APP_PORT`, recording the raw bytes it receives; the redirector in web's namespace
steals that port with a header filter, its local app (standing for the mirrord session)
recording too. Clients in the api pod send requests byte for byte as the test builds them,
so the tests can check where each one went, in what order the answers came back, and that
each side got exactly the bytes of its requests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
from steal_harness import (
    Redirector,
    delete_mirrord_tables,
    programs,
    raw_exchange,
    run_client,
    start_app,
)
from steal_programs import pattern_sha256

from mirrord_core.sandbox import PodSpec, Sandbox
from mirrord_network.agent.http_request_router import header_matches, looks_like_http1

APP_PORT = 9090
ECHO_PORT = 9191
FILTER = r"^x-mirrord: yes$"
MATCH = [["X-Mirrord", "yes"]]
BIG = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.create([PodSpec("web"), PodSpec("api")]) as sb:
        yield sb


class Setup:
    """The pod's app, the redirector stealing its port with :data:`FILTER`, and where
    each of them recorded the bytes it received."""

    def __init__(self, sandbox: Sandbox, tmp_path: Path, started: list[Any]) -> None:
        self.sandbox = sandbox
        self.started = started
        self.web, self.api = sandbox.pod("web"), sandbox.pod("api")
        self.pod_record, self.local_record, self.sent = (
            tmp_path / "pod",
            tmp_path / "local",
            tmp_path / "sent",
        )
        for directory in (self.pod_record, self.local_record, self.sent):
            directory.mkdir()
        self.app = start_app(self.web.netns, APP_PORT, "pod", record=self.pod_record)
        started.append(self.app)
        self.redirector = Redirector(self.web.netns, record=self.local_record)
        started.append(self.redirector)

    def steal(self, **options: Any) -> None:
        self.redirector.steal(APP_PORT, filter=FILTER, **options)

    def client(self, requests: list[dict[str, Any]], **options: Any) -> list[dict[str, Any]]:
        return run_client(
            self.api.netns, self.web.ip, APP_PORT, requests, raw_dir=self.sent, **options
        )

    def sent_bytes(self, indexes: list[int]) -> bytes:
        return b"".join((self.sent / f"{index}.raw").read_bytes() for index in indexes)


@pytest.fixture
def setup(sandbox: Sandbox, tmp_path: Path) -> Iterator[Setup]:
    try:
        with programs() as started:
            yield Setup(sandbox, tmp_path, started)
    finally:
        delete_mirrord_tables(sandbox.pod("web").netns)


def recorded(directory: Path) -> list[bytes]:
    """The raw bytes of each connection an app received, in order of connection."""
    files = sorted(directory.glob("*.raw"), key=lambda path: int(path.stem))
    return [path.read_bytes() for path in files]


def app_of(response: dict[str, Any]) -> str:
    return dict((name.lower(), value) for name, value in response["headers"])["x-app"]


def body_of(response: dict[str, Any]) -> dict[str, Any]:
    return json.loads(response["body"])


MIXED = [
    {"target": "/a", "headers": MATCH},
    {"target": "/b"},
    {"method": "POST", "target": "/c", "body_size": 1000, "headers": [["x-mIrRoRd", "YES"]]},
    # Odd spacing and casing, chunked with chunk extensions and a trailer: forwarded as is.
    {
        "method": "POST",
        "target": "/d",
        "body_size": 300_000,
        "chunked": True,
        "headers": [["X-ODD-case", "  spaced   value "], ["x-mirrord", "yes please"]],
    },
    {"method": "HEAD", "target": "/e", "headers": MATCH},
    {"method": "HEAD", "target": "/f"},
    {"method": "POST", "target": "/g", "body_size": 5000, "chunked": True, "headers": MATCH},
    {"target": "/h", "headers": [["X-Mirrord", "no"], ["X-Other", "x-mirrord: yes"]]},
]
MIXED_STOLEN = [0, 2, 4, 6]
MIXED_PASSED = [1, 3, 5, 7]


def check_mixed(setup: Setup, responses: list[dict[str, Any]]) -> None:
    assert [r.get("index") for r in responses] == list(range(len(MIXED)))
    for index, (spec, response) in enumerate(zip(MIXED, responses, strict=True)):
        expected = "local" if index in MIXED_STOLEN else "pod"
        assert response["status"] == 200
        assert app_of(response) == expected, (index, response)
        if spec.get("method") == "HEAD":
            assert response["body_len"] == 0
        else:
            body = body_of(response)
            assert (body["app"], body["target"]) == (expected, spec["target"])
            assert body["body_len"] == spec.get("body_size", 0)
            assert body["body_sha256"] == pattern_sha256(spec.get("body_size", 0))
    # One connection to each side, carrying exactly the bytes of its requests.
    assert recorded(setup.pod_record) == [setup.sent_bytes(MIXED_PASSED)]
    assert recorded(setup.local_record) == [setup.sent_bytes(MIXED_STOLEN)]


def test_one_keep_alive_connection_mixes_stolen_and_passed_requests(setup: Setup) -> None:
    setup.steal()
    check_mixed(setup, setup.client(MIXED))
    assert (
        len(setup.redirector.events_so_far()) == 1
    )  # the session was asked once for the connection


def test_pipelined_requests_are_answered_in_order(setup: Setup) -> None:
    setup.steal()
    check_mixed(setup, setup.client(MIXED, pipelined=True))


def test_large_bodies_are_streamed_both_ways(setup: Setup) -> None:
    setup.steal()
    redirector_pid = setup.redirector.process.pid
    baseline = peak_memory(redirector_pid)
    requests = [
        {"method": "POST", "target": "/up", "body_size": BIG, "chunked": True},
        {"method": "POST", "target": "/up", "body_size": BIG, "headers": MATCH},
        {"target": f"/big?size={BIG}&chunked=1", "headers": MATCH},
        {"target": f"/big?size={BIG}"},
    ]
    responses = setup.client(requests)
    assert [app_of(r) for r in responses] == ["pod", "local", "local", "pod"]
    for response in responses[:2]:
        assert (body_of(response)["body_len"], body_of(response)["body_sha256"]) == (
            BIG,
            pattern_sha256(BIG),
        )
    for response in responses[2:]:
        assert (response["body_len"], response["body_sha256"]) == (BIG, pattern_sha256(BIG))
    assert recorded(setup.pod_record) == [setup.sent_bytes([0, 3])]
    # The redirector process (which also runs the local app) never held a body whole.
    assert peak_memory(redirector_pid) - baseline < BIG // 2


def peak_memory(pid: int) -> int:
    """The peak resident set size of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_100_continue_comes_from_the_side_that_got_the_request(setup: Setup) -> None:
    setup.steal()
    requests = [
        {"method": "POST", "target": "/1", "body_size": 70_000, "expect_continue": True},
        {
            "method": "POST",
            "target": "/2",
            "body_size": 70_000,
            "expect_continue": True,
            "headers": MATCH,
        },
    ]
    responses = setup.client(requests)
    assert [(r["interim"], app_of(r)) for r in responses] == [([100], "pod"), ([100], "local")]
    assert [body_of(r)["body_len"] for r in responses] == [70_000, 70_000]


@pytest.mark.parametrize(("headers", "side"), [(MATCH, "local"), ([], "pod")])
def test_upgrade_becomes_a_tunnel_to_the_side_that_switched(
    setup: Setup, headers: list[list[str]], side: str
) -> None:
    setup.steal()
    requests = [
        {"target": "/before", "headers": MATCH},
        {"target": "/before"},
        {"target": "/upgrade", "upgrade": "ping over the tunnel", "headers": headers},
    ]
    responses = setup.client(requests)
    assert [app_of(r) for r in responses[:2]] == ["local", "pod"]
    assert responses[2]["status"] == 101
    assert responses[2]["echo"] == f"{side}:ping over the tunnel"


def test_connection_close_ends_the_client_connection(setup: Setup) -> None:
    setup.steal()
    requests = [{"target": "/a"}, {"target": "/b", "headers": MATCH, "close": True}]
    *responses, eof = setup.client(requests, read_eof=True)
    assert [app_of(r) for r in responses] == ["pod", "local"]
    assert eof == {"eof": True}


def test_a_side_closing_an_idle_connection_is_reconnected_for_the_next_request(
    setup: Setup,
) -> None:
    """Like a server's keep-alive timeout: the pod's app (then the session's) closes its
    connection after answering; the client's connection stays usable for both sides."""
    setup.steal()
    requests = [
        {"target": "/then-close"},
        {"target": "/then-close", "headers": MATCH},
        {"method": "POST", "target": "/after", "body_size": 10, "headers": MATCH},
        {"method": "POST", "target": "/after", "body_size": 10},
    ]
    responses = setup.client(requests)
    assert [(app_of(r), body_of(r)["target"]) for r in responses] == [
        ("pod", "/then-close"),
        ("local", "/then-close"),
        ("local", "/after"),
        ("pod", "/after"),
    ]
    assert recorded(setup.pod_record) == [setup.sent_bytes([0]), setup.sent_bytes([3])]
    assert recorded(setup.local_record) == [setup.sent_bytes([1]), setup.sent_bytes([2])]


def test_matching_requests_reach_the_pod_when_the_session_is_gone(setup: Setup) -> None:
    setup.steal(opener="fail")
    responses = setup.client([{"target": "/a", "headers": MATCH}, {"target": "/b"}])
    assert [app_of(r) for r in responses] == ["pod", "pod"]
    assert recorded(setup.pod_record) == [setup.sent_bytes([0, 1])]


@pytest.mark.parametrize(
    "data",
    [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),
        b"hello, this is not HTTP\r\n",
    ],
    ids=["http2-preface", "tls-client-hello", "text"],
)
def test_non_http_bytes_are_forwarded_raw_to_the_pod(setup: Setup, data: bytes) -> None:
    setup.started.append(start_app(setup.web.netns, ECHO_PORT, echo=True))
    setup.redirector.steal(ECHO_PORT, filter=FILTER)
    reply = raw_exchange(setup.api.netns, setup.web.ip, ECHO_PORT, data)
    assert reply == {"raw": data.hex()}
    assert setup.redirector.events_so_far() == []  # the session was never asked


# -- the router's decisions, on their own ----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (b"", None),
        (b"GE", None),
        (b"GET /index.html HTT", None),
        (b"GET / HTTP/1.1\r", None),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", True),
        (b"M-SEARCH * HTTP/1.1\r\n", True),
        (b"PRI * HTTP/2.0\r\n", False),
        (b"GET / HTTP/2", False),
        (b" GET / HTTP/1.1\r\n", False),
        (b"GET  / HTTP/1.1\r\n", False),
        (b"\x16\x03\x01", False),
        (b"GET /\x00", False),
    ],
)
def test_http1_detection(data: bytes, verdict: bool | None) -> None:
    assert looks_like_http1(data) is verdict


def test_header_lines_are_matched_as_name_colon_value() -> None:
    request = h11.Request(
        method="GET", target="/", headers=[("Host", "x"), ("X-User", "alice@example.com")]
    )
    assert header_matches(request, re.compile(r"X-User: alice"))
    assert header_matches(request, re.compile(r"^x-user: .*@example\.com$", re.I))
    assert not header_matches(request, re.compile(r"^alice"))
    assert not header_matches(request, re.compile(r"X-User: bob"))
