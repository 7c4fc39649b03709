"""Every class of configuration error: one ``ConfigError`` listing every problem as
``key.path: message`` in config key names, never a traceback."""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from mirrord_core.config import ConfigError, ConfigLayout, ConfigProblem, resolve
from mirrord_core.plugin_manager import load_plugins


def problems_of(resolve_config, *args: Any, **kwargs: Any) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        resolve_config(*args, **kwargs)
    return caught.value.problems


def only_problem(resolve_config, *args: Any, **kwargs: Any) -> ConfigProblem:
    problems = problems_of(resolve_config, *args, **kwargs)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


# ---------------------------------------------------------------------------------------
# unknown keys
# ---------------------------------------------------------------------------------------

UNKNOWN_KEYS = [
    # (TOML, problem path, suggestion) — the seed's examples lost their underscores.
    (
        "acceptinvalidcertificates = true",
        "acceptinvalidcertificates",
        "accept_invalid_certificates",
    ),
    ('[agent]\nloglevel = "trace"', "agent.loglevel", "log_level"),
    ('[agent]\nimagepull_policy = "Always"', "agent.imagepull_policy", "image_pull_policy"),
    ("[feature]\ncaptureerrortrace = true", "feature.captureerrortrace", "capture_error_trace"),
    ('[feature.fs]\nreadwrite = ["/var/run"]', "feature.fs.readwrite", "read_write"),
    ('[feature.fs]\nreadonly = ["/etc"]', "feature.fs.readonly", "read_only"),
    (
        "[feature.network.incoming]\nhttpheaderfilter = {}",
        "feature.network.incoming.httpheaderfilter",
        "http_filter",
    ),
    ("skip_process = []", "skip_process", "skip_processes"),
    ("[agent]\nttll = 3", "agent.ttll", "ttl"),
    ("[feature.network]\ndnss = false", "feature.network.dnss", "dns"),
    ('[target]\nnamspace = "x"', "target.namspace", "namespace"),
    ("[feature.network.outgoing]\nTCP = false", "feature.network.outgoing.TCP", "tcp"),
    ('[feature.env]\noverrides = { A = "b" }', "feature.env.overrides", "override"),
    (
        "[feature.network.incoming.http_filter]\nport = 80",
        "feature.network.incoming.http_filter.port",
        "ports",
    ),
]


@pytest.mark.parametrize(("text", "path", "suggestion"), UNKNOWN_KEYS)
def test_unknown_key_with_suggestion(resolve_config, text: str, path: str, suggestion: str) -> None:
    problem = only_problem(resolve_config, text)
    assert problem.path == path
    assert str(problem) == f"{path}: unknown key; did you mean {suggestion}?"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("colour = true", "colour"),
        ("[agent]\nwhatever = 1", "agent.whatever"),
        ("[feature]\nmagic = {}", "feature.magic"),
        ("[feature.fs]\nxyz = 1", "feature.fs.xyz"),
    ],
)
def test_unknown_key_without_a_close_match(resolve_config, text: str, path: str) -> None:
    problem = only_problem(resolve_config, text)
    assert str(problem) == f"{path}: unknown key"


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".yaml", "1: 2\n"),
        (".yaml", "null: 3\n"),
        (".yaml", "agent:\n  true: 1\n"),
        (".yaml", "agent: {ttl: 3, 7: x}\n"),
    ],
)
def test_non_string_yaml_keys_are_unknown_keys(resolve_config, suffix: str, text: str) -> None:
    problems = problems_of(resolve_config, text, suffix=suffix)
    assert problems and all("unknown key" in problem.message for problem in problems)


# ---------------------------------------------------------------------------------------
# wrong types
# ---------------------------------------------------------------------------------------

