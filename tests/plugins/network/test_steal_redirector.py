"""The agent's steal redirector against real sandbox pods.

The redirector runs in the ``web`` pod's network namespace (``steal_programs.py
redirector``), with a "local app" standing for the mirrord session; clients run in the
``api`` pod and connect to web's address, as the pod's real clients would. Nothing but
nftables and the redirector can make web's traffic reach the local app.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest
from steal_harness import (
    Redirector,
    delete_mirrord_tables,
    mirrord_tables,
    nft,
    poll,
    programs,
    run_client,
    set_ports,
    start_app,
    start_client,
)

from mirrord_core.sandbox import PodSpec, Sandbox
from mirrord_network.agent.nft_steal_table import ELEMENT_TIMEOUT, NftablesError, run_nft

POD_PAGE = "pod web in namespace default\n"
KEEP_ALIVE_PORT = 9090


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.create([PodSpec("web"), PodSpec("api")]) as sb:
        yield sb


@pytest.fixture
def started(sandbox: Sandbox) -> Iterator[list]:
    """Programs to kill after the test; the web pod's mirrord tables are deleted too."""
    try:
        with programs() as running:
            yield running
    finally:
        delete_mirrord_tables(sandbox.pod("web").netns)


def wget(sandbox: Sandbox, port: int = 8080) -> str:
    """GET web's ``/`` from the api pod with busybox wget; the body (or the error)."""
    url = f"http://{sandbox.pod('web').ip}:{port}/"
    done = sandbox.exec_in("api", ["/bin/busybox", "wget", "-qO-", url], text=True, timeout=30)
    return done.stdout if done.returncode == 0 else f"error: {done.stderr.strip()}"


def answered_by(body: str) -> str:
    """``local`` for the redirector's local app, ``pod`` for the pod's own server."""
    if body == POD_PAGE:
        return "pod"
    return json.loads(body)["app"]


def test_whole_port_steal_redirects_new_connections_until_released(sandbox, started) -> None:
    web, api = sandbox.pod("web"), sandbox.pod("api")
    redirector = Redirector(web.netns)
    started.append(redirector)
    assert wget(sandbox) == POD_PAGE

    redirector.steal(8080)
    elements = json.loads(nft(web.netns, "-j", "list", "set", "inet", redirector.table, "ports"))
    (port_set,) = [item["set"] for item in elements["nftables"] if "set" in item]
    # The port expires by itself 3 s after the last refresh: a dead agent stops stealing.
    assert [(e["elem"]["val"], e["elem"]["timeout"]) for e in port_set["elem"]] == [(8080, 3)]
    assert answered_by(wget(sandbox)) == "local"
    opened = redirector.wait_for_event("opened")
    assert opened["client"][0] == api.ip
    assert opened["destination"] == [web.ip, 8080]

    redirector.command("release", port=8080)
    assert set_ports(web.netns, redirector.table) == []
    assert wget(sandbox) == POD_PAGE


def test_ports_stay_stolen_beyond_the_element_timeout(sandbox, started) -> None:
    """The refresher keeps a stolen port in the set although each element lives 3 s."""
    web = sandbox.pod("web")
    redirector = Redirector(web.netns)
    started.append(redirector)
    redirector.steal(8080)
    time.sleep(ELEMENT_TIMEOUT + 2)  # a wait, not a measurement: nothing asserts its length
    assert set_ports(web.netns, redirector.table) == [8080]
    assert answered_by(wget(sandbox)) == "local"


def test_a_connection_in_flight_finishes_after_release(sandbox, started) -> None:
    web, api = sandbox.pod("web"), sandbox.pod("api")
    redirector = Redirector(web.netns)
    started.append(redirector)
    redirector.steal(8080)
    client = start_client(
        api.netns, web.ip, 8080, [{"target": "/1"}, {"target": "/2", "pause": True}]
    )
    started.append(client)
    assert json.loads(client.read_json()["body"])["app"] == "local"
    assert client.read_json() == {"paused": 1}

    redirector.command("release", port=8080)
    assert wget(sandbox) == POD_PAGE  # new connections reach the pod
    client.send("go")
    second = json.loads(client.read_json()["body"])
    assert (second["app"], second["target"]) == ("local", "/2")


def test_two_steals_of_one_port_the_second_is_refused(sandbox, started) -> None:
    web = sandbox.pod("web")
    first, other_agent = Redirector(web.netns), Redirector(web.netns)
    started += [first, other_agent]
    first.steal(8080)

    again = first.command("steal", port=8080)
    assert again["type"] == "PortAlreadyStolen"
    assert again["error"] == "port 8080 is already stolen by another mirrord session"
    # Another agent in the same pod sees the first one's table.
    elsewhere = other_agent.command("steal", port=8080)
    assert elsewhere == again
    assert answered_by(wget(sandbox)) == "local"

    first.command("release", port=8080)
    other_agent.steal(8080)
    assert answered_by(wget(sandbox)) == "local"
    assert other_agent.wait_for_event("opened")["destination"][1] == 8080


def test_a_session_that_is_gone_leaves_connections_to_the_pod(sandbox, started) -> None:
    web = sandbox.pod("web")
    redirector = Redirector(web.netns)
    started.append(redirector)
    redirector.steal(8080, opener="fail")
    assert wget(sandbox) == POD_PAGE
    assert redirector.wait_for_event("refused")["client"][0] == sandbox.pod("api").ip


