"""On a terminal (a real pseudo-terminal here), ``mirrord run`` shows a spinner with the
current step and leaves one ✓ line per finished task instead of plain step lines, and
``mirrord ls`` prints one target per line instead of JSON."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from kube_test_helpers import pod_of

# Colours, cursor moves and line erasures of the terminal output.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SPINNER = "[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]"


def _on_terminal(*args: str) -> tuple[int, str]:
    """Run ``mirrord ARGS`` with stdin, stdout and stderr on a pseudo-terminal."""
    mirrord = Path(sys.executable).parent / "mirrord"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}
    env.update({"TERM": "xterm-256color", "COLUMNS": "200", "LINES": "50"})
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            [str(mirrord), *args], stdin=slave, stdout=slave, stderr=slave, env=env
        )
    finally:
        os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    return process.wait(timeout=120), ANSI_ESCAPE.sub("", screen)


def test_run_shows_a_spinner_and_check_marks(emulated_cluster: Any) -> None:
    status, screen = _on_terminal("run", "-t", "deployment/web", "--", "sh", "-c", "echo $GREETING")
    assert status == 0, screen
    web = pod_of(emulated_cluster, "web").metadata.name
    assert f"✓ target deployment/web: pod {web}, container web" in screen
    assert "✓ agent ready: job mirrord-agent-" in screen
    # The spinner shows every step (each is drawn when it starts), instead of the plain
    # step lines of a non-terminal.
    assert re.search(f"{SPINNER} starting the agent: creating agent job mirrord-agent-", screen)
    assert re.search(f"{SPINNER} starting the agent: port-forwarding to mirrord-agent-", screen)
    assert "mirrord: starting the agent:" not in screen
    assert "hello from the web pod\r\n" in screen


def test_ls_prints_one_target_per_line_on_a_terminal(emulated_cluster: Any) -> None:
    status, screen = _on_terminal("ls")
    assert status == 0, screen
    web = pod_of(emulated_cluster, "web").metadata.name
    lines = screen.replace("\r", "").split()
    assert lines == sorted(lines)
    assert {"deployment/web", "deployment/api", f"pod/{web}"} <= set(lines)
    assert "[" not in screen
