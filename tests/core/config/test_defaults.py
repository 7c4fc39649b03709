"""Every key's default, as mirrord 3.32 fills it in, in the resolved JSON.

The expected values are written out by hand from mirrord 3.32's config crate
(``mirrord/config/src``: ``#[config(default = …)]`` and the ``Default`` impls), not read
from the implementation, so a changed default fails here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrord_core.config import ConfigLayout, resolve
from mirrord_core.config.json_schema import config_schema

# mirrord 3.32's resolved configuration with no file, no environment and no flags.
MIRRORD_DEFAULTS: dict[str, Any] = {
    "accept_invalid_certificates": False,
    "skip_processes": [],
    "connect_tcp": None,
    "connect_agent_name": None,
    "connect_agent_port": None,
    "operator": True,
    "kubeconfig": None,
    "sip_binaries": [],
    "agent": {
        "log_level": "info",
        "namespace": None,
        "image": None,
        "image_pull_policy": "IfNotPresent",
        "ttl": 1,
        "ephemeral": False,
        "communication_timeout": None,
        "startup_timeout": 60,
        "network_interface": None,
        "pause": False,
        "flush_connections": True,
    },
    "feature": {
        "capture_error_trace": False,
        "env": {"include": ["*"], "exclude": [], "override": {}},
        "fs": {"mode": "read", "read_write": [], "read_only": [], "local": []},
        "network": {
            "incoming": {
                "mode": "mirror",
                "http_filter": {"header_filter": None, "ports": [80, 8080]},
                "port_mapping": [],
                "ignore_localhost": False,
            },
            "outgoing": {
                "tcp": True,
                "udp": True,
                "ignore_localhost": False,
                "unix_streams": [],
            },
            "dns": True,
        },
    },
    "target": {"path": None, "namespace": None},
}


def leaf_items(layout: ConfigLayout, tree: dict[str, Any], prefix: str = "") -> Iterator[tuple]:
    """``(dotted path, value)`` for every key of ``tree`` that is not a section."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if layout.class_at(path) is not None and isinstance(value, dict):
            yield from leaf_items(layout, value, f"{path}.")
        else:
            yield path, value


def test_no_file_resolves_to_mirrord_defaults(resolve_config) -> None:
    resolved = resolve_config()
    assert resolved.to_dict() == MIRRORD_DEFAULTS
    assert resolved.warnings == ()
    assert resolved.file is None


def test_every_key_of_the_layout_has_an_expected_default(layout: ConfigLayout) -> None:
    """A new key fails here until its mirrord default is written down above."""
    declared = {path for path, _attribute, _meta in layout.leaf_fields()}
    expected = {path for path, _value in leaf_items(layout, MIRRORD_DEFAULTS)}
    assert declared - expected == set(), "keys without an expected default"
    assert expected - declared == set(), "expected defaults for keys that do not exist"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("agent.log_level", "info"),
        ("agent.image_pull_policy", "IfNotPresent"),
        ("agent.ttl", 1),
        ("agent.startup_timeout", 60),
        ("agent.ephemeral", False),
        ("agent.flush_connections", True),
        ("agent.pause", False),
        ("agent.communication_timeout", None),
        ("operator", True),
        ("feature.network.dns", True),
        ("feature.network.outgoing.tcp", True),
        ("feature.network.outgoing.udp", True),
        ("feature.network.incoming.mode", "mirror"),
        ("feature.network.incoming.http_filter.ports", [80, 8080]),
        ("feature.network.incoming.http_filter.header_filter", None),
        ("feature.network.incoming.port_mapping", []),
        ("feature.env.include", ["*"]),
        ("feature.env.exclude", []),
        ("feature.env.override", {}),
        ("feature.fs.mode", "read"),
        ("feature.fs.read_write", []),
        ("feature.fs.read_only", []),
        ("feature.fs.local", []),
        ("target.path", None),
        ("target.namespace", None),
    ],
)
def test_named_default(resolve_config, path: str, value: Any) -> None:
    node: Any = resolve_config().to_dict()
    for part in path.split("."):
        node = node[part]
    assert node == value


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".toml", ""),
        (".toml", "# only a comment\n"),
        (".yaml", ""),
        (".yml", "---\n# nothing here\n"),
        (".json", "{}"),
        ("", "{}"),
    ],
    ids=["toml-empty", "toml-comment", "yaml-empty", "yml-document-marker", "json", "no-ext"],
)
def test_empty_file_gives_the_defaults(resolve_config, suffix: str, text: str) -> None:
    resolved = resolve_config(text, suffix=suffix)
    assert resolved.to_dict() == MIRRORD_DEFAULTS
    assert resolved.file is not None and resolved.file.endswith(f"mirrord{suffix}")


def test_empty_sections_keep_every_default(resolve_config) -> None:
    text = """
[agent]
[target]
[feature]
[feature.env]
[feature.fs]
[feature.network]
[feature.network.incoming]
[feature.network.incoming.http_filter]
[feature.network.outgoing]
"""
    assert resolve_config(text).to_dict() == MIRRORD_DEFAULTS


def test_defaults_in_the_typed_tree(resolve_config) -> None:
    config = resolve_config().config
    assert config.agent.log_level == "info"
    assert config.agent.ttl == 1
    assert config.agent.startup_timeout == 60
    assert config.feature.fs.mode.value == "read"
    assert config.feature.network.incoming.mode.value == "mirror"
    assert tuple(config.feature.network.incoming.http_filter.ports) == (80, 8080)
    assert config.feature.network.dns is True
    assert config.target.path is None


def test_defaults_ignore_the_process_environment(
    layout: ConfigLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``environ={}`` means no environment, whatever the process has."""
    monkeypatch.setenv("MIRRORD_AGENT_TTL", "30")
    monkeypatch.setenv("MIRRORD_FILE_MODE", "write")
    assert resolve(layout, environ={}).to_dict() == MIRRORD_DEFAULTS


def _schema_node(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split("."):
        obj = _object_of(node)
        node = obj["properties"][part]
    return node


def _object_of(node: dict[str, Any]) -> dict[str, Any]:
    if "properties" in node:
        return node
    for option in node.get("anyOf", ()):
        if "properties" in option:
            return option
        if "anyOf" in option:
            return _object_of(option)
    raise AssertionError(f"no object schema in {node}")


def test_json_schema_documents_the_same_defaults(layout: ConfigLayout) -> None:
    schema = config_schema(layout)
    for path, value in leaf_items(layout, MIRRORD_DEFAULTS):
        assert _schema_node(schema, path).get("default", "missing") == value, path


def test_verify_config_prints_the_defaults(run_cli, tmp_path: Path) -> None:
    file = tmp_path / "empty.json"
    file.write_text("{}")
    result = run_cli("verify-config", "--json", str(file))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == MIRRORD_DEFAULTS