WRONG_TYPES = [
    # (TOML, path, fragment of the message)
    (
        'accept_invalid_certificates = "true"',
        "accept_invalid_certificates",
        "expected true or false, got string 'true'",
    ),
    ("operator = 1", "operator", "expected true or false, got integer 1"),
    ("[agent]\nttl = true", "agent.ttl", "got boolean true"),
    ('[agent]\nttl = "30"', "agent.ttl", "got string '30'"),
    ("[agent]\nttl = 1.5", "agent.ttl", "got number 1.5"),
    ('[agent]\nstartup_timeout = "60"', "agent.startup_timeout", "expected an integer"),
    ('[agent]\nlog_level = ["debug"]', "agent.log_level", "expected a string, got a list"),
    ("[agent]\nnamespace = 5", "agent.namespace", "expected a string, got integer 5"),
    ("[agent]\nephemeral = {}", "agent.ephemeral", "got a table/object"),
    ('[agent]\nimage_pull_policy = "Sometimes"', "agent.image_pull_policy", "expected one of"),
    ("skip_processes = 5", "skip_processes", "expected a string or a list of strings"),
    ('skip_processes = ["a", 1]', "skip_processes", "item 1: expected a string, got integer 1"),
    ("connect_agent_name = true", "connect_agent_name", "expected a string"),
    ('connect_tcp = "no-port"', "connect_tcp", "HOST:PORT"),
    ('connect_tcp = "host:0"', "connect_tcp", "HOST:PORT"),
    ('agent = "fast"', "agent", "expected a table/object, got string 'fast'"),
    ("feature = true", "feature", "expected a table/object, got boolean true"),
    (
        "[feature.env]\noverride = { A = 1 }",
        "feature.env.override",
        "A: expected a string, got integer 1",
    ),
    (
        '[feature.env]\noverride = "A=1"',
        "feature.env.override",
        "expected a table of string values",
    ),
    ("[feature.env]\ninclude = 3", "feature.env.include", "expected a string or a list of strings"),
    ("[feature.fs]\nmode = 3", "feature.fs.mode", "expected one of"),
    ('[feature.fs]\nmode = "readwrite"', "feature.fs.mode", "got 'readwrite'"),
    (
        "[feature.fs]\nlocal = { a = 1 }",
        "feature.fs.local",
        "expected a string or a list of strings",
    ),
    (
        '[feature.network]\ndns = "yes"',
        "feature.network.dns",
        "expected true or false, got string 'yes'",
    ),
    ('[feature.network.incoming]\nmode = "sniff"', "feature.network.incoming.mode", "got 'sniff'"),
    (
        "[feature.network.incoming]\nport_mapping = [9333, 80]",
        "feature.network.incoming.port_mapping",
        "item 0: expected a pair",
    ),
    (
        "[feature.network.incoming]\nport_mapping = [[1, 2, 3]]",
        "feature.network.incoming.port_mapping",
        "item 0: expected a pair",
    ),
    (
        "[feature.network.incoming]\nport_mapping = 80",
        "feature.network.incoming.port_mapping",
        "expected a list of [local, remote] port pairs",
    ),
    (
        '[feature.network.incoming.http_filter]\nports = "80"',
        "feature.network.incoming.http_filter.ports",
        "expected an integer",
    ),
    (
        "[feature.network.incoming.http_filter]\nheader_filter = 5",
        "feature.network.incoming.http_filter.header_filter",
        "expected a regular expression string",
    ),
    (
        '[feature.network.outgoing]\nudp = "false"',
        "feature.network.outgoing.udp",
        "expected true or false",
    ),
    ("target = 42", "target", "expected a target string or a table"),
    ("[target]\nnamespace = 3", "target.namespace", "expected a string, got integer 3"),
    ("[target]\npath = 3", "target.path", "expected a target string or table"),
    ("target = { pod = 1 }", "target.path", "target names must be strings"),
]


@pytest.mark.parametrize(("text", "path", "fragment"), WRONG_TYPES)
def test_wrong_type(resolve_config, text: str, path: str, fragment: str) -> None:
    problem = only_problem(resolve_config, text)
    assert problem.path == path
    assert fragment in problem.message
    assert str(problem).startswith(f"{path}: ")


# ---------------------------------------------------------------------------------------
# out of range (uint16 / uint64)
# ---------------------------------------------------------------------------------------

