"""Reading a process's environment the way the agent does."""

from __future__ import annotations

import subprocess
import sys

from mirrord_env.agent.environ_reader import parse_environ, read_environ


def test_reads_a_real_process_environment() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(30)"],
        env={"GREETING": "hello=world", "EMPTY": "", "ÜNICODE": "ß"},
        stdout=subprocess.PIPE,
    )
    try:
        # Before exec the child still has our environment: wait until it runs.
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        env = read_environ(child.pid)
    finally:
        child.kill()
        child.wait()
    assert env["GREETING"] == "hello=world"
    assert env["EMPTY"] == ""
    assert env["ÜNICODE"] == "ß"


def test_malformed_records_are_skipped() -> None:
    raw = b"A=1\0junk\0=novalue\0B=\xff\0\0"
    env = parse_environ(raw)
    assert env["A"] == "1"
    assert "junk" not in env and "" not in env
    assert env["B"].encode("utf-8", "surrogateescape") == b"\xff"
