"""The compatibility table (``DEPRECATIONS``): every entry translated, warned about and, where
old and new spellings can meet, rejected when both are given.

``CASES`` is keyed by entry id; ``test_every_entry_has_cases`` fails for a new entry without
cases, so the table cannot grow untested.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from mirrord_core.config import ConfigError
from mirrord_core.config.deprecations import (
    DEPRECATIONS,
    LegacyEnvVar,
    LegacyFsFilters,
    RenamedKey,
)


class Usage(NamedTuple):
    """One way of giving the old spelling, what it resolves to and what the warning says."""

    file: str | None
    env: dict[str, str]
    flags: dict[str, Any]
    expected: dict[str, Any]  # key path → resolved value
    warning: tuple[str, ...]  # fragments one warning contains; "{file}" is the file's path
    suffix: str = ".toml"


class Conflict(NamedTuple):
    """Old and new spelling together: an error at ``path`` naming both."""

    file: str | None
    env: dict[str, str]
    path: str
    names: tuple[str, ...]


class Case(NamedTuple):
    usages: tuple[Usage, ...]
    conflicts: tuple[Conflict, ...] = ()


FS = "feature.fs"
INCOMING = "feature.network.incoming"

CASES: dict[str, Case] = {
    "env-file-ops": Case(
        usages=(
            Usage(
                None,
                {"MIRRORD_FILE_OPS": "true"},
                {},
                {f"{FS}.mode": "write"},
                ("environment variable MIRRORD_FILE_OPS", f"{FS}.mode", "MIRRORD_FILE_MODE"),
            ),
            Usage(
                '[feature]\nfs = "local"\n',
                {"MIRRORD_FILE_RO_OPS": "true"},
                {},
                {f"{FS}.mode": "read"},
                ("environment variable MIRRORD_FILE_RO_OPS", f"{FS}.mode"),
            ),
            Usage(
                None,
                {"MIRRORD_FILE_OPS": "false", "MIRRORD_FILE_RO_OPS": "false"},
                {},
                {f"{FS}.mode": "local"},
                ("MIRRORD_FILE_OPS and MIRRORD_FILE_RO_OPS", f"{FS}.mode"),
            ),
        ),
        conflicts=(
            Conflict(
                None,
                {"MIRRORD_FILE_OPS": "true", "MIRRORD_FILE_MODE": "read"},
                f"{FS}.mode",
                ("MIRRORD_FILE_OPS", "MIRRORD_FILE_MODE"),
            ),
            Conflict(
                None,
                {"MIRRORD_FILE_RO_OPS": "true", "MIRRORD_FILE_MODE": "write"},
                f"{FS}.mode",
                ("MIRRORD_FILE_RO_OPS", "MIRRORD_FILE_MODE"),
            ),
        ),
    ),
    "fs-include-exclude": Case(
        usages=(
            # The seed's own example: include = remote paths, read-write in write mode.
            Usage(
                '[feature.fs]\nmode = "write"\ninclude = "^.*.txt$"\n',
                {},
                {},
                {f"{FS}.read_write": ["^.*.txt$"], f"{FS}.read_only": [], f"{FS}.mode": "write"},
                ("{file}", f"{FS}.include", f"{FS}.read_write"),
            ),
            Usage(
                '[feature.fs]\ninclude = ["^/etc/.*"]\n',
                {},
                {},
                {f"{FS}.read_only": ["^/etc/.*"], f"{FS}.read_write": []},
                ("{file}", f"{FS}.include", f"{FS}.read_only"),
            ),
            Usage(
                '[feature]\nfs = { mode = "read", exclude = ["^/home/.*"] }\n',
                {},
                {},
                {f"{FS}.local": ["^/home/.*"]},
                ("{file}", f"{FS}.exclude", f"{FS}.local"),
            ),
            Usage(
                None,
                {"MIRRORD_FILE_FILTER_INCLUDE": "^/etc/.*;^/srv/.*"},
                {},
                {f"{FS}.read_only": ["^/etc/.*", "^/srv/.*"]},
                ("MIRRORD_FILE_FILTER_INCLUDE", f"{FS}.read_only"),
            ),
            Usage(
                None,
                {"MIRRORD_FILE_MODE": "write", "MIRRORD_FILE_FILTER_INCLUDE": "^/srv/.*"},
                {},
                {f"{FS}.read_write": ["^/srv/.*"], f"{FS}.mode": "write"},
                ("MIRRORD_FILE_FILTER_INCLUDE", f"{FS}.read_write"),
            ),
            Usage(
                '[feature]\nfs = "write"\n',
                {"MIRRORD_FILE_FILTER_INCLUDE": "^/srv/.*"},
                {},
                {f"{FS}.read_write": ["^/srv/.*"]},
                ("MIRRORD_FILE_FILTER_INCLUDE", f"{FS}.read_write"),
            ),
            Usage(
                None,
                {"MIRRORD_FILE_FILTER_EXCLUDE": "^/home/.*"},
                {},
                {f"{FS}.local": ["^/home/.*"]},
                ("MIRRORD_FILE_FILTER_EXCLUDE", f"{FS}.local", "MIRRORD_FILE_LOCAL_PATTERN"),
            ),
            Usage(
                "feature:\n  fs:\n    mode: write\n    include: ['^/data']\n",
                {},
                {},
                {f"{FS}.read_write": ["^/data"]},
                ("{file}", f"{FS}.include"),
                suffix=".yaml",
            ),
        ),
        conflicts=(
            Conflict(
                '[feature.fs]\nmode = "write"\ninclude = "^/a"\nread_write = "^/b"\n',
                {},
                f"{FS}.include",
                (f"{FS}.include", f"{FS}.read_write"),
            ),
            Conflict(
                '[feature.fs]\ninclude = "^/a"\nread_only = "^/b"\n',
                {},
                f"{FS}.include",
                (f"{FS}.include", f"{FS}.read_only"),
            ),
            Conflict(
                '[feature.fs]\nexclude = "^/a"\nlocal = "^/b"\n',
                {},
                f"{FS}.exclude",
                (f"{FS}.exclude", f"{FS}.local"),
            ),
            Conflict(
                None,
                {"MIRRORD_FILE_FILTER_EXCLUDE": "^/a", "MIRRORD_FILE_LOCAL_PATTERN": "^/b"},
                f"{FS}.local",
                ("MIRRORD_FILE_FILTER_EXCLUDE", "MIRRORD_FILE_LOCAL_PATTERN"),
            ),
            Conflict(
                None,
                {"MIRRORD_FILE_FILTER_INCLUDE": "^/a", "MIRRORD_FILE_READ_ONLY_PATTERN": "^/b"},
                f"{FS}.read_only",
                ("MIRRORD_FILE_FILTER_INCLUDE", "MIRRORD_FILE_READ_ONLY_PATTERN"),
            ),
        ),
    ),
    "fs-toggle": Case(
        usages=(
            Usage(
                "[feature]\nfs = true\n",
                {},
                {},
                {f"{FS}.mode": "read"},
                ("{file}", FS, "true is deprecated"),
            ),
            Usage(
                "[feature]\nfs = false\n",
                {},
                {},
                {f"{FS}.mode": "local"},
                ("{file}", FS, "false is deprecated"),
            ),
            Usage(
                '{"feature": {"fs": false}}',
                {},
                {},
                {f"{FS}.mode": "local"},
                ("{file}", FS),
                suffix=".json",
            ),
        ),
    ),
    "fs-mode-disabled": Case(
        usages=(
            Usage(
                '[feature]\nfs = "disabled"\n',
                {},
                {},
                {f"{FS}.mode": "local"},
                ("{file}", FS, "'disabled' is deprecated"),
            ),
            Usage(
                '[feature.fs]\nmode = "disabled"\nlocal = "^/x"\n',
                {},
                {},
                {f"{FS}.mode": "local", f"{FS}.local": ["^/x"]},
                ("{file}", f"{FS}.mode", "'disabled'"),
            ),
            Usage(
                None,
                {"MIRRORD_FILE_MODE": "disabled"},
                {},
                {f"{FS}.mode": "local"},
                ("environment variable MIRRORD_FILE_MODE", f"{FS}.mode", "'disabled'"),
            ),
            Usage(
                None,
                {},
                {"fs_mode": "disabled"},
                {f"{FS}.mode": "local"},
                ("flag --fs-mode", f"{FS}.mode", "'disabled'"),
            ),
        ),
    ),
    "incoming-toggle": Case(
        usages=(
            Usage(
                "[feature.network]\nincoming = true\n",
                {},
                {},
                {f"{INCOMING}.mode": "mirror"},
                ("{file}", INCOMING, "true is deprecated"),
            ),
            # Judgment call, tested as implemented: mirrord 3.32 keeps mirroring for false.
            Usage(
                "[feature.network]\nincoming = false\n",
                {},
                {},
                {f"{INCOMING}.mode": "off"},
                ("{file}", INCOMING, "false is deprecated"),
            ),
        ),
    ),
    "target-podname": Case(
        usages=(
            Usage(
                'target = "podname/web"\n',
                {},
                {},
                {"target.path": "pod/web"},
                ("{file}", "target", "'podname/web' is deprecated", "pod/"),
            ),
            Usage(
                '[target]\npath = "podname/web/container/app"\nnamespace = "prod"\n',
                {},
                {},
                {"target.path": "pod/web/container/app", "target.namespace": "prod"},
                ("{file}", "target.path", "podname/"),
            ),
            Usage(
                None,
                {"MIRRORD_IMPERSONATED_TARGET": "podname/web"},
                {},
                {"target.path": "pod/web"},
                ("environment variable MIRRORD_IMPERSONATED_TARGET", "target.path", "podname/"),
            ),
            Usage(
                None,
                {},
                {"target": "podname/web"},
                {"target.path": "pod/web"},
                ("flag --target", "target.path", "podname/"),
            ),
        ),
    ),
    "target-containername": Case(
        usages=(
            Usage(
                'target = "containername/app"\n',
                {},
                {},
                {"target.path": "container/app"},
                ("{file}", "target", "'containername/app' is deprecated", "container/"),
            ),
            Usage(
                '[target]\npath = "containername/app"\n',
                {},
                {},
                {"target.path": "container/app"},
                ("{file}", "target.path", "containername/"),
            ),
            Usage(
                None,
                {"MIRRORD_IMPERSONATED_TARGET": "containername/app"},
                {},
                {"target.path": "container/app"},
                ("environment variable MIRRORD_IMPERSONATED_TARGET", "target.path"),
            ),
            Usage(
                None,
                {},
                {"target": "containername/app"},
                {"target.path": "container/app"},
                ("flag --target", "target.path", "containername/"),
            ),
        ),
    ),
    "env-impersonated-pod": Case(
        usages=(
            Usage(
                None,
                {"MIRRORD_AGENT_IMPERSONATED_POD_NAME": "web"},
                {},
                {"target.path": "pod/web"},
                (
                    "environment variable MIRRORD_AGENT_IMPERSONATED_POD_NAME",
                    "target.path",
                    "MIRRORD_IMPERSONATED_TARGET",
                ),
            ),
            Usage(
                None,
                {
                    "MIRRORD_AGENT_IMPERSONATED_POD_NAME": "web",
                    "MIRRORD_IMPERSONATED_CONTAINER_NAME": "app",
                },
                {},
                {"target.path": "pod/web/container/app"},
                ("MIRRORD_IMPERSONATED_CONTAINER_NAME", "target.path"),
            ),
        ),
        conflicts=(
            Conflict(
                None,
                {
                    "MIRRORD_AGENT_IMPERSONATED_POD_NAME": "web",
                    "MIRRORD_IMPERSONATED_TARGET": "pod/api",
                },
                "target.path",
                ("MIRRORD_AGENT_IMPERSONATED_POD_NAME", "MIRRORD_IMPERSONATED_TARGET"),
            ),
        ),
    ),
    "env-impersonated-namespace": Case(
        usages=(
            Usage(
                None,
                {"MIRRORD_AGENT_IMPERSONATED_POD_NAMESPACE": "prod"},
                {},
                {"target.namespace": "prod"},
                (
                    "environment variable MIRRORD_AGENT_IMPERSONATED_POD_NAMESPACE",
                    "target.namespace",
                    "MIRRORD_TARGET_NAMESPACE",
                ),
            ),
        ),
        conflicts=(
            Conflict(
                None,
                {
                    "MIRRORD_AGENT_IMPERSONATED_POD_NAMESPACE": "prod",
                    "MIRRORD_TARGET_NAMESPACE": "dev",
                },
                "target.namespace",
                ("MIRRORD_AGENT_IMPERSONATED_POD_NAMESPACE", "MIRRORD_TARGET_NAMESPACE"),
            ),
        ),
    ),
    "http-header-filter": Case(
        usages=(
            # The seed's example: [feature.network.incoming.http_header_filter] filter = …
            Usage(
                '[feature.network.incoming]\nmode = "steal"\n'
                '[feature.network.incoming.http_header_filter]\nfilter = "Id: token.*"\n',
                {},
                {},
                {
                    f"{INCOMING}.mode": "steal",
                    f"{INCOMING}.http_filter.header_filter": "Id: token.*",
                    f"{INCOMING}.http_filter.ports": [80, 8080],
                },
                ("{file}", f"{INCOMING}.http_header_filter", f"{INCOMING}.http_filter"),
            ),
            Usage(
                "feature:\n  network:\n    incoming:\n      mode: steal\n"
                "      http_header_filter: {filter: 'x-user: me', ports: 3000}\n",
                {},
                {},
                {
                    f"{INCOMING}.http_filter.header_filter": "x-user: me",
                    f"{INCOMING}.http_filter.ports": [3000],
                },
                ("{file}", f"{INCOMING}.http_header_filter", "header_filter"),
                suffix=".yaml",
            ),
        ),
        conflicts=(
            Conflict(
                '[feature.network.incoming]\nhttp_header_filter = { filter = "a" }\n'
                'http_filter = { header_filter = "b" }\n',
                {},
                f"{INCOMING}.http_header_filter",
                (f"{INCOMING}.http_header_filter", f"{INCOMING}.http_filter"),
            ),
            Conflict(
                '[feature.network.incoming.http_header_filter]\nfilter = "a"\n'
                'header_filter = "b"\n',
                {},
                f"{INCOMING}.http_header_filter.filter",
                ("filter", "header_filter"),
            ),
        ),
    ),
    "unstable-agent-pause": Case(
        usages=(
            Usage(
                "[agent]\npause = true\n",
                {},
                {},
                {"agent.pause": True},
                ("{file}", "agent.pause", "unstable"),
            ),
            Usage(
                None,
                {"MIRRORD_PAUSE": "true"},
                {},
                {"agent.pause": True},
                ("environment variable MIRRORD_PAUSE", "agent.pause", "unstable"),
            ),
            Usage(
                None,
                {},
                {"pause": True},
                {"agent.pause": True},
                ("flag --pause", "agent.pause", "unstable"),
            ),
        ),
    ),
    "unstable-flush-connections": Case(
        usages=(
            Usage(
                "[agent]\nflush_connections = false\n",
                {},
                {},
                {"agent.flush_connections": False},
                ("{file}", "agent.flush_connections", "unstable"),
            ),
            Usage(
                None,
                {"MIRRORD_AGENT_STEALER_FLUSH_CONNECTIONS": "false"},
                {},
                {"agent.flush_connections": False},
                ("MIRRORD_AGENT_STEALER_FLUSH_CONNECTIONS", "agent.flush_connections"),
            ),
        ),
    ),
    "unstable-incoming-ignore-localhost": Case(
        usages=(
            Usage(
                "[feature.network.incoming]\nignore_localhost = true\n",
                {},
                {},
                {f"{INCOMING}.ignore_localhost": True},
                ("{file}", f"{INCOMING}.ignore_localhost", "unstable"),
            ),
        ),
    ),
    "unstable-outgoing-ignore-localhost": Case(
        usages=(
            Usage(
                "[feature.network.outgoing]\nignore_localhost = true\n",
                {},
                {},
                {"feature.network.outgoing.ignore_localhost": True},
                ("{file}", "feature.network.outgoing.ignore_localhost", "unstable"),
            ),
        ),
    ),
    "capture-error-trace": Case(
        usages=(
            Usage(
                "[feature]\ncapture_error_trace = true\n",
                {},
                {},
                {"feature.capture_error_trace": True},
                ("{file}", "feature.capture_error_trace", "compatibility"),
            ),
            Usage(
                None,
                {"MIRRORD_CAPTURE_ERROR_TRACE": "true"},
                {},
                {"feature.capture_error_trace": True},
                ("environment variable MIRRORD_CAPTURE_ERROR_TRACE", "capture_error_trace"),
            ),
            Usage(
                None,
                {},
                {"capture_error_trace": True},
                {"feature.capture_error_trace": True},
                ("flag --capture-error-trace", "feature.capture_error_trace"),
            ),
        ),
    ),
}

# Entry kinds where an old and a new spelling can both be given.
CAN_CONFLICT = (RenamedKey, LegacyFsFilters, LegacyEnvVar)


def get(tree: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


def test_every_entry_has_cases() -> None:
    ids = [entry.id for entry in DEPRECATIONS]
    assert len(ids) == len(set(ids)), "duplicate deprecation ids"
    assert set(ids) - set(CASES) == set(), "deprecation entries without tests"
    assert set(CASES) - set(ids) == set(), "tests for entries that do not exist"
    for entry in DEPRECATIONS:
        assert CASES[entry.id].usages, entry.id


def test_entries_that_can_conflict_have_conflict_cases() -> None:
    for entry in DEPRECATIONS:
        conflicts = CASES[entry.id].conflicts
        if isinstance(entry, CAN_CONFLICT):
            assert conflicts, f"{entry.id}: old and new together is not tested"
        else:
            assert not conflicts, f"{entry.id}: a {type(entry).__name__} cannot conflict"


USAGES = [
    pytest.param(entry_id, usage, id=f"{entry_id}-{index}")
    for entry_id, case in CASES.items()
    for index, usage in enumerate(case.usages)
]
CONFLICTS = [
    pytest.param(entry_id, conflict, id=f"{entry_id}-{index}")
    for entry_id, case in CASES.items()
    for index, conflict in enumerate(case.conflicts)
]


@pytest.mark.parametrize(("entry_id", "usage"), USAGES)
def test_old_spelling_is_translated(resolve_config, entry_id: str, usage: Usage) -> None:
    resolved = resolve_config(usage.file, suffix=usage.suffix, env=usage.env, flags=usage.flags)
    values = resolved.to_dict()
    for path, expected in usage.expected.items():
        assert get(values, path) == expected, path


@pytest.mark.parametrize(("entry_id", "usage"), USAGES)
def test_old_spelling_warns_where_and_which_key(
    resolve_config, entry_id: str, usage: Usage
) -> None:
    resolved = resolve_config(usage.file, suffix=usage.suffix, env=usage.env, flags=usage.flags)
    fragments = [
        fragment.replace("{file}", resolved.file or "<no file>") for fragment in usage.warning
    ]
    matching = [w for w in resolved.warnings if all(f in w for f in fragments)]
    assert len(matching) == 1, (fragments, resolved.warnings)
    if "{file}" in usage.warning:
        assert matching[0].startswith(f"{resolved.file}: ")


@pytest.mark.parametrize(("entry_id", "conflict"), CONFLICTS)
def test_old_and_new_together_is_an_error(
    resolve_config, entry_id: str, conflict: Conflict
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config(conflict.file, env=conflict.env)
    at_path = [p for p in caught.value.problems if p.path == conflict.path]
    assert at_path, [str(p) for p in caught.value.problems]
    assert all(name in str(at_path[0]) for name in conflict.names), str(at_path[0])


# mirrord 3.32's truth table (mirrord/config/src/fs/mode.rs, ``from_env_logic``).
FILE_OPS_TABLE = [
    # (MIRRORD_FILE_OPS, MIRRORD_FILE_RO_OPS, mode)
    ("true", None, "write"),
    ("true", "true", "write"),
    ("true", "false", "write"),
    (None, "true", "read"),
    ("false", "true", "read"),
    ("false", "false", "local"),
    ("false", None, "local"),
    (None, "false", "local"),
]


@pytest.mark.parametrize("file_mode", [None, "local", "read", "write"])
@pytest.mark.parametrize(("ops", "ro_ops", "mode"), FILE_OPS_TABLE)
def test_file_ops_truth_table(
    resolve_config, ops: str | None, ro_ops: str | None, mode: str, file_mode: str | None
) -> None:
    """The legacy variables decide the mode whatever the file says (environment > file)."""
    env = {
        name: value
        for name, value in (("MIRRORD_FILE_OPS", ops), ("MIRRORD_FILE_RO_OPS", ro_ops))
        if value is not None
    }
    text = f'[feature]\nfs = "{file_mode}"\n' if file_mode else None
    resolved = resolve_config(text, env=env)
    assert resolved.to_dict()["feature"]["fs"]["mode"] == mode
    assert any("deprecated" in warning for warning in resolved.warnings)


def test_without_file_ops_variables_the_mode_is_untouched(resolve_config) -> None:
    resolved = resolve_config('[feature]\nfs = "write"\n')
    assert resolved.to_dict()["feature"]["fs"]["mode"] == "write"
    assert resolved.warnings == ()


def test_fs_mode_flag_beats_file_ops_variables(resolve_config) -> None:
    resolved = resolve_config(env={"MIRRORD_FILE_OPS": "true"}, flags={"fs_mode": "local"})
    assert resolved.to_dict()["feature"]["fs"]["mode"] == "local"


def test_invalid_file_ops_value_is_an_error_naming_the_variable(resolve_config) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config(env={"MIRRORD_FILE_RO_OPS": "sometimes"})
    (problem,) = caught.value.problems
    assert problem.path == "feature.fs.mode"
    assert "MIRRORD_FILE_RO_OPS" in str(problem)


def test_impersonated_container_without_pod_is_an_error(resolve_config) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config(env={"MIRRORD_IMPERSONATED_CONTAINER_NAME": "app"})
    (problem,) = caught.value.problems
    assert problem.path == "target.path"
    assert "MIRRORD_AGENT_IMPERSONATED_POD_NAME" in str(problem)


def test_current_spellings_give_no_warnings(resolve_config) -> None:
    text = """