OUT_OF_RANGE = [
    ("[agent]\nttl = 70000", "agent.ttl", "70000 is out of range"),
    ("[agent]\nttl = -1", "agent.ttl", "-1 is out of range"),
    ("[agent]\ncommunication_timeout = 65536", "agent.communication_timeout", "65536"),
    ("[agent]\nstartup_timeout = -5", "agent.startup_timeout", "-5 is out of range"),
    ("connect_agent_port = -1", "connect_agent_port", "-1 is out of range"),
    ("connect_agent_port = 65536", "connect_agent_port", "65536 is out of range"),
    (
        "[feature.network.incoming.http_filter]\nports = 65536",
        "feature.network.incoming.http_filter.ports",
        "65536 is out of range",
    ),
    (
        "[feature.network.incoming.http_filter]\nports = [80, 65536]",
        "feature.network.incoming.http_filter.ports",
        "item 1: 65536 is out of range",
    ),
    (
        "[feature.network.incoming.http_filter]\nports = [-80]",
        "feature.network.incoming.http_filter.ports",
        "item 0: -80",
    ),
    (
        "[feature.network.incoming]\nport_mapping = [[70000, 80]]",
        "feature.network.incoming.port_mapping",
        "item 0: 70000 is out of range",
    ),
    (
        "[feature.network.incoming]\nport_mapping = [[9333, 80], [9334, -1]]",
        "feature.network.incoming.port_mapping",
        "item 1: -1 is out of range",
    ),
    ('connect_tcp = "host:65536"', "connect_tcp", "port from 1 to 65535"),
]


@pytest.mark.parametrize(("text", "path", "fragment"), OUT_OF_RANGE)
def test_out_of_range(resolve_config, text: str, path: str, fragment: str) -> None:
    problem = only_problem(resolve_config, text)
    assert problem.path == path
    assert fragment in problem.message


def test_uint64_bound(resolve_config) -> None:
    ok = resolve_config('{"agent": {"startup_timeout": 18446744073709551615}}', suffix=".json")
    assert ok.to_dict()["agent"]["startup_timeout"] == 2**64 - 1
    problem = only_problem(
        resolve_config, '{"agent": {"startup_timeout": 18446744073709551616}}', suffix=".json"
    )
    assert problem.path == "agent.startup_timeout"
    assert "out of range" in problem.message


@pytest.mark.parametrize("port", [0, 65535])
def test_port_bounds_are_inclusive(resolve_config, port: int) -> None:
    text = f"connect_agent_port = {port}\n[agent]\nttl = {port}\n"
    resolved = resolve_config(text).to_dict()
    assert resolved["connect_agent_port"] == port
    assert resolved["agent"]["ttl"] == port


def test_port_mapping_ports_map_once(resolve_config) -> None:
    text = "[feature.network.incoming]\nport_mapping = [[1, 2], [1, 3]]"
    problem = only_problem(resolve_config, text)
    assert "local port 1 is already mapped by item 0" in problem.message
    text = "[feature.network.incoming]\nport_mapping = [[1, 2], [3, 2]]"
    problem = only_problem(resolve_config, text)
    assert "remote port 2 is already mapped by item 0" in problem.message


# ---------------------------------------------------------------------------------------
# invalid regular expressions
# ---------------------------------------------------------------------------------------

BAD_REGEXES = [
    ('[feature.fs]\nread_write = "("', "feature.fs.read_write"),
    ('[feature.fs]\nread_only = ["^/etc", "[a-"]', "feature.fs.read_only"),
    ('[feature.fs]\nlocal = "*.txt"', "feature.fs.local"),
    (
        '[feature.network.incoming.http_filter]\nheader_filter = "Id: (token"',
        "feature.network.incoming.http_filter.header_filter",
    ),
    (
        '[feature.network.outgoing]\nunix_streams = "/run/[x"',
        "feature.network.outgoing.unix_streams",
    ),
    (
        '[feature.network.incoming.http_header_filter]\nfilter = "a)"',
        "feature.network.incoming.http_filter.header_filter",
    ),
]


@pytest.mark.parametrize(("text", "path"), BAD_REGEXES)
def test_invalid_regex(resolve_config, text: str, path: str) -> None:
    problem = only_problem(resolve_config, text)
    assert problem.path == path
    assert "invalid regular expression" in problem.message


# ---------------------------------------------------------------------------------------
# bad targets
# ---------------------------------------------------------------------------------------

BAD_TARGETS = [
    "pod",
    "pod/",
    "pod/Web",
    "pod/web_1",
    "pod/a/b",
    "pod/a/container",
    "pod/a/container/App",
    "pod/a/container/b/c",
    "deployment/",
    "deploy/a/pod/b",
    "container/",
    "container/a/b",
    "pid/",
    "pid/abc",
    "pid/0",
    "pid/-3",
    "service/web",
    "web",
    "",
]


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_bad_target_path(resolve_config, target: str) -> None:
    for text in (f'target = "{target}"', f'[target]\npath = "{target}"'):
        problem = only_problem(resolve_config, text)
        assert problem.path == "target.path"
        assert "invalid target" in problem.message
        assert "valid forms: pod/NAME" in problem.message


