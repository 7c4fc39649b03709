"""A ``mirrord run`` through the emulated Kubernetes API survives the loss of its
port-forward websocket: the session reconnects through a new one and resumes with the
agent, so the application's requests are all answered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kube_test_helpers import agent_jobs

# Requests over time; between the rounds it waits for a line on stdin (the test drops the
# port-forward in between). Every request goes through the agent (the host has no route).
APP = (
    "import sys, urllib.request\n"
    "url = 'http://api.default.svc.cluster.local:8080/'\n"
    "for round in range(3):\n"
    "    for i in range(3):\n"
    "        body = urllib.request.urlopen(url, timeout=20).read().decode().strip()\n"
    "        print(f'{round}.{i} {body}', flush=True)\n"
    "    print('round done', flush=True)\n"
    "    sys.stdin.readline()\n"
)


def test_run_survives_dropped_port_forwards(emulated_cluster: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}
    mirrord = Path(sys.executable).parent / "mirrord"
    process = subprocess.Popen(
        [str(mirrord), "run", "-t", "deployment/web", "--", sys.executable, "-c", APP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdin is not None and process.stdout is not None
    lines: list[str] = []
    dropped: list[int] = []
    try:
        for _ in range(3):
            while (line := process.stdout.readline()) and line != "round done\n":
                lines.append(line)
            if line != "round done\n":
                _, stderr = process.communicate(timeout=60)
                raise AssertionError(f"the run ended early; got {lines}; stderr:\n{stderr}")
            # Every websocket open now (the session's, possibly more) breaks at once.
            dropped.append(emulated_cluster.drop_port_forwards())
            process.stdin.write("\n")
            process.stdin.flush()
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert stdout == ""
    assert lines == [f"{r}.{i} hello from the api pod\n" for r in range(3) for i in range(3)]
    assert all(count >= 1 for count in dropped), dropped
    assert "Traceback" not in stderr
    assert agent_jobs(emulated_cluster) == []