target = "pod/web"
[agent]
ttl = 5
[feature]
fs = { mode = "write", read_write = "^/tmp", local = "^/home" }
env = { include = "A;B" }
[feature.network.incoming]
mode = "steal"
http_filter = { header_filter = "x: y", ports = [80] }
"""
    env = {"MIRRORD_FILE_MODE": "read", "MIRRORD_IMPERSONATED_TARGET": "deploy/api"}
    assert resolve_config(text, env=env, flags={"steal": True}).warnings == ()


def test_deprecated_keys_are_removed_from_the_resolved_config(resolve_config) -> None:
    text = """
[feature.fs]
mode = "write"
include = "^/a"
exclude = "^/b"
[feature.network.incoming.http_header_filter]
filter = "x"
"""
    resolved = resolve_config(text).to_dict()
    assert set(resolved["feature"]["fs"]) == {"mode", "read_write", "read_only", "local"}
    assert "http_header_filter" not in resolved["feature"]["network"]["incoming"]
    assert set(resolved["feature"]["network"]["incoming"]["http_filter"]) == {
        "header_filter",
        "ports",
    }


def test_warnings_go_to_stderr_and_keep_stdout_json(run_cli, tmp_path: Path) -> None:
    file = tmp_path / "old.toml"
    file.write_text('target = "podname/web"\n[feature]\nfs = "disabled"\n')
    result = run_cli("verify-config", "--json", str(file))
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["target"]["path"] == "pod/web"
    assert resolved["feature"]["fs"]["mode"] == "local"
    assert str(file) in result.stderr
    assert "target" in result.stderr and "feature.fs" in result.stderr
    assert "deprecated" in result.stderr


def test_conflict_through_the_cli(run_cli, tmp_path: Path) -> None:
    file = tmp_path / "both.yaml"
    file.write_text("feature:\n  fs:\n    exclude: ['^/a']\n    local: ['^/b']\n")
    result = run_cli("verify-config", "--json", str(file))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["type"] == "Fail"
    assert any(error.startswith("feature.fs.exclude: ") for error in report["errors"])