@pytest.mark.parametrize(
    "text",
    [
        'target = { pod = "a", deployment = "b" }',
        'target = { pod = "a", cluster = "b" }',
        '[target]\npath = { container = "a" }',
        '[target]\npath = { pod = "Bad_Name" }',
    ],
)
def test_bad_target_object(resolve_config, text: str) -> None:
    assert only_problem(resolve_config, text).path == "target.path"


def test_bad_target_from_environment_names_the_variable(resolve_config) -> None:
    problem = only_problem(resolve_config, env={"MIRRORD_IMPERSONATED_TARGET": "svc/x"})
    assert problem.path == "target.path"
    assert "MIRRORD_IMPERSONATED_TARGET" in str(problem)


# ---------------------------------------------------------------------------------------
# the file itself
# ---------------------------------------------------------------------------------------

SYNTAX_ERRORS = [
    # (suffix, text, "TOML"/"YAML"/"JSON", line)
    (".toml", 'target = "pod/x"\n[agent]\nttl = = 3\n', "TOML", 3),
    (".toml", "[agent]\nttl = 1\nttl = 2\n", "TOML", 3),
    (".toml", '[agent]\nlog_level = "debug"\nimage = "unterminated\n', "TOML", 3),
    (".toml", "[feature]\nenv = { include = [\n", "TOML", 3),
    (".yaml", "agent:\n  ttl: 1\n   log_level: x\n", "YAML", 3),
    (".yml", "feature:\n  fs: read\n  - x\n", "YAML", 3),
    (".yaml", "agent:\n  ttl: 1\n  image: [unclosed\n", "YAML", 4),
    (".json", '{\n  "agent": {\n    "ttl": 1,,\n  }\n}', "JSON", 3),
    (".json", '{\n  "agent": {\n    "ttl": 1\n  }\n', "JSON", 5),
    ("", '{\n  "target": "pod/x"\n  "agent": {}\n}', "JSON", 3),
]


@pytest.mark.parametrize(("suffix", "text", "kind", "line"), SYNTAX_ERRORS)
def test_syntax_error_with_line_number(
    resolve_config, suffix: str, text: str, kind: str, line: int
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config(text, suffix=suffix)
    (problem,) = caught.value.problems
    assert problem.message.startswith(f"{kind} syntax error")
    assert re.search(rf"\bline {line}\b", problem.message), problem.message
    assert caught.value.file is not None and caught.value.file.endswith(f"mirrord{suffix}")
    assert caught.value.file in str(caught.value)


@pytest.mark.parametrize("suffix", [".ini", ".conf", ".txt", ".tml", ".jsonc"])
def test_unsupported_extension(resolve_config, suffix: str) -> None:
    problem = only_problem(resolve_config, "{}", suffix=suffix)
    assert f"unsupported config file format '{suffix}'" in problem.message
    assert ".toml, .yaml, .yml or .json" in problem.message


def test_missing_file(layout: ConfigLayout, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        resolve(layout, file=missing, environ={})
    assert caught.value.file == str(missing)
    assert "cannot read the config file" in str(caught.value)
    assert str(missing) in str(caught.value)


def test_missing_file_from_mirrord_config_file(layout: ConfigLayout, tmp_path: Path) -> None:
    missing = tmp_path / "gone.yaml"
    with pytest.raises(ConfigError) as caught:
        resolve(layout, environ={"MIRRORD_CONFIG_FILE": str(missing)})
    assert caught.value.file == str(missing)


def test_directory_instead_of_file(layout: ConfigLayout, tmp_path: Path) -> None:
    folder = tmp_path / "config.json"
    folder.mkdir()
    with pytest.raises(ConfigError) as caught:
        resolve(layout, file=folder, environ={})
    assert "cannot read the config file" in str(caught.value)


def test_not_utf8(layout: ConfigLayout, tmp_path: Path) -> None:
    file = tmp_path / "latin1.toml"
    file.write_bytes('[agent]\nnamespace = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        resolve(layout, file=file, environ={})
    assert "not UTF-8" in str(caught.value)


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".yaml", "- a\n- b\n"),
        (".yaml", "just a string\n"),
        (".yml", "42\n"),
        (".json", "[]"),
        (".json", '"pod/x"'),
        ("", "3"),
        ("", "true"),
    ],
)
def test_top_level_must_be_a_table(resolve_config, suffix: str, text: str) -> None:
    problem = only_problem(resolve_config, text, suffix=suffix)
    assert "table/object at the top level" in problem.message


