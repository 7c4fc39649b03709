"""Test-side handles on the programs of ``steal_programs.py`` running in sandbox pods'
network namespaces, and nftables inspection there. (A module of its own: the steal test
modules import it by name.)"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROGRAMS = Path(__file__).with_name("steal_programs.py")
#: Generous limits: they only stop a broken test from hanging, they assert nothing.
LINE_TIMEOUT = 60.0
POLL_DEADLINE = 30.0


class NetnsProgram:
    """``steal_programs.py ARGS`` in network namespace ``netns``, speaking JSON lines."""

    def __init__(self, netns: str, args: Sequence[str]) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(PROGRAMS), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_lines, daemon=True).start()
        self.stderr = ""
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_lines(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr += line

    def read_json(self, timeout: float = LINE_TIMEOUT) -> dict[str, Any]:
        """The next JSON line the program prints."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s; stderr: {self.stderr}") from None
        if line is None:
            time.sleep(0.2)  # let the stderr reader catch up
            raise AssertionError(f"the program ended; stderr: {self.stderr}")
        return json.loads(line)

    def send(self, message: dict[str, Any] | str) -> None:
        assert self.process.stdin is not None
        text = message if isinstance(message, str) else json.dumps(message)
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signum)
        self.process.wait(timeout=30)


class Redirector(NetnsProgram):
    """A StealRedirector (with a local app standing for the session) in ``netns``."""

    def __init__(self, netns: str, record: Path | None = None) -> None:
        super().__init__(netns, ["redirector", *(["--record", str(record)] if record else [])])
        self.events: list[dict[str, Any]] = []
        started = self.reply()
        self.table: str = started["table"]
        self.listener_port: int = started["listener_port"]

    def reply(self) -> dict[str, Any]:
        while "reply" not in (message := self.read_json()):
            self.events.append(message)
        return message["reply"]

    def command(self, op: str, **arguments: Any) -> dict[str, Any]:
        self.send({"op": op, **arguments})
        return self.reply()

    def steal(self, port: int, **arguments: Any) -> dict[str, Any]:
        reply = self.command("steal", port=port, **arguments)
        assert reply == {"ok": True}, reply
        return reply

    def events_so_far(self) -> list[dict[str, Any]]:
        """Every event printed before now (a no-op command's reply comes after them)."""
        self.command("sync")
        return self.events

    def wait_for_event(self, kind: str) -> dict[str, Any]:
        """The first ``kind`` event (waiting for it if it has not come yet)."""
        while True:
            for event in self.events:
                if event.get("event") == kind:
                    return event
            self.events.append(self.read_json())


def start_app(netns: str, port: int, name: str = "pod", **options: Any) -> NetnsProgram:
    """The test HTTP app (or ``echo=True``: a TCP echo server) on ``port`` in ``netns``."""
    args = ["app", "--name", name, "--port", str(port)]
    if options.get("record"):
        args += ["--record", str(options["record"])]
    if options.get("echo"):
        args.append("--echo")
    app = NetnsProgram(netns, args)
    assert app.read_json() == {"ready": port}
    return app


def run_client(*args: Any, **options: Any) -> list[dict[str, Any]]:
    """Run a client scenario (:func:`start_client`'s arguments) to its end; its output
    lines (responses, errors, eof)."""
    client = start_client(*args, **options)
    try:
        lines = []
        while "done" not in (line := client.read_json()):
            lines.append(line)
        return lines
    finally:
        client.kill()


def raw_exchange(netns: str, host: str, port: int, data: bytes) -> dict[str, Any]:
    """Send ``data`` on a fresh connection, half-close, and return what came back."""
    client = NetnsProgram(netns, ["client", "--host", host, "--port", str(port)])
    try:
        client.send({"raw": data.hex()})
        return client.read_json()
    finally:
        client.kill()


def start_client(
    netns: str,
    host: str,
    port: int,
    requests: list[dict[str, Any]],
    *,
    pipelined: bool = False,
    read_eof: bool = False,
    raw_dir: Path | None = None,
) -> NetnsProgram:
    """A client scenario under way (for scenarios with pauses)."""
    args = ["client", "--host", host, "--port", str(port)]
    if raw_dir is not None:
        args += ["--raw-dir", str(raw_dir)]
    client = NetnsProgram(netns, args)
    client.send({"requests": requests, "pipelined": pipelined, "read_eof": read_eof})
    return client


def nft(netns: str, *args: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def mirrord_tables(netns: str) -> list[str]:
    tables = json.loads(nft(netns, "-j", "list", "tables"))["nftables"]
    return [
        t["table"]["name"]
        for t in tables
        if t.get("table", {}).get("name", "").startswith("mirrord_")
    ]


def set_ports(netns: str, table: str) -> list[int]:
    """The (unexpired) ports in ``table``'s set."""
    items = json.loads(nft(netns, "-j", "list", "set", "inet", table, "ports"))["nftables"]
    elements = next(item["set"] for item in items if "set" in item).get("elem", [])
    return [e["elem"]["val"] if isinstance(e, dict) else e for e in elements]


def delete_mirrord_tables(netns: str) -> None:
    """Test cleanup: delete every mirrord table left in ``netns``."""
    for table in mirrord_tables(netns):
        subprocess.run(
            ["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", table], check=False
        )


def poll(condition: Callable[[], bool], deadline: float = POLL_DEADLINE) -> bool:
    """Whether ``condition`` became true before a (generous) deadline."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@contextmanager
def programs() -> Iterator[list[NetnsProgram]]:
    """A list to put started programs in; all of them are killed at the end."""
    started: list[NetnsProgram] = []
    try:
        yield started
    finally:
        for program in started:
            program.kill()
