"""Helpers of the Kubernetes end-to-end tests (a module of its own: test modules import it
by name): the official client on the emulated cluster's kubeconfig, the demo workloads'
pod names, and the one error line mirrord prints."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

from kubernetes import client, config

RunCli = Callable[..., subprocess.CompletedProcess[str]]

# A program printing what the target gives it: an env var, a file, an HTTP answer.
PROBE = (
    "import os, urllib.request\n"
    "print(os.environ['GREETING'])\n"
    "print(open('/app/config.yaml').read(), end='')\n"
    "url = 'http://api.default.svc.cluster.local:8080/'\n"
    "print(urllib.request.urlopen(url, timeout=10).read().decode(), end='')\n"
)
PROBE_OUTPUT = (
    "hello from the web pod\n"
    "service: web\nport: 8080\nfeature_flags: [checkout-v2]\n"
    "hello from the api pod\n"
)
PROBE_COMMAND = [sys.executable, "-c", PROBE]


def api_client(cluster: Any) -> client.ApiClient:
    """The official client, configured from the cluster's kubeconfig."""
    return config.new_client_from_config(
        config_file=str(cluster.kubeconfig_path), persist_config=False
    )


def pod_of(cluster: Any, app: str, namespace: str = "default") -> client.V1Pod:
    """The pod of the demo deployment ``app``."""
    with api_client(cluster) as api:
        [pod] = (
            client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={app}").items
        )
    return pod


def agent_jobs(cluster: Any, namespace: str = "default") -> list[str]:
    """The names of the agent Jobs (label ``app=mirrord``) that exist now."""
    with api_client(cluster) as api:
        jobs = client.BatchV1Api(api).list_namespaced_job(namespace, label_selector="app=mirrord")
    return [job.metadata.name for job in jobs.items]


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``mirrord: error:`` line of a failed run (asserting there is exactly one,
    and that it is the last thing printed)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("mirrord: error:")]
    assert len(errors) == 1, result.stderr
    assert lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr
    return errors[0].removeprefix("mirrord: error: ")