# ---------------------------------------------------------------------------------------
# environment variables and flags
# ---------------------------------------------------------------------------------------

BAD_VARIABLES = [
    ("MIRRORD_ACCEPT_INVALID_CERTIFICATES", "maybe", "accept_invalid_certificates"),
    ("MIRRORD_CONNECT_PORT", "http", "connect_agent_port"),
    ("MIRRORD_CONNECT_PORT", "70000", "connect_agent_port"),
    ("MIRRORD_CONNECT_TCP", "localhost", "connect_tcp"),
    ("MIRRORD_OPERATOR_ENABLE", "enabled", "operator"),
    ("MIRRORD_AGENT_IMAGE_PULL_POLICY", "always", "agent.image_pull_policy"),
    ("MIRRORD_AGENT_TTL", "-1", "agent.ttl"),
    ("MIRRORD_AGENT_TTL", "1.5", "agent.ttl"),
    ("MIRRORD_EPHEMERAL_CONTAINER", "2", "agent.ephemeral"),
    ("MIRRORD_AGENT_COMMUNICATION_TIMEOUT", "never", "agent.communication_timeout"),
    ("MIRRORD_AGENT_STARTUP_TIMEOUT", "1m", "agent.startup_timeout"),
    ("MIRRORD_PAUSE", "paused", "agent.pause"),
    ("MIRRORD_AGENT_STEALER_FLUSH_CONNECTIONS", "flush", "agent.flush_connections"),
    ("MIRRORD_CAPTURE_ERROR_TRACE", "y3s", "feature.capture_error_trace"),
    ("MIRRORD_FILE_MODE", "readwrite", "feature.fs.mode"),
    ("MIRRORD_FILE_READ_WRITE_PATTERN", "^/ok;(", "feature.fs.read_write"),
    ("MIRRORD_FILE_READ_ONLY_PATTERN", "[", "feature.fs.read_only"),
    ("MIRRORD_FILE_LOCAL_PATTERN", "*", "feature.fs.local"),
    ("MIRRORD_AGENT_TCP_STEAL_TRAFFIC", "sniff", "feature.network.incoming.mode"),
    ("MIRRORD_HTTP_HEADER_FILTER", "(", "feature.network.incoming.http_filter.header_filter"),
    ("MIRRORD_HTTP_HEADER_FILTER_PORTS", "80;http", "feature.network.incoming.http_filter.ports"),
    ("MIRRORD_HTTP_HEADER_FILTER_PORTS", "65536", "feature.network.incoming.http_filter.ports"),
    ("MIRRORD_TCP_OUTGOING", "tcp", "feature.network.outgoing.tcp"),
    ("MIRRORD_UDP_OUTGOING", "nope", "feature.network.outgoing.udp"),
    ("MIRRORD_OUTGOING_REMOTE_UNIX_STREAMS", "(", "feature.network.outgoing.unix_streams"),
    ("MIRRORD_REMOTE_DNS", "remote", "feature.network.dns"),
    ("MIRRORD_IMPERSONATED_TARGET", "pod", "target.path"),
]


@pytest.mark.parametrize(("variable", "text", "path"), BAD_VARIABLES)
def test_invalid_environment_value_names_the_variable(
    resolve_config, variable: str, text: str, path: str
) -> None:
    problem = only_problem(resolve_config, env={variable: text})
    assert problem.path == path
    assert problem.source == f"environment variable {variable}"
    assert str(problem).startswith(f"{path}: ")
    assert str(problem).endswith(f"(from environment variable {variable})")


def test_invalid_flag_value_names_the_flag(resolve_config) -> None:
    problem = only_problem(resolve_config, flags={"agent_startup_timeout": "soon"})
    assert problem.path == "agent.startup_timeout"
    assert problem.source == "flag --agent-startup-timeout"


# ---------------------------------------------------------------------------------------
# a section whose plugin is missing
# ---------------------------------------------------------------------------------------

PLUGIN_SECTIONS = [
    ("fs", "mirrord-fs", "feature.fs", '[feature.fs]\nmode = "write"\n'),
    ("fs", "mirrord-fs", "feature.fs", '[feature]\nfs = "read"\n'),
    ("env", "mirrord-env", "feature.env", '[feature.env]\ninclude = "A"\n'),
    ("network", "mirrord-network", "feature.network", "[feature]\nnetwork = false\n"),
    ("target", "mirrord-target", "target", 'target = "pod/web"\n'),
]


