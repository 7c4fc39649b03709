"""Every ``MIRRORD_*`` environment variable mirrord 3.32 reads for a key.

The variable names are mirrord 3.32's (``#[config(env = …)]`` in ``mirrord/config/src``);
``ENV_CASES`` must cover every variable the layout declares, so a new key with a variable
and no test fails ``test_every_declared_variable_has_a_case``.
"""

from __future__ import annotations

import copy
import json
from typing import Any, NamedTuple

import pytest

from mirrord_core.config import ConfigError, ConfigLayout, resolve


class EnvCase(NamedTuple):
    path: str
    text: str
    expected: Any


# variable → (key it sets, text, resolved value); names and meaning as in mirrord 3.32.
ENV_CASES: dict[str, EnvCase] = {
    "MIRRORD_ACCEPT_INVALID_CERTIFICATES": EnvCase("accept_invalid_certificates", "true", True),
    "MIRRORD_SKIP_PROCESSES": EnvCase(
        "skip_processes", "ide-debugger;ide-service", ["ide-debugger", "ide-service"]
    ),
    "MIRRORD_CONNECT_TCP": EnvCase("connect_tcp", "127.0.0.1:7777", "127.0.0.1:7777"),
    "MIRRORD_CONNECT_AGENT": EnvCase("connect_agent_name", "mirrord-agent-x", "mirrord-agent-x"),
    "MIRRORD_CONNECT_PORT": EnvCase("connect_agent_port", "7777", 7777),
    "MIRRORD_OPERATOR_ENABLE": EnvCase("operator", "false", False),
    "MIRRORD_KUBECONFIG": EnvCase("kubeconfig", "/tmp/kubeconfig", "/tmp/kubeconfig"),
    "MIRRORD_AGENT_RUST_LOG": EnvCase("agent.log_level", "mirrord=trace", "mirrord=trace"),
    "MIRRORD_AGENT_NAMESPACE": EnvCase("agent.namespace", "mirrord", "mirrord"),
    "MIRRORD_AGENT_IMAGE": EnvCase("agent.image", "registry/agent:dev", "registry/agent:dev"),
    "MIRRORD_AGENT_IMAGE_PULL_POLICY": EnvCase("agent.image_pull_policy", "Never", "Never"),
    "MIRRORD_AGENT_TTL": EnvCase("agent.ttl", "30", 30),
    "MIRRORD_EPHEMERAL_CONTAINER": EnvCase("agent.ephemeral", "true", True),
    "MIRRORD_AGENT_COMMUNICATION_TIMEOUT": EnvCase("agent.communication_timeout", "45", 45),
    "MIRRORD_AGENT_STARTUP_TIMEOUT": EnvCase("agent.startup_timeout", "300", 300),
    "MIRRORD_AGENT_NETWORK_INTERFACE": EnvCase("agent.network_interface", "eth1", "eth1"),
    "MIRRORD_PAUSE": EnvCase("agent.pause", "true", True),
    "MIRRORD_AGENT_STEALER_FLUSH_CONNECTIONS": EnvCase("agent.flush_connections", "false", False),
    "MIRRORD_CAPTURE_ERROR_TRACE": EnvCase("feature.capture_error_trace", "true", True),
    "MIRRORD_OVERRIDE_ENV_VARS_INCLUDE": EnvCase(
        "feature.env.include", "DATABASE_URL;PORT", ["DATABASE_URL", "PORT"]
    ),
    "MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE": EnvCase(
        "feature.env.exclude", "USER;SECRET", ["USER", "SECRET"]
    ),
    "MIRRORD_FILE_MODE": EnvCase("feature.fs.mode", "write", "write"),
    "MIRRORD_FILE_READ_WRITE_PATTERN": EnvCase(
        "feature.fs.read_write", "^/var/run/.*;^/tmp/.*", ["^/var/run/.*", "^/tmp/.*"]
    ),
    "MIRRORD_FILE_READ_ONLY_PATTERN": EnvCase("feature.fs.read_only", "^/etc/.*", ["^/etc/.*"]),
    "MIRRORD_FILE_LOCAL_PATTERN": EnvCase(
        "feature.fs.local", "^/lib/.*;^/usr/.*", ["^/lib/.*", "^/usr/.*"]
    ),
    "MIRRORD_AGENT_TCP_STEAL_TRAFFIC": EnvCase("feature.network.incoming.mode", "true", "steal"),
    "MIRRORD_HTTP_HEADER_FILTER": EnvCase(
        "feature.network.incoming.http_filter.header_filter", "Id: token.*", "Id: token.*"
    ),
    "MIRRORD_HTTP_HEADER_FILTER_PORTS": EnvCase(
        "feature.network.incoming.http_filter.ports", "9090;9091", [9090, 9091]
    ),
    "MIRRORD_TCP_OUTGOING": EnvCase("feature.network.outgoing.tcp", "false", False),
    "MIRRORD_UDP_OUTGOING": EnvCase("feature.network.outgoing.udp", "false", False),
    "MIRRORD_OUTGOING_REMOTE_UNIX_STREAMS": EnvCase(
        "feature.network.outgoing.unix_streams",
        "^/run/a.sock$;^/run/b",
        ["^/run/a.sock$", "^/run/b"],
    ),
    "MIRRORD_REMOTE_DNS": EnvCase("feature.network.dns", "false", False),
    "MIRRORD_IMPERSONATED_TARGET": EnvCase(
        "target.path", "deployment/api/container/app", "deployment/api/container/app"
    ),
    "MIRRORD_TARGET_NAMESPACE": EnvCase("target.namespace", "staging", "staging"),
}


