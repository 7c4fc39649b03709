"""``mirrord run`` flags (mirrord 3.32's exec flags) and the precedence
defaults < file < environment < flags."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from mirrord_core.config import ConfigError, ConfigLayout
from mirrord_core.config.overrides import flag_table


class FlagCase(NamedTuple):
    names: tuple[str, ...]
    value: Any  # what argparse hands over: the argument text, or True for a switch
    sets: dict[str, Any]  # key path → resolved value


# Destination → case; names as in mirrord 3.32's ``ExecArgs`` (mirrord/cli/src/config.rs).
FLAG_CASES: dict[str, FlagCase] = {
    "target": FlagCase(
        ("-t", "--target"), "pod/web/container/app", {"target.path": "pod/web/container/app"}
    ),
    "target_namespace": FlagCase(
        ("-n", "--target-namespace"), "staging", {"target.namespace": "staging"}
    ),
    "agent_namespace": FlagCase(
        ("-a", "--agent-namespace"), "mirrord", {"agent.namespace": "mirrord"}
    ),
    "agent_log_level": FlagCase(("-l", "--agent-log-level"), "debug", {"agent.log_level": "debug"}),
    "agent_image": FlagCase(
        ("-i", "--agent-image"), "registry/agent:dev", {"agent.image": "registry/agent:dev"}
    ),
    "fs_mode": FlagCase(("--fs-mode",), "write", {"feature.fs.mode": "write"}),
    "override_env_vars_include": FlagCase(
        ("-s", "--override-env-vars-include"), "A;B", {"feature.env.include": ["A", "B"]}
    ),
    "override_env_vars_exclude": FlagCase(
        ("-x", "--override-env-vars-exclude"), "C;D", {"feature.env.exclude": ["C", "D"]}
    ),
    "no_remote_dns": FlagCase(("--no-remote-dns",), True, {"feature.network.dns": False}),
    "skip_processes": FlagCase(
        ("--skip-processes",), "ide;debugger", {"skip_processes": ["ide", "debugger"]}
    ),
    "agent_ttl": FlagCase(("--agent-ttl",), "30", {"agent.ttl": 30}),
    "agent_startup_timeout": FlagCase(
        ("--agent-startup-timeout",), "300", {"agent.startup_timeout": 300}
    ),
    "accept_invalid_certificates": FlagCase(
        ("-c", "--accept-invalid-certificates"), True, {"accept_invalid_certificates": True}
    ),
    "ephemeral_container": FlagCase(
        ("-e", "--ephemeral-container"), True, {"agent.ephemeral": True}
    ),
    "steal": FlagCase(("--steal",), True, {"feature.network.incoming.mode": "steal"}),
    "pause": FlagCase(("-p", "--pause"), True, {"agent.pause": True}),
    "no_outgoing": FlagCase(
        ("--no-outgoing",),
        True,
        {
            "feature.network.outgoing.tcp": False,
            "feature.network.outgoing.udp": False,
        },
    ),
    "no_tcp_outgoing": FlagCase(
        ("--no-tcp-outgoing",), True, {"feature.network.outgoing.tcp": False}
    ),
    "no_udp_outgoing": FlagCase(
        ("--no-udp-outgoing",), True, {"feature.network.outgoing.udp": False}
    ),
    "capture_error_trace": FlagCase(
        ("--capture-error-trace",), True, {"feature.capture_error_trace": True}
    ),
}


def get(tree: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


def put(tree: dict[str, Any], path: str, value: Any) -> None:
    *heads, last = path.split(".")
    for part in heads:
        tree = tree.setdefault(part, {})
    tree[last] = value


def test_every_flag_has_a_case(layout: ConfigLayout) -> None:
    table = flag_table(layout)
    assert set(table) - set(FLAG_CASES) == set(), "flags without a test"
    assert set(FLAG_CASES) - set(table) == set(), "tested flags that no key declares"
    for dest, (flag, paths) in table.items():
        case = FLAG_CASES[dest]
        assert flag.names == case.names, dest
        assert sorted(paths) == sorted(case.sets), dest
        assert flag.takes_argument == (case.value is not True), dest


@pytest.mark.parametrize("dest", sorted(FLAG_CASES))
def test_flag_sets_its_keys_only(resolve_config, dest: str) -> None:
    case = FLAG_CASES[dest]
    expected = copy.deepcopy(resolve_config().to_dict())
    for path, value in case.sets.items():
        put(expected, path, value)
    assert resolve_config(flags={dest: case.value}).to_dict() == expected


@pytest.mark.parametrize("dest", sorted(FLAG_CASES))
def test_flag_beats_environment_and_file(layout: ConfigLayout, resolve_config, dest: str) -> None:
    """For every flag: the file and the environment set its keys to their default (or some
    other value), the flag to something else, and the flag wins."""
    case = FLAG_CASES[dest]
    defaults = resolve_config().to_dict()
    tree: dict[str, Any] = {}
    env: dict[str, str] = {}
    for path in case.sets:
        value = get(defaults, path)
        if value is None:  # a key without a default: give it some other value
            value = {"target.path": "pod/other"}.get(path, "other")
        put(tree, path, value)
        variable = layout.field_at(path).metadata["mirrord"].env
        if variable:
            if isinstance(value, bool):
                env[variable] = str(value).lower()
            elif isinstance(value, list):
                env[variable] = ";".join(map(str, value))
            else:
                env[variable] = str(value)
    resolved = resolve_config(json.dumps(tree), suffix=".json", env=env, flags={dest: case.value})
    for path, value in case.sets.items():
        assert get(resolved.to_dict(), path) == value, path


@pytest.mark.parametrize("absent", [None, False])
def test_flags_not_given_change_nothing(resolve_config, absent: Any) -> None:
    flags = dict.fromkeys(FLAG_CASES, absent)
    assert resolve_config(flags=flags).to_dict() == resolve_config().to_dict()


def test_all_flags_through_the_cli(run_cli) -> None:
    """argparse wiring: every flag by its short name where it has one."""
    args: list[str] = []
    expected: dict[str, Any] = {}
    for dest, case in FLAG_CASES.items():
        if dest == "no_outgoing":
            continue  # overlaps no_tcp/no_udp; checked on its own below
        args.append(case.names[0])
        if case.value is not True:
            args.append(case.value)
        expected.update(case.sets)
    result = run_cli("run", "--dry-run", *args)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    for path, value in expected.items():
        assert get(resolved, path) == value, path


@pytest.mark.parametrize("command", ["run", "exec"])
def test_long_flags_through_the_cli(run_cli, command: str) -> None:
    args = [
        "--target=deploy/api",
        "--target-namespace",
        "prod",
        "--fs-mode",
        "local",
        "--no-outgoing",
        "--steal",
        "--agent-ttl",
        "9",
    ]
    result = run_cli(command, "--dry-run", *args)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["target"] == {"path": "deployment/api", "namespace": "prod"}
    assert resolved["feature"]["fs"]["mode"] == "local"
    assert resolved["feature"]["network"]["outgoing"]["tcp"] is False
    assert resolved["feature"]["network"]["outgoing"]["udp"] is False
    assert resolved["feature"]["network"]["incoming"]["mode"] == "steal"
    assert resolved["agent"]["ttl"] == 9


def test_cli_precedence_file_environment_flag(run_cli, tmp_path: Path) -> None:
    file = tmp_path / "mirrord.toml"
    file.write_text('[agent]\nlog_level = "debug"\nttl = 5\nnamespace = "from-file"\n')
    result = run_cli(
        "run",
        "-f",
        str(file),
        "--dry-run",
        "-l",
        "warn",
        env={"MIRRORD_AGENT_RUST_LOG": "trace", "MIRRORD_AGENT_TTL": "6"},
    )
    assert result.returncode == 0, result.stderr
    agent = json.loads(result.stdout)["agent"]
    assert agent["log_level"] == "warn"  # flag
    assert agent["ttl"] == 6  # environment
    assert agent["namespace"] == "from-file"  # file


class Level(NamedTuple):
    file: Any
    env: str
    flag: Any
    resolved: tuple[Any, Any, Any]  # with file; file+env; file+env+flag


# Representative keys of each section: what the file, the variable and the flag set.
PRECEDENCE: dict[str, tuple[str, str, str, Level]] = {
    "top-level": (
        "accept_invalid_certificates",
        "MIRRORD_ACCEPT_INVALID_CERTIFICATES",
        "accept_invalid_certificates",
        # A switch can only turn the key on, so the file and variable turn it off.
        Level(True, "false", True, (True, False, True)),
    ),
    "skip_processes": (
        "skip_processes",
        "MIRRORD_SKIP_PROCESSES",
        "skip_processes",
        Level(["a"], "b;c", "d", (["a"], ["b", "c"], ["d"])),
    ),
    "agent": (
        "agent.log_level",
        "MIRRORD_AGENT_RUST_LOG",
        "agent_log_level",
        Level("debug", "trace", "warn", ("debug", "trace", "warn")),
    ),
    "agent-ttl": (
        "agent.ttl",
        "MIRRORD_AGENT_TTL",
        "agent_ttl",
        Level(10, "20", "30", (10, 20, 30)),
    ),
    "target": (
        "target.path",
        "MIRRORD_IMPERSONATED_TARGET",
        "target",
        Level("pod/a", "pod/b", "deployment/c", ("pod/a", "pod/b", "deployment/c")),
    ),
    "target-namespace": (
        "target.namespace",
        "MIRRORD_TARGET_NAMESPACE",
        "target_namespace",
        Level("one", "two", "three", ("one", "two", "three")),
    ),
    "fs": (
        "feature.fs.mode",
        "MIRRORD_FILE_MODE",
        "fs_mode",
        Level("write", "local", "read", ("write", "local", "read")),
    ),
    "env": (
        "feature.env.include",
        "MIRRORD_OVERRIDE_ENV_VARS_INCLUDE",
        "override_env_vars_include",
        Level("A;B", "C", "D;E", (["A", "B"], ["C"], ["D", "E"])),
    ),
    "incoming": (
        "feature.network.incoming.mode",
        "MIRRORD_AGENT_TCP_STEAL_TRAFFIC",
        "steal",
        Level("off", "mirror", True, ("off", "mirror", "steal")),
    ),
    "outgoing": (
        "feature.network.outgoing.tcp",
        "MIRRORD_TCP_OUTGOING",
        "no_tcp_outgoing",
        Level(False, "true", True, (False, True, False)),
    ),
    "dns": (
        "feature.network.dns",
        "MIRRORD_REMOTE_DNS",
        "no_remote_dns",
        Level(False, "true", True, (False, True, False)),
    ),
}


@pytest.mark.parametrize("name", sorted(PRECEDENCE))
def test_precedence_defaults_file_environment_flags(resolve_config, name: str) -> None:
    path, variable, dest, level = PRECEDENCE[name]
    tree: dict[str, Any] = {}
    put(tree, path, level.file)
    text = json.dumps(tree)
    default = get(resolve_config().to_dict(), path)
    with_file = get(resolve_config(text, suffix=".json").to_dict(), path)
    with_env = get(resolve_config(text, suffix=".json", env={variable: level.env}).to_dict(), path)
    with_flag = resolve_config(
        text, suffix=".json", env={variable: level.env}, flags={dest: level.flag}
    ).to_dict()
    with_flag = get(with_flag, path)
    assert (with_file, with_env, with_flag) == level.resolved
    # Each level really changed something, or the test would prove nothing.
    assert default != with_file != with_env != with_flag
    # Without a file, the environment still beats the default and the flag the environment.
    env_only = get(resolve_config(env={variable: level.env}).to_dict(), path)
    assert env_only == level.resolved[1]
    flag_only = get(resolve_config(flags={dest: level.flag}).to_dict(), path)
    assert flag_only == level.resolved[2]


def test_precedence_applies_key_by_key(resolve_config) -> None:
    """A higher source overrides only the keys it sets; the rest of the file stays."""
    text = """