def test_close_and_normal_exit_leave_no_table(sandbox, started) -> None:
    web = sandbox.pod("web")
    closed, exiting = Redirector(web.netns), Redirector(web.netns)
    started += [closed, exiting]
    closed.steal(8080)
    exiting.steal(KEEP_ALIVE_PORT)
    assert sorted(mirrord_tables(web.netns)) == sorted([closed.table, exiting.table])

    closed.command("close")
    assert mirrord_tables(web.netns) == [exiting.table]
    assert wget(sandbox) == POD_PAGE
    # End of input: the program leaves its command loop and exits normally.
    assert exiting.process.stdin is not None
    exiting.process.stdin.close()
    assert exiting.process.wait(timeout=30) == 0
    assert mirrord_tables(web.netns) == []


def test_killed_agent_stops_stealing_by_itself_and_its_table_is_swept(sandbox, started) -> None:
    web = sandbox.pod("web")
    live, killed = Redirector(web.netns), Redirector(web.netns)
    started += [live, killed]
    killed.steal(8080)
    assert answered_by(wget(sandbox)) == "local"

    killed.kill()  # SIGKILL: no cleanup code runs
    # Nobody removes anything: the set's element times out and the pod answers again.
    assert poll(lambda: wget(sandbox) == POD_PAGE)
    assert set_ports(web.netns, killed.table) == []
    assert killed.table in mirrord_tables(web.netns)

    # The next agent deletes the dead agent's table, and only that one.
    successor = Redirector(web.netns)
    started.append(successor)
    assert sorted(mirrord_tables(web.netns)) == sorted([live.table, successor.table])


def test_flush_connections_aborts_established_connections(sandbox, started) -> None:
    web, api = sandbox.pod("web"), sandbox.pod("api")
    started.append(start_app(web.netns, KEEP_ALIVE_PORT, "pod"))
    redirector = Redirector(web.netns)
    started.append(redirector)
    requests = [{"target": "/1"}, {"target": "/2", "pause": True}]

    # Without flush_connections, an established keep-alive connection is not redirected.
    kept = start_client(api.netns, web.ip, KEEP_ALIVE_PORT, requests)
    started.append(kept)
    assert json.loads(kept.read_json()["body"])["app"] == "pod"
    assert kept.read_json() == {"paused": 1}
    redirector.steal(KEEP_ALIVE_PORT)
    kept.send("go")
    assert json.loads(kept.read_json()["body"])["app"] == "pod"
    redirector.command("release", port=KEEP_ALIVE_PORT)

    # With it, the connection is aborted when stealing starts; its client reconnects.
    flushed = start_client(api.netns, web.ip, KEEP_ALIVE_PORT, requests)
    started.append(flushed)
    assert json.loads(flushed.read_json()["body"])["app"] == "pod"
    assert flushed.read_json() == {"paused": 1}
    redirector.steal(KEEP_ALIVE_PORT, flush=True)
    flushed.send("go")
    assert "error" in flushed.read_json()
    (again,) = run_client(api.netns, web.ip, KEEP_ALIVE_PORT, [{"target": "/3"}])
    assert json.loads(again["body"])["app"] == "local"


V6_ADDRESSES = {"web": "fd00:5ee1::10", "api": "fd00:5ee1::11"}


def _ipv6_addresses(sandbox: Sandbox, action: str) -> None:
    """Add (or delete) the :data:`V6_ADDRESSES` on the pods' ``eth0``."""
    for pod, address in V6_ADDRESSES.items():
        argv = ["ip", "-6", "addr", action, f"{address}/64", "dev", "eth0"]
        netns_exec = ["ip", "netns", "exec", sandbox.pod(pod).netns]
        extra = ["nodad"] if action == "add" else []
        subprocess.run([*netns_exec, *argv, *extra], check=action == "add")


def test_ipv6_connections_are_stolen(sandbox, started) -> None:
    web, api = sandbox.pod("web"), sandbox.pod("api")
    _ipv6_addresses(sandbox, "add")
    try:
        redirector = Redirector(web.netns)
        started.append(redirector)
        redirector.steal(8080)
        (response,) = run_client(api.netns, V6_ADDRESSES["web"], 8080, [{"target": "/v6"}])
        assert json.loads(response["body"])["app"] == "local"
        opened = redirector.wait_for_event("opened")
        assert opened["client"][0] == V6_ADDRESSES["api"]
        assert opened["destination"] == [V6_ADDRESSES["web"], 8080]
    finally:
        _ipv6_addresses(sandbox, "del")


def test_bad_ports_and_nft_failures_are_clear_errors(sandbox, started) -> None:
    redirector = Redirector(sandbox.pod("web").netns)
    started.append(redirector)
    assert redirector.command("steal", port=70000) == {
        "error": "cannot steal port 70000: not a TCP port number",
        "type": "StealError",
    }
    # nft's own error line, not a traceback or a bare exit status (a syntax error: nothing
    # reaches the kernel).
    with pytest.raises(
        NftablesError, match=r"^nft could not create a table: syntax error, unexpected newline"
    ):
        run_nft("add table inet\n", "create a table")