def get(tree: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


def put(tree: dict[str, Any], path: str, value: Any) -> None:
    *heads, last = path.split(".")
    for part in heads:
        tree = tree[part]
    tree[last] = value


def test_every_declared_variable_has_a_case(layout: ConfigLayout) -> None:
    declared = {meta.env: path for path, _attribute, meta in layout.leaf_fields() if meta.env}
    assert set(declared) - set(ENV_CASES) == set(), "environment variables without a test"
    assert set(ENV_CASES) - set(declared) == set(), "tested variables that no key declares"
    for variable, case in ENV_CASES.items():
        assert declared[variable] == case.path, f"{variable} sets {declared[variable]}"


def test_every_declared_variable_changes_its_key(layout: ConfigLayout) -> None:
    """Iterates the layout itself: each variable changes its key and nothing else."""
    defaults = resolve(layout, environ={}).to_dict()
    for path, _attribute, meta in layout.leaf_fields():
        if not meta.env:
            continue
        case = ENV_CASES.get(meta.env)
        assert case is not None, f"{meta.env} ({path}) has no parse test"
        resolved = resolve(layout, environ={meta.env: case.text}).to_dict()
        assert get(resolved, path) != get(defaults, path), meta.env
        assert get(resolved, path) == case.expected, meta.env


@pytest.mark.parametrize("variable", sorted(ENV_CASES))
def test_variable_sets_its_key_only(resolve_config, variable: str) -> None:
    case = ENV_CASES[variable]
    defaults = resolve_config().to_dict()
    expected = copy.deepcopy(defaults)
    put(expected, case.path, case.expected)
    resolved = resolve_config(env={variable: case.text})
    assert resolved.to_dict() == expected


@pytest.mark.parametrize("variable", sorted(ENV_CASES))
def test_variable_beats_the_file(resolve_config, variable: str) -> None:
    """defaults < file < environment, for every variable: the file gives the key its
    default explicitly, the variable another value."""
    case = ENV_CASES[variable]
    file_value = resolve_config().to_dict()
    file_value = get(file_value, case.path)
    tree: dict[str, Any] = {}
    node = tree
    *heads, last = case.path.split(".")
    for part in heads:
        node = node.setdefault(part, {})
    node[last] = file_value
    resolved = resolve_config(json.dumps(tree), suffix=".json", env={variable: case.text})
    assert get(resolved.to_dict(), case.path) == case.expected


def test_process_environment_is_used_when_no_environ_is_given(
    layout: ConfigLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRRORD_AGENT_TTL", "42")
    monkeypatch.setenv("MIRRORD_IMPERSONATED_TARGET", "pod/web")
    resolved = resolve(layout).to_dict()
    assert resolved["agent"]["ttl"] == 42
    assert resolved["target"]["path"] == "pod/web"


def test_unrelated_variables_are_ignored(resolve_config) -> None:
    env = {"MIRRORD_SOMETHING_ELSE": "x", "PATH": "/bin", "RUST_LOG": "trace"}
    assert resolve_config(env=env).to_dict() == resolve_config().to_dict()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("False", False),
        (" true ", True),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("no", False),
        ("on", True),
        ("off", False),
    ],
)
def test_boolean_texts(resolve_config, text: str, expected: bool) -> None:
    """mirrord accepts true/false; the usual spellings of a boolean are accepted too."""
    resolved = resolve_config(env={"MIRRORD_EPHEMERAL_CONTAINER": text, "MIRRORD_REMOTE_DNS": text})
    assert resolved.to_dict()["agent"]["ephemeral"] is expected
    assert resolved.to_dict()["feature"]["network"]["dns"] is expected


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("true", "steal"),
        ("false", "mirror"),
        ("steal", "steal"),
        ("mirror", "mirror"),
        ("off", "off"),
        ("STEAL", "steal"),
    ],
)
def test_steal_traffic_variable(resolve_config, text: str, mode: str) -> None:
    """mirrord 3.32: ``MIRRORD_AGENT_TCP_STEAL_TRAFFIC`` is a bool (true = steal) or a mode."""
    resolved = resolve_config(env={"MIRRORD_AGENT_TCP_STEAL_TRAFFIC": text})
    assert resolved.to_dict()["feature"]["network"]["incoming"]["mode"] == mode


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A", ["A"]),
        ("A;B;C", ["A", "B", "C"]),
        (" A ; B ", ["A", "B"]),
        ("A;;B;", ["A", "B"]),
        ("*", ["*"]),
    ],
)
def test_semicolon_separated_string_lists(resolve_config, text: str, expected: list[str]) -> None:
    env = {
        "MIRRORD_OVERRIDE_ENV_VARS_INCLUDE": text,
        "MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE": text,
        "MIRRORD_SKIP_PROCESSES": text,
        "MIRRORD_FILE_LOCAL_PATTERN": text.replace("*", ".*"),
    }
    resolved = resolve_config(env=env).to_dict()
    assert resolved["feature"]["env"]["include"] == expected
    assert resolved["feature"]["env"]["exclude"] == expected
    assert resolved["skip_processes"] == expected
    assert resolved["feature"]["fs"]["local"] == [item.replace("*", ".*") for item in expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("80", [80]), ("80;8080", [80, 8080]), (" 1 ; 65535 ", [1, 65535]), ("0", [0])],
)
def test_semicolon_separated_port_lists(resolve_config, text: str, expected: list[int]) -> None:
    resolved = resolve_config(env={"MIRRORD_HTTP_HEADER_FILTER_PORTS": text}).to_dict()
    assert resolved["feature"]["network"]["incoming"]["http_filter"]["ports"] == expected