target = { path = "pod/from-file", namespace = "file-ns" }
[agent]
ttl = 10
log_level = "debug"
[feature.network.outgoing]
tcp = false
udp = false
"""
    resolved = resolve_config(
        text,
        env={"MIRRORD_AGENT_TTL": "20", "MIRRORD_UDP_OUTGOING": "true"},
        flags={"target": "pod/from-flag"},
    ).to_dict()
    assert resolved["target"] == {"path": "pod/from-flag", "namespace": "file-ns"}
    assert resolved["agent"]["ttl"] == 20
    assert resolved["agent"]["log_level"] == "debug"
    assert resolved["feature"]["network"]["outgoing"]["tcp"] is False
    assert resolved["feature"]["network"]["outgoing"]["udp"] is True


def test_no_outgoing_beats_the_outgoing_variables(resolve_config) -> None:
    env = {"MIRRORD_TCP_OUTGOING": "true", "MIRRORD_UDP_OUTGOING": "true"}
    outgoing = resolve_config(env=env, flags={"no_outgoing": True}).to_dict()
    assert outgoing["feature"]["network"]["outgoing"]["tcp"] is False
    assert outgoing["feature"]["network"]["outgoing"]["udp"] is False


def test_flag_overrides_an_invalid_file_value_is_still_an_error(resolve_config) -> None:
    """The file is checked on its own: a flag for the same key does not hide its error."""
    with pytest.raises(ConfigError) as caught:
        resolve_config("[agent]\nttl = 70000\n", flags={"agent_ttl": "5"})
    assert [p.path for p in caught.value.problems] == ["agent.ttl"]


@pytest.mark.parametrize(
    ("dest", "text", "path"),
    [
        ("agent_ttl", "soon", "agent.ttl"),
        ("agent_ttl", "65536", "agent.ttl"),
        ("agent_startup_timeout", "-1", "agent.startup_timeout"),
        ("target", "service/web", "target.path"),
        ("fs_mode", "readwrite", "feature.fs.mode"),
    ],
)
def test_invalid_flag_value_names_the_flag(resolve_config, dest: str, text: str, path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config(flags={dest: text})
    (problem,) = caught.value.problems
    assert problem.path == path
    assert f"--{dest.replace('_', '-')}" in str(problem)


def test_invalid_flag_through_the_cli(run_cli) -> None:
    result = run_cli("run", "--dry-run", "--agent-ttl", "70000")
    assert result.returncode != 0
    assert "agent.ttl" in result.stderr
    assert "--agent-ttl" in result.stderr
    assert "Traceback" not in result.stderr
