"""The ``mirrord`` command line as a user runs it: plugins, verify-config, run/exec.

Every command runs the installed console script. Bad input must end in exit status 1 and
``key.path: message`` lines on stderr — never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mirrord_core.hookspecs import PROJECT_NAME

#: entry-point name → (distribution, config sections): the design's four first-party plugins.
FIRST_PARTY = {
    "env": ("mirrord-env", ["feature.env"]),
    "fs": ("mirrord-fs", ["feature.fs"]),
    "network": ("mirrord-network", ["feature.network"]),
    "target": ("mirrord-target", ["target"]),
}

#: The flags of mirrord 3.32's ``exec`` that ``mirrord run`` takes (issue 2, item 5).
RUN_FLAGS = [
    "-t, --target",
    "-n, --target-namespace",
    "-a, --agent-namespace",
    "-l, --agent-log-level",
    "-i, --agent-image",
    "--fs-mode",
    "-s, --override-env-vars-include",
    "-x, --override-env-vars-exclude",
    "--no-remote-dns",
    "--skip-processes",
    "--agent-ttl",
    "--agent-startup-timeout",
    "-c, --accept-invalid-certificates",
    "-e, --ephemeral-container",
    "--steal",
    "-p, --pause",
    "--no-outgoing",
    "--no-tcp-outgoing",
    "--no-udp-outgoing",
    "-f, --config-file",
    "--dry-run",
]

Result = subprocess.CompletedProcess[str]


def installed_plugin_names() -> set[str]:
    return {ep.name for ep in importlib.metadata.entry_points(group="mirrord")}


def hooks_of(name: str) -> list[str]:
    """The hook implementations of a first-party plugin, read from its module."""
    [entry_point] = [
        ep for ep in importlib.metadata.entry_points(group="mirrord") if ep.name == name
    ]
    module = importlib.import_module(entry_point.module)
    return sorted(
        attribute
        for attribute in dir(module)
        if hasattr(getattr(module, attribute), f"{PROJECT_NAME}_impl")
    )


def clean(result: Result) -> None:
    """No traceback on either stream."""
    assert "Traceback" not in result.stdout
    assert "Traceback" not in result.stderr


def write(tmp_path: Path, text: str, name: str = "mirrord.toml") -> Path:
    file = tmp_path / name
    file.write_text(text)
    return file


def ok_json(result: Result) -> Any:
    assert result.returncode == 0, result.stderr
    clean(result)
    return json.loads(result.stdout)


def parse_table(text: str) -> dict[str, list[list[str]]]:
    """Rows of the ``mirrord plugins`` table: plugin name → cells, each a list of lines."""
    rows: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    for line in text.splitlines():
        bar = "│" if "│" in line else "|"
        if not line.startswith(bar):
            continue
        cells = [cell.strip() for cell in line.strip().strip(bar).split(bar)]
        if cells[0]:
            current = [[cell] if cell else [] for cell in cells]
            rows[cells[0]] = current
        elif current is not None:
            for column, cell in zip(current, cells, strict=True):
                if cell:
                    column.append(cell)
    return rows


# -- mirrord plugins -----------------------------------------------------------------------


def test_plugins_lists_the_first_party_plugins(run_cli) -> None:
    result = run_cli("plugins")
    assert result.returncode == 0, result.stderr
    clean(result)
    rows = parse_table(result.stdout)
    assert set(rows) == installed_plugin_names()
    for name, (distribution, sections) in FIRST_PARTY.items():
        version = importlib.metadata.version(distribution)
        assert rows[name] == [[name], [distribution], [version], sections, hooks_of(name)]
    assert "register_config_sections" in rows["fs"][4]
    assert "filter_env" in rows["env"][4]


def test_plugins_json(run_cli) -> None:
    listed = ok_json(run_cli("plugins", "--json"))
    assert set(listed) == {"plugins", "failed", "disabled"}
    assert listed["failed"] == []
    assert listed["disabled"] == []
    by_name = {plugin["name"]: plugin for plugin in listed["plugins"]}
    assert set(by_name) == installed_plugin_names()
    assert [p["name"] for p in listed["plugins"]] == sorted(by_name)
    for name, (distribution, sections) in FIRST_PARTY.items():
        assert by_name[name] == {
            "name": name,
            "distribution": distribution,
            "version": importlib.metadata.version(distribution),
            "sections": sections,
            "hooks": hooks_of(name),
        }


def test_no_command_is_a_usage_error(run_cli) -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: mirrord" in result.stderr
    clean(result)


def test_unknown_command_is_a_usage_error(run_cli) -> None:
    result = run_cli("teleport")
    assert result.returncode == 2
    assert "invalid choice: 'teleport'" in result.stderr
    clean(result)


# -- mirrord verify-config ----------------------------------------------------------------


def test_verify_config_json_prints_the_resolved_config(run_cli, tmp_path: Path) -> None:
    file = write(
        tmp_path,
        'target = "deployment/api/container/app"\n'
        "[agent]\nttl = 30\n"
        '[feature.fs]\nmode = "write"\nlocal = ["^/home"]\n'
        '[feature.env]\ninclude = "A;B"\n'
        '[feature.network.incoming]\nmode = "steal"\n',
    )
    result = run_cli("verify-config", "--json", str(file))
    config = ok_json(result)
    assert result.stderr == ""
    assert config["target"]["path"] == "deployment/api/container/app"
    assert config["agent"]["ttl"] == 30
    assert config["agent"]["log_level"] == "info"
    assert config["agent"]["startup_timeout"] == 60
    assert config["feature"]["fs"]["mode"] == "write"
    assert config["feature"]["fs"]["local"] == ["^/home"]
    assert config["feature"]["env"]["include"] == ["A", "B"]
    assert config["feature"]["network"]["incoming"]["mode"] == "steal"
    assert config["feature"]["network"]["incoming"]["http_filter"]["ports"] == [80, 8080]


def test_verify_config_json_of_an_empty_file_has_every_section(run_cli, tmp_path: Path) -> None:
    config = ok_json(run_cli("verify-config", "--json", str(write(tmp_path, ""))))
    assert {"agent", "feature", "target"} <= set(config)
    assert {"fs", "env", "network"} <= set(config["feature"])


def test_verify_config_without_json_says_valid(run_cli, tmp_path: Path) -> None:
    file = write(tmp_path, '[feature.fs]\nmode = "read"\n')
    result = run_cli("verify-config", str(file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{file}: valid mirrord configuration"
    clean(result)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("mirrord.yaml", "feature:\n  fs:\n    mode: write\n"),
        ("mirrord.yml", "feature:\n  fs: write\n"),
        ("mirrord.json", '{"feature": {"fs": {"mode": "write"}}}'),
        ("mirrord", '{"feature": {"fs": "write"}}'),
    ],
)
def test_verify_config_reads_every_format(run_cli, tmp_path: Path, name: str, text: str) -> None:
    config = ok_json(run_cli("verify-config", "--json", str(write(tmp_path, text, name))))
    assert config["feature"]["fs"]["mode"] == "write"


def test_verify_config_warnings_go_to_stderr(run_cli, tmp_path: Path) -> None:
    file = write(tmp_path, 'target = "podname/web"\n[feature.fs]\nmode = "disabled"\n')
    result = run_cli("verify-config", "--json", str(file))
    config = ok_json(result)  # stdout is only the JSON document
    assert config["target"]["path"] == "pod/web"
    assert config["feature"]["fs"]["mode"] == "local"
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2
    assert all(line.startswith("mirrord: warning: ") for line in warnings)
    assert any(f"{file}: target:" in line for line in warnings)
    assert any(f"{file}: feature.fs.mode:" in line for line in warnings)


def test_verify_config_lists_every_problem(run_cli, tmp_path: Path) -> None:
    file = write(
        tmp_path,
        "[agent]\nttl = 70000\nlog_level = 3\n"
        '[feature.fs]\nmod = "read"\n'
        '[feature.network.incoming]\nmode = "steel"\n',
    )
    result = run_cli("verify-config", str(file))
    assert result.returncode == 1
    assert result.stdout == ""
    clean(result)
    lines = result.stderr.splitlines()
    assert lines[0] == f"mirrord: error: invalid mirrord configuration in {file}:"
    problems = [line.strip() for line in lines[1:]]
    assert sorted(p.split(": ")[0] for p in problems) == [
        "agent.log_level",
        "agent.ttl",
        "feature.fs.mod",
        "feature.network.incoming.mode",
    ]
    assert "feature.fs.mod: unknown key; did you mean mode?" in problems


def test_verify_config_json_failure_document(run_cli, tmp_path: Path) -> None:
    file = write(tmp_path, '[feature.fs]\nmod = "read"\n[agent]\nttl = -1\n')
    result = run_cli("verify-config", "--json", str(file))
    assert result.returncode == 1
    clean(result)
    document = json.loads(result.stdout)
    assert document["type"] == "Fail"
    assert sorted(e.split(": ")[0] for e in document["errors"]) == ["agent.ttl", "feature.fs.mod"]
    for error in document["errors"]:
        assert error in result.stderr


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.toml", None, "cannot read the config file"),
        ("bad.toml", "[agent\nttl = 1\n", "line 1"),
        ("bad.yaml", "agent:\n  ttl: [1\n", "line"),
        ("bad.json", '{"agent": {"ttl": 1,}}', "line 1"),
        ("list.json", "[1, 2]", "top level"),
        ("binary.toml", b"\xff\xfe\x00garbage", "UTF-8"),
        ("dir.toml", "DIRECTORY", "cannot read the config file"),
    ],
)
def test_verify_config_bad_files(
    run_cli, tmp_path: Path, name: str, content: str | bytes | None, expected: str
) -> None:
    file = tmp_path / name
    if content == "DIRECTORY":
        file.mkdir()
    elif isinstance(content, bytes):
        file.write_bytes(content)
    elif content is not None:
        file.write_text(content)
    for args in (["verify-config", str(file)], ["run", "--dry-run", "-f", str(file)]):
        result = run_cli(*args)
        assert result.returncode == 1, args
        assert result.stderr.startswith(f"mirrord: error: invalid mirrord configuration in {file}")
        assert expected in result.stderr
        clean(result)


def test_verify_config_needs_a_file(run_cli) -> None:
    result = run_cli("verify-config")
    assert result.returncode == 2
    assert "FILE" in result.stderr
    clean(result)


# -- mirrord run / exec -------------------------------------------------------------------


def test_run_dry_run_applies_flags(run_cli, tmp_path: Path) -> None:
    file = write(
        tmp_path,
        'target = "pod/from-file"\n[agent]\nttl = 3\n[feature.network.incoming]\nmode = "mirror"\n',
    )
    result = run_cli("run", "--dry-run", "-f", str(file), "-t", "pod/x", "--steal")
    config = ok_json(result)
    assert config["target"]["path"] == "pod/x"
    assert config["feature"]["network"]["incoming"]["mode"] == "steal"
    assert config["agent"]["ttl"] == 3


def test_run_dry_run_precedence_file_env_flag(run_cli, tmp_path: Path) -> None:
    file = write(tmp_path, "[agent]\nttl = 3\n")
    env = {"MIRRORD_AGENT_TTL": "4"}
    assert ok_json(run_cli("run", "--dry-run", "-f", str(file)))["agent"]["ttl"] == 3
    assert ok_json(run_cli("run", "--dry-run", "-f", str(file), env=env))["agent"]["ttl"] == 4
    flagged = run_cli("run", "--dry-run", "-f", str(file), "--agent-ttl", "5", env=env)
    assert ok_json(flagged)["agent"]["ttl"] == 5


def test_run_dry_run_reads_mirrord_config_file(run_cli, tmp_path: Path) -> None:
    file = write(tmp_path, '[feature.fs]\nmode = "write"\n')
    result = run_cli("run", "--dry-run", env={"MIRRORD_CONFIG_FILE": str(file)})
    assert ok_json(result)["feature"]["fs"]["mode"] == "write"


def test_run_dry_run_with_every_flag(run_cli) -> None:
    result = run_cli(
        "run",
        "--dry-run",
        "-t",
        "deployment/api/container/app",
        "-n",
        "team",
        "-a",
        "agents",
        "-l",
        "debug",
        "-i",
        "registry/agent:1",
        "--fs-mode",
        "write",
        "-s",
        "A;B",
        "-x",
        "C",
        "--no-remote-dns",
        "--skip-processes",
        "ide;gdb",
        "--agent-ttl",
        "9",
        "--agent-startup-timeout",
        "120",
        "-c",
        "-e",
        "--steal",
        "-p",
        "--no-outgoing",
    )
    config = ok_json(result)
    assert config["target"] == {"path": "deployment/api/container/app", "namespace": "team"}
    agent = config["agent"]
    assert (agent["namespace"], agent["log_level"], agent["image"]) == (
        "agents",
        "debug",
        "registry/agent:1",
    )
    assert (agent["ttl"], agent["startup_timeout"], agent["ephemeral"]) == (9, 120, True)
    assert agent["pause"] is True
    feature = config["feature"]
    assert feature["fs"]["mode"] == "write"
    assert (feature["env"]["include"], feature["env"]["exclude"]) == (["A", "B"], ["C"])
    assert feature["network"]["dns"] is False
    assert feature["network"]["incoming"]["mode"] == "steal"
    assert feature["network"]["outgoing"]["tcp"] is False
    assert feature["network"]["outgoing"]["udp"] is False
    assert config["skip_processes"] == ["ide", "gdb"]
    assert config["accept_invalid_certificates"] is True


@pytest.mark.parametrize(
    "args",
    [
        ["--dry-run", "-t", "pod/x", "--steal", "--agent-ttl", "7"],
        ["--dry-run", "--fs-mode", "local", "-x", "SECRET"],
        ["--dry-run"],
    ],
)
def test_exec_is_an_alias_of_run(run_cli, args: list[str]) -> None:
    run = run_cli("run", *args)
    exec_ = run_cli("exec", *args)
    assert ok_json(run) == ok_json(exec_)
    assert run.stderr == exec_.stderr


def test_exec_help_shows_the_run_flags(run_cli) -> None:
    run = run_cli("run", "--help")
    exec_ = run_cli("exec", "--help")
    assert run.returncode == exec_.returncode == 0
    assert exec_.stdout.replace("mirrord exec", "mirrord run") == run.stdout


def test_run_help_lists_mirrords_exec_flags(run_cli) -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0, result.stderr
    # argparse prints "-t TARGET, --target TARGET"; compare without the metavars.
    words = {
        token.rstrip(",")
        for line in result.stdout.splitlines()
        for token in line.split()
        if token.startswith("-")
    }
    for flags in RUN_FLAGS:
        for flag in flags.split(", "):
            assert flag in words, flag


@pytest.mark.parametrize("command", ["run", "exec"])
def test_run_without_dry_run_fails_with_one_line(run_cli, command: str) -> None:
    result = run_cli(command, "-t", "pod/x", "--", "python3", "-c", "print('hi')")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mirrord: error: ")
    clean(result)


def test_run_without_a_command(run_cli) -> None:
    result = run_cli("run", "-t", "pod/x")
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        "mirrord: error: no command given: mirrord run [FLAGS] -- COMMAND [ARGS…]"
    ]
    clean(result)


@pytest.mark.parametrize(
    ("args", "key", "flag"),
    [
        (["--agent-ttl", "abc"], "agent.ttl", "--agent-ttl"),
        (["--agent-ttl", "70000"], "agent.ttl", "--agent-ttl"),
        (["--agent-startup-timeout", "-3"], "agent.startup_timeout", "--agent-startup-timeout"),
        (["--fs-mode", "sometimes"], "feature.fs.mode", "--fs-mode"),
        (["-t", "cluster/everything"], "target.path", "--target"),
        (["-t", "pod/"], "target.path", "--target"),
    ],
)
def test_bad_flag_values_name_the_key_and_the_flag(
    run_cli, args: list[str], key: str, flag: str
) -> None:
    result = run_cli("run", "--dry-run", *args)
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    clean(result)
    [problem] = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert problem.startswith(f"{key}: ")
    assert problem.endswith(f"(from flag {flag})")


def test_bad_flag_and_bad_file_are_reported_together(run_cli, tmp_path: Path) -> None:
    file = write(tmp_path, "[agent]\nttl = true\n")
    result = run_cli("run", "--dry-run", "-f", str(file), "--fs-mode", "never")
    assert result.returncode == 1
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert [p.split(": ")[0] for p in problems] == ["agent.ttl", "feature.fs.mode"]
    clean(result)


def test_bad_environment_variable_names_the_variable(run_cli) -> None:
    result = run_cli("run", "--dry-run", env={"MIRRORD_AGENT_TTL": "soon"})
    assert result.returncode == 1
    assert "agent.ttl: " in result.stderr
    assert "MIRRORD_AGENT_TTL" in result.stderr
    clean(result)


def test_unknown_flag_is_a_usage_error(run_cli) -> None:
    result = run_cli("run", "--dry-run", "--teleport")
    assert result.returncode == 2
    assert "--teleport" in result.stderr
    clean(result)