def test_target_variable_accepts_every_target_form(resolve_config) -> None:
    forms = {
        "pod/web": "pod/web",
        "pod/web/container/app": "pod/web/container/app",
        "deployment/api": "deployment/api",
        "deploy/api/container/app": "deployment/api/container/app",
        "container/app": "container/app",
        "pid/4242": "pid/4242",
    }
    for text, canonical in forms.items():
        resolved = resolve_config(env={"MIRRORD_IMPERSONATED_TARGET": text}).to_dict()
        assert resolved["target"]["path"] == canonical, text


def test_variables_apply_inside_a_disabled_network_section(resolve_config) -> None:
    """mirrord 3.32's disabled configs still read their variables (``network = false`` with
    ``MIRRORD_REMOTE_DNS=true`` resolves DNS remotely)."""
    text = "[feature]\nnetwork = false\n"
    env = {"MIRRORD_REMOTE_DNS": "true", "MIRRORD_TCP_OUTGOING": "true"}
    network = resolve_config(text, env=env).to_dict()["feature"]["network"]
    assert network["dns"] is True
    assert network["outgoing"]["tcp"] is True
    assert network["outgoing"]["udp"] is False


def test_variables_apply_inside_a_disabled_outgoing_section(resolve_config) -> None:
    text = "[feature.network]\noutgoing = false\n"
    outgoing = resolve_config(text, env={"MIRRORD_UDP_OUTGOING": "true"}).to_dict()
    outgoing = outgoing["feature"]["network"]["outgoing"]
    assert (outgoing["tcp"], outgoing["udp"]) == (False, True)


def test_variables_apply_inside_a_disabled_env_section(resolve_config) -> None:
    """mirrord 3.32: ``env = false`` excludes ``*`` unless MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE
    says otherwise."""
    text = "[feature]\nenv = false\n"
    assert resolve_config(text).to_dict()["feature"]["env"]["exclude"] == ["*"]
    env = {"MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE": "SECRET"}
    assert resolve_config(text, env=env).to_dict()["feature"]["env"]["exclude"] == ["SECRET"]


def test_variables_combine_with_a_shorthand_section(resolve_config) -> None:
    text = '[feature.network]\nincoming = "steal"\n'
    env = {"MIRRORD_HTTP_HEADER_FILTER": "x-user: me", "MIRRORD_HTTP_HEADER_FILTER_PORTS": "3000"}
    incoming = resolve_config(text, env=env).to_dict()["feature"]["network"]["incoming"]
    assert incoming["mode"] == "steal"
    assert incoming["http_filter"] == {"header_filter": "x-user: me", "ports": [3000]}


def test_all_variables_at_once(resolve_config) -> None:
    env = {variable: case.text for variable, case in ENV_CASES.items()}
    resolved = resolve_config(env=env).to_dict()
    for variable, case in ENV_CASES.items():
        assert get(resolved, case.path) == case.expected, variable


def test_invalid_variable_is_an_error_naming_it(resolve_config) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config(env={"MIRRORD_AGENT_TTL": "soon"})
    (problem,) = caught.value.problems
    assert problem.path == "agent.ttl"
    assert "MIRRORD_AGENT_TTL" in str(problem)
