"""``mirrord schema``: a Draft-07 JSON Schema of the installed plugins' configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
import yaml

from mirrord_core.config import ConfigLayout

REPO_ROOT = Path(__file__).resolve().parents[2]
Result = subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """The schema printed by the console script (module-scoped: it is read-only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}
    mirrord = Path(sys.executable).parent / "mirrord"
    result = subprocess.run(
        [str(mirrord), "schema"], capture_output=True, text=True, env=env, check=True
    )
    assert result.stderr == ""
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(schema)


def as_object(node: dict[str, Any]) -> dict[str, Any] | None:
    """The object form of a schema node (a node may be ``anyOf`` short forms and an object)."""
    if node.get("type") == "object" and "properties" in node:
        return node
    for option in node.get("anyOf", ()):
        found = as_object(option)
        if found is not None:
            return found
    return None


def node_at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split(".") if path else []:
        obj = as_object(node)
        assert obj is not None, f"{path}: no object form above {part}"
        assert part in obj["properties"], f"{path}: no property {part}"
        node = obj["properties"][part]
    return node


def nested(path: str, leaf: dict[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": leaf}}`` for ``a.b``."""
    document: dict[str, Any] = leaf
    for part in reversed(path.split(".") if path else []):
        document = {part: document}
    return document


def object_paths(layout: ConfigLayout) -> Iterator[str]:
    """The root and every table of the configuration (sections and sub-sections)."""
    yield ""
    for path, attribute, _meta in layout.iter_fields():
        if isinstance(attribute.type, type) and attrs.has(attribute.type):
            yield path


def test_schema_is_valid_draft_07(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["type"] == "object"


def test_schema_output_file(run_cli, tmp_path: Path, schema: dict[str, Any]) -> None:
    out = tmp_path / "schema.json"
    result = run_cli("schema", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert json.loads(out.read_text()) == schema
    long_form = tmp_path / "long.json"
    assert run_cli("schema", "--output", str(long_form)).returncode == 0
    assert long_form.read_text() == out.read_text()


def test_schema_output_to_a_bad_place(run_cli, tmp_path: Path) -> None:
    for target in (tmp_path / "missing" / "schema.json", tmp_path):
        result = run_cli("schema", "-o", str(target))
        assert result.returncode == 1
        assert result.stderr.startswith(f"mirrord: error: cannot write the schema to {target}")
        assert "Traceback" not in result.stderr


def test_schema_has_every_installed_section(run_cli, schema: dict[str, Any], layout) -> None:
    listed = json.loads(run_cli("plugins", "--json").stdout)
    sections = [path for plugin in listed["plugins"] for path in plugin["sections"]]
    assert {"feature.fs", "feature.env", "feature.network", "target"} <= set(sections)
    for path in sections:
        obj = as_object(node_at(schema, path))
        assert obj is not None, path
        keys = {a.name for a in attrs.fields(layout.class_at(path))}
        assert keys <= set(obj["properties"]), path
        for extra in set(obj["properties"]) - keys:  # old spellings the table still accepts
            assert obj["properties"][extra].get("deprecated") is True, f"{path}.{extra}"


def test_schema_has_every_key_of_the_layout(schema: dict[str, Any], layout) -> None:
    for path, _attribute, meta in layout.iter_fields():
        node = node_at(schema, path)
        assert node["description"].startswith(meta.doc), path


def test_schema_without_a_plugin_lacks_its_section(run_cli) -> None:
    result = run_cli("schema", env={"MIRRORD_DISABLE_PLUGINS": "fs,target"})
    assert result.returncode == 0, result.stderr
    reduced = json.loads(result.stdout)
    feature = as_object(node_at(reduced, "feature"))
    assert feature is not None
    assert "fs" not in feature["properties"]
    assert "env" in feature["properties"]
    assert "target" not in reduced["properties"]
    assert "agent" in reduced["properties"]


def test_schema_rejects_unknown_keys_at_every_level(
    validator: jsonschema.Draft7Validator, layout
) -> None:
    paths = list(object_paths(layout))
    for must in (
        "",
        "agent",
        "feature",
        "feature.fs",
        "feature.env",
        "feature.network",
        "feature.network.incoming",
        "feature.network.outgoing",
        "target",
    ):
        assert must in paths
    for path in paths:
        assert validator.is_valid(nested(path, {})), path
        assert not validator.is_valid(nested(path, {"no_such_key": True})), path


@pytest.mark.parametrize(
    "document",
    [
        {"acceptinvalidcertificates": True},
        {"agent": {"loglevel": "debug"}},
        {"feature": {"fs": {"mode": "read", "readwrite": []}}},
        {"feature": {"network": {"incoming": {"mode": "steal", "ports": [80]}}}},
        {"target": {"path": "pod/x", "namespce": "default"}},
    ],
)
def test_schema_rejects_misspelt_keys(
    validator: jsonschema.Draft7Validator, document: dict[str, Any]
) -> None:
    assert not validator.is_valid(document)


@pytest.mark.parametrize(
    "document",
    [
        {"feature": {"fs": {"mode": 5}}},
        {"feature": {"fs": "sometimes"}},
        {"agent": {"ttl": "soon"}},
        {"agent": {"ttl": 70000}},
        {"feature": {"network": {"incoming": {"port_mapping": [[1, 2, 3]]}}}},
        {"skip_processes": 5},
    ],
)
def test_schema_rejects_wrong_types(
    validator: jsonschema.Draft7Validator, document: dict[str, Any]
) -> None:
    assert not validator.is_valid(document)


@pytest.mark.parametrize(
    "document",
    [
        {"target": "pod/web"},
        {"target": {"path": "deployment/api", "namespace": "team"}},
        {"feature": {"fs": "write", "env": False, "network": True}},
        {"feature": {"fs": {"mode": "read", "read_only": "^/etc"}}},
        {"feature": {"network": {"incoming": "steal", "dns": False}}},
        {"feature": {"env": {"include": "A;B", "override": {"X": "1"}}}},
        {"agent": {"ttl": 5, "ephemeral": True}},
    ],
)
def test_schema_accepts_the_union_forms(
    validator: jsonschema.Draft7Validator, document: dict[str, Any]
) -> None:
    errors = [error.message for error in validator.iter_errors(document)]
    assert errors == []


def test_schema_accepts_the_examples(validator: jsonschema.Draft7Validator) -> None:
    documents = [
        tomllib.loads((REPO_ROOT / "examples" / "mirrord.toml").read_text()),
        yaml.safe_load((REPO_ROOT / "examples" / "mirrord.yaml").read_text()),
    ]
    for document in documents:
        assert [e.message for e in validator.iter_errors(document)] == []


def test_resolved_config_validates_against_the_schema(
    run_cli, validator: jsonschema.Draft7Validator
) -> None:
    for args in (
        ["verify-config", "--json", str(REPO_ROOT / "examples" / "mirrord.toml")],
        ["run", "--dry-run"],
        ["run", "--dry-run", "-t", "pod/x/container/c", "--steal", "--fs-mode", "write"],
    ):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        resolved = json.loads(result.stdout)
        assert [e.message for e in validator.iter_errors(resolved)] == [], args
