"""What the user sees while the agent starts (plain lines off a terminal, a ✓ line at the
end of a task that worked, nothing on failure or with MIRRORD_PROGRESS_MODE=off), and
the byte pipe the port-forward listener uses, over real sockets."""

from __future__ import annotations

import io
import os
import socket
import threading

import pytest

from mirrord_target.local.port_forward import _pipe
from mirrord_target.local.progress import PROGRESS_MODE_ENV, Progress


def test_plain_lines_off_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("starting the agent", stream=stream) as shown:
        assert shown.mode == "simple"
        shown.step("creating agent job j1")
        shown.step("waiting for the agent to listen")
        shown.step("waiting for the agent to listen")
        shown.done("agent ready: job j1")
    assert stream.getvalue().splitlines() == [
        "mirrord: starting the agent: creating agent job j1",
        "mirrord: starting the agent: waiting for the agent to listen",
        "mirrord: agent ready: job j1",
    ]


def test_a_failed_task_prints_no_outcome() -> None:
    stream = io.StringIO()
    with pytest.raises(RuntimeError), Progress("resolving", stream=stream) as shown:
        shown.step("looking up pod/x")
        shown.done("never printed")
        raise RuntimeError("lookup failed")
    assert stream.getvalue() == "mirrord: resolving: looking up pod/x\n"


def test_off_mode_is_silent_and_standard_mode_marks_the_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PROGRESS_MODE_ENV, "off")
    stream = io.StringIO()
    with Progress("task", stream=stream) as shown:
        shown.step("step")
        shown.done("done")
    assert stream.getvalue() == ""
    standard = io.StringIO()
    with Progress("task", stream=standard, mode="standard") as shown:
        shown.step("step")
        shown.done("agent ready: job [x]")
    assert standard.getvalue() == "✓ agent ready: job [x]\n"


def test_pipe_copies_both_ways_and_ends_when_a_side_closes() -> None:
    client, local = socket.socketpair()
    remote, agent = socket.socketpair()
    piping = threading.Thread(target=_pipe, args=(local, remote))
    piping.start()
    payload = os.urandom(3 * 1024 * 1024)
    sender = threading.Thread(target=client.sendall, args=(payload,))
    sender.start()
    received = bytearray()
    while len(received) < len(payload):
        received += agent.recv(1 << 20)
    sender.join()
    assert bytes(received) == payload
    agent.sendall(b"answer")
    assert client.recv(64) == b"answer"
    agent.close()
    piping.join(timeout=10)
    assert not piping.is_alive()
    for sock in (client, local, remote):
        sock.close()