@pytest.mark.parametrize(("plugin", "distribution", "path", "text"), PLUGIN_SECTIONS)
def test_section_of_a_missing_plugin(
    tmp_path: Path, plugin: str, distribution: str, path: str, text: str
) -> None:
    loaded = load_plugins(environ={"MIRRORD_DISABLE_PLUGINS": plugin})
    assert plugin in loaded.disabled
    file = tmp_path / "mirrord.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        resolve(loaded.layout, file=file, environ={})
    (problem,) = caught.value.problems
    assert problem.path == path
    assert distribution in problem.message
    assert f"pip install {distribution}" in problem.message


def test_without_its_section_a_disabled_plugin_is_no_problem(tmp_path: Path) -> None:
    loaded = load_plugins(environ={"MIRRORD_DISABLE_PLUGINS": "fs"})
    file = tmp_path / "mirrord.toml"
    file.write_text('[agent]\nttl = 3\n[feature.env]\ninclude = "A"\n')
    resolved = resolve(loaded.layout, file=file, environ={}).to_dict()
    assert "fs" not in resolved["feature"]
    assert resolved["feature"]["env"]["include"] == ["A"]
    assert resolved["agent"]["ttl"] == 3


def test_missing_plugin_is_reported_with_other_problems(tmp_path: Path) -> None:
    loaded = load_plugins(environ={"MIRRORD_DISABLE_PLUGINS": "fs,network"})
    file = tmp_path / "mirrord.yaml"
    file.write_text("agent: {ttl: 70000}\nfeature:\n  fs: write\n  network: {dns: false}\n")
    with pytest.raises(ConfigError) as caught:
        resolve(loaded.layout, file=file, environ={})
    messages = {problem.path: problem.message for problem in caught.value.problems}
    assert set(messages) == {"agent.ttl", "feature.fs", "feature.network"}
    assert "pip install mirrord-fs" in messages["feature.fs"]
    assert "pip install mirrord-network" in messages["feature.network"]


def test_missing_plugin_through_the_cli(run_cli, tmp_path: Path) -> None:
    file = tmp_path / "mirrord.toml"
    file.write_text('[feature.fs]\nmode = "write"\n')
    result = run_cli("verify-config", str(file), env={"MIRRORD_DISABLE_PLUGINS": "fs"})
    assert result.returncode == 1
    assert "feature.fs" in result.stderr
    assert "pip install mirrord-fs" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------
# every problem at once, in config key names
# ---------------------------------------------------------------------------------------

MANY_PROBLEMS = """
acceptinvalidcertificates = true
connect_agent_port = -1
target = "service/web"

[agent]
loglevel = "trace"
ttl = 70000
ephemeral = "yes"

[feature]
captureerrortrace = true

[feature.env]
override = { A = 1 }

[feature.fs]
mode = "readwrite"
read_only = ["(("]

[feature.network]
dns = "no"

[feature.network.incoming]
port_mapping = [[9333, 70000]]

[feature.network.incoming.http_filter]
header_filter = "(("
ports = [65536]
"""

MANY_PATHS = {
    "acceptinvalidcertificates",
    "connect_agent_port",
    "target.path",
    "agent.loglevel",
    "agent.ttl",
    "agent.ephemeral",
    "feature.captureerrortrace",
    "feature.env.override",
    "feature.fs.mode",
    "feature.fs.read_only",
    "feature.network.dns",
    "feature.network.incoming.port_mapping",
    "feature.network.incoming.http_filter.header_filter",
    "feature.network.incoming.http_filter.ports",
}


def test_every_problem_of_a_file_is_reported_at_once(resolve_config) -> None:
    problems = problems_of(resolve_config, MANY_PROBLEMS)
    assert {problem.path for problem in problems} == MANY_PATHS
    assert len(problems) == len(MANY_PATHS)


def test_file_and_environment_problems_are_reported_together(resolve_config) -> None:
    env = {"MIRRORD_AGENT_STARTUP_TIMEOUT": "later", "MIRRORD_REMOTE_DNS": "sometimes"}
    problems = problems_of(resolve_config, MANY_PROBLEMS, env=env, flags={"agent_ttl": "x"})
    paths = [problem.path for problem in problems]
    assert set(paths) == MANY_PATHS | {"agent.startup_timeout"}
    sources = {problem.source for problem in problems}
    assert {
        "environment variable MIRRORD_AGENT_STARTUP_TIMEOUT",
        "environment variable MIRRORD_REMOTE_DNS",
        "flag --agent-ttl",
    } <= sources


