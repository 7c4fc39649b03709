"""``mirrord ls`` and ``mirrord run`` against the emulated Kubernetes API, as a new user
would try them with a kubeconfig pointing at it: targets listed, ``deployment/web`` run
end to end (environment, files, outgoing traffic) through an agent Job and a
port-forward, every target form, the ephemeral agent, and the one-line errors for a wrong
pod name, a forbidden namespace, missing permissions and an image that cannot be pulled.
The sandbox's pods are reachable only through the agent (the host has no route to them),
so every answer from a pod proves the path."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from kube_test_helpers import (
    PROBE_COMMAND,
    PROBE_OUTPUT,
    RunCli,
    agent_jobs,
    api_client,
    error_line,
    pod_of,
)

from mirrord_core.sandbox.kube import default_agent_image


def test_ls_lists_the_namespaces_pods_and_deployments(
    emulated_cluster: Any, run_cli: RunCli
) -> None:
    web, api = pod_of(emulated_cluster, "web"), pod_of(emulated_cluster, "api")
    expected = sorted(
        ["deployment/api", "deployment/web", f"pod/{api.metadata.name}", f"pod/{web.metadata.name}"]
    )
    as_json = run_cli("ls")  # stdout is a pipe: JSON, what IDE integrations read
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == expected
    assert json.loads(run_cli("ls", "--json", "-n", "default").stdout) == expected
    as_text = run_cli("ls", "-o", "text")
    assert as_text.stdout.splitlines() == expected
    empty = run_cli("ls", "--json", "-n", "empty-namespace")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []


def test_run_deployment_end_to_end(emulated_cluster: Any, run_cli: RunCli) -> None:
    result = run_cli("run", "-t", "deployment/web", "--", *PROBE_COMMAND)
    assert result.returncode == 0, result.stderr
    assert result.stdout == PROBE_OUTPUT
    assert "Traceback" not in result.stderr
    web = pod_of(emulated_cluster, "web")
    assert f"target deployment/web: pod {web.metadata.name}, container web" in result.stderr
    assert "agent ready: job mirrord-agent-" in result.stderr
    # The session's Job is deleted when it ends.
    assert agent_jobs(emulated_cluster) == []


def test_ls_takes_kubeconfig_and_namespace_from_the_config_file(
    emulated_cluster: Any, run_cli: RunCli, tmp_path: Any
) -> None:
    config = tmp_path / "mirrord.json"
    config.write_text(
        json.dumps(
            {"kubeconfig": str(emulated_cluster.kubeconfig_path), "target": {"namespace": "other"}}
        )
    )
    # KUBECONFIG names a file that does not exist: the setting wins over it.
    env = {"KUBECONFIG": str(tmp_path / "missing")}
    result = run_cli("ls", "-f", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []  # the namespace "other" has no targets
    default = run_cli("ls", "-f", str(config), "-n", "default", env=env)
    assert "deployment/web" in json.loads(default.stdout)


def test_curl_through_a_deployment_target(emulated_cluster: Any, run_cli: RunCli) -> None:
    result = run_cli(
        "run",
        "-t",
        "deployment/web",
        "--",
        "curl",
        "-sS",
        "http://api.default.svc.cluster.local:8080/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the api pod\n"


@pytest.mark.parametrize(
    "target",
    ["pod/{pod}", "pod/{pod}/container/web", "deployment/web/container/web", "container/web"],
)
def test_every_target_form_reaches_the_web_pod(
    target: str, emulated_cluster: Any, run_cli: RunCli
) -> None:
    pod = pod_of(emulated_cluster, "web").metadata.name
    result = run_cli(
        "run", "-n", "default", "-t", target.format(pod=pod), "--", "sh", "-c", "echo $GREETING"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the web pod\n"


def test_deprecated_podname_form_and_config_file_namespace(
    emulated_cluster: Any, run_cli: RunCli, tmp_path: Any
) -> None:
    pod = pod_of(emulated_cluster, "api").metadata.name
    config = tmp_path / "mirrord.toml"
    config.write_text(f'[target]\npath = "podname/{pod}"\nnamespace = "default"\n')
    result = run_cli("run", "-f", str(config), "--", "sh", "-c", "echo $ROLE")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "api\n"
    assert "deprecated" in result.stderr


def test_ephemeral_agent_end_to_end(emulated_cluster: Any, run_cli: RunCli) -> None:
    result = run_cli("run", "-e", "-t", "deployment/web", "--", *PROBE_COMMAND)
    assert result.returncode == 0, result.stderr
    assert result.stdout == PROBE_OUTPUT
    assert "agent ready: ephemeral container mirrord-agent-" in result.stderr
    pod = pod_of(emulated_cluster, "web")
    [agent] = pod.spec.ephemeral_containers
    assert agent.target_container_name == "web"
    assert agent.image == default_agent_image()
    assert "--ephemeral" in agent.args
    assert agent_jobs(emulated_cluster) == []


def test_wrong_pod_name_says_how_to_list_targets(emulated_cluster: Any, run_cli: RunCli) -> None:
    result = run_cli("run", "-t", "pod/web-does-not-exist", "--", "true")
    assert error_line(result) == (
        "pod web-does-not-exist not found in namespace default; `mirrord ls -n default` "
        "lists the targets"
    )


def test_wrong_container_name_lists_the_containers(emulated_cluster: Any, run_cli: RunCli) -> None:
    result = run_cli("run", "-t", "deployment/web/container/nope", "--", "true")
    assert error_line(result) == (
        "deployment web has no container 'nope' (its containers: web); use "
        "deployment/web/container/<one of them>"
    )


def test_forbidden_namespace_names_the_missing_permission(
    emulated_cluster: Any, run_cli: RunCli
) -> None:
    result = run_cli("run", "-n", "restricted", "-t", "deployment/web", "--", "true")
    line = error_line(result)
    assert line.startswith(
        "mirrord needs permission to get deployments in namespace restricted (RBAC: verb get, "
        "resource deployments, API group apps) — ask your cluster admin"
    ), line
    listing = run_cli("ls", "-n", "restricted")
    assert "mirrord needs permission to list pods in namespace restricted" in error_line(listing)


@pytest.mark.parametrize(
    ("permission", "expected"),
    [
        (
            "create jobs",
            "mirrord needs permission to create jobs in namespace default (RBAC: verb create, "
            "resource jobs, API group batch)",
        ),
        (
            "create pods/portforward",
            "mirrord needs permission to create pods/portforward in namespace default (RBAC: "
            "verb create, resource pods/portforward)",
        ),
    ],
)
def test_missing_permission_to_start_or_reach_the_agent(
    permission: str, expected: str, emulated_cluster: Any, run_cli: RunCli
) -> None:
    emulated_cluster.policy.deny(permission)
    result = run_cli("run", "-t", "deployment/web", "--", "true")
    assert error_line(result).startswith(expected), result.stderr
    assert agent_jobs(emulated_cluster) == []


def test_unpullable_agent_image_is_reported_at_once_and_cleaned_up(
    emulated_cluster: Any, run_cli: RunCli
) -> None:
    image = "registry.example/mirrord-agent:missing"
    # A long startup timeout: the pull failure must end the wait, not the timeout.
    result = run_cli(
        "run", "-i", image, "--agent-startup-timeout", "600", "-t", "deployment/web", "--", "true"
    )
    line = error_line(result)
    assert line.startswith(f"the agent image {image} cannot be pulled (ErrImagePull"), line
    assert "agent.image" in line and "image_pull_policy" in line
    assert "within" not in line
    assert agent_jobs(emulated_cluster) == []


def test_unreachable_cluster(emulated_cluster: Any, run_cli: RunCli, tmp_path: Any) -> None:
    # The same kubeconfig with the server moved to a loopback port nobody listens on.
    with api_client(emulated_cluster) as api:
        server = api.configuration.host
    text = emulated_cluster.kubeconfig_path.read_text()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    broken = tmp_path / "kubeconfig"
    broken.write_text(text.replace(server, closed))
    result = run_cli("ls", env={"KUBECONFIG": str(broken)})
    assert error_line(result) == (
        f"cannot reach the Kubernetes API server at {closed}: connection refused; check your "
        "kubeconfig (KUBECONFIG / ~/.kube/config)"
    )


def test_agent_namespace_places_the_job_elsewhere(emulated_cluster: Any, run_cli: RunCli) -> None:
    result = run_cli(
        "run", "-a", "kube-system", "-t", "deployment/web", "--", "sh", "-c", "echo $GREETING"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the web pod\n"
    assert "(pod mirrord-agent-" in result.stderr and "namespace kube-system)" in result.stderr
    assert agent_jobs(emulated_cluster, "kube-system") == []
    missing = run_cli("run", "-a", "nowhere", "-t", "deployment/web", "--", "true")
    assert error_line(missing) == (
        "the agent's namespace nowhere does not exist; set agent.namespace to an existing "
        "namespace (or leave it unset: the target's)"
    )


def test_rejected_credentials_say_to_log_in_again(
    emulated_cluster: Any, run_cli: RunCli, tmp_path: Any
) -> None:
    stale = tmp_path / "kubeconfig"
    stale.write_text(
        emulated_cluster.kubeconfig_path.read_text().replace(emulated_cluster.token, "expired")
    )
    result = run_cli("run", "-t", "deployment/web", "--", "true", env={"KUBECONFIG": str(stale)})
    line = error_line(result)
    assert line.startswith(
        f"the Kubernetes API server at {emulated_cluster.server_url} rejected the credentials"
    ), line
    assert line.endswith("log in again or check your kubeconfig (KUBECONFIG / ~/.kube/config)")