def test_error_report_format(resolve_config) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config(MANY_PROBLEMS)
    error = caught.value
    lines = str(error).splitlines()
    assert lines[0] == f"invalid mirrord configuration in {error.file}:"
    assert lines[1:] == [f"  {problem}" for problem in error.problems]
    for problem in error.problems:
        assert str(problem) == f"{problem.path}: {problem.message}"


def _python_names(layout: ConfigLayout) -> set[str]:
    """Names a message must never show: the Python classes behind the config."""
    names = {"NoneType", "Traceback", "cattrs", "ClassValidationError", "__"}
    for _path, attribute, _meta in layout.iter_fields():
        for type_ in (attribute.type, *typing.get_args(attribute.type)):
            if isinstance(type_, type) and type_.__module__.startswith("mirrord"):
                names.add(type_.__name__)
    names |= {"FeatureConfig", "LayerConfig", "ConfigValueError", "UInt16", "UInt64"}
    return names


def _all_error_inputs() -> Iterator[tuple[str, str, dict[str, str]]]:
    yield ".toml", MANY_PROBLEMS, {}
    for text, _path, _fragment in [*WRONG_TYPES, *OUT_OF_RANGE]:
        yield ".toml", text, {}
    for text, _path, _suggestion in UNKNOWN_KEYS:
        yield ".toml", text, {}
    for text, _path in BAD_REGEXES:
        yield ".toml", text, {}
    for target in BAD_TARGETS:
        yield ".toml", f'target = "{target}"', {}
    for suffix, text, _kind, _line in SYNTAX_ERRORS:
        yield suffix, text, {}
    for variable, value, _path in BAD_VARIABLES:
        yield ".toml", "", {variable: value}


def test_messages_use_config_key_names_never_python_names(
    layout: ConfigLayout, resolve_config
) -> None:
    forbidden = _python_names(layout)
    assert "FsConfig" in forbidden and "TargetPath" in forbidden  # the check sees plugins
    known_top = {attribute.name for attribute in attrs.fields(layout.root_cls)}
    seen = 0
    for suffix, text, env in _all_error_inputs():
        for problem in problems_of(resolve_config, text, suffix=suffix, env=env):
            seen += 1
            rendered = str(problem)
            leaked = [name for name in forbidden if name in rendered]
            assert not leaked, rendered
            if problem.path:
                # a dotted config path: a known top-level key or the unknown key itself
                assert re.fullmatch(r"[A-Za-z0-9_\-\"]+(\.[A-Za-z0-9_\-\"]+)*", problem.path)
                head = problem.path.split(".")[0]
                assert head in known_top or "unknown key" in problem.message, rendered
    assert seen > 100


def test_verify_config_lists_every_problem(run_cli, tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(MANY_PROBLEMS)
    plain = run_cli("verify-config", str(file))
    assert plain.returncode == 1
    assert "Traceback" not in plain.stderr
    assert str(file) in plain.stderr
    for path in MANY_PATHS:
        assert re.search(rf"^\s*{re.escape(path)}: ", plain.stderr, re.MULTILINE), path
    as_json = run_cli("verify-config", "--json", str(file))
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["type"] == "Fail"
    assert {error.split(": ", 1)[0] for error in report["errors"]} == MANY_PATHS


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("syntax.toml", "[agent\nttl = 1\n"),
        ("syntax.yaml", "agent: [\n"),
        ("syntax.json", "{,}"),
        ("config.ini", "[agent]\n"),
        ("top.yaml", "- 1\n"),
    ],
)
def test_verify_config_never_prints_a_traceback(
    run_cli, tmp_path: Path, name: str, text: str
) -> None:
    file = tmp_path / name
    file.write_text(text)
    result = run_cli("verify-config", "--json", str(file))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["type"] == "Fail"


def test_verify_config_missing_file(run_cli, tmp_path: Path) -> None:
    result = run_cli("verify-config", str(tmp_path / "absent.toml"))
    assert result.returncode == 1
    assert "absent.toml" in result.stderr
    assert "Traceback" not in result.stderr
