"""The seed's examples (shared/reference/seed-config-reference.txt), with the real key names,
each in its own format: they verify, resolve to what mirrord 3.32 gives, pass
``mirrord verify-config --json`` and validate against the generated JSON schema.

The seed's rendering lost underscores (``acceptinvalidcertificates``, ``loglevel``,
``imagepull_policy``, ``captureerrortrace``, ``readwrite``/``readonly``,
``httpheaderfilter``); its "yaml" examples were TOML-ish pseudo-YAML and are written here as
proper YAML.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from jsonschema import Draft7Validator

from mirrord_core.config import ConfigError, ConfigLayout
from mirrord_core.config.json_schema import config_schema

SEED = Path(__file__).resolve().parents[3].parent / "shared" / "reference"
SEED_FILE = SEED / "seed-config-reference.txt"


class Example(NamedTuple):
    suffix: str
    text: str
    expected: dict[str, Any]  # key path → value mirrord 3.32 resolves it to
    warnings: tuple[str, ...] = ()  # key paths that get a compatibility warning


EXAMPLES: dict[str, Example] = {
    "read-only-fs-mirror-skip-processes": Example(
        ".toml",
        """\
# mirrord-config.toml

target = "pod/sample-pod-1234"
skip_processes = ["ide-debugger", "ide-service"] # we don't want mirrord to hook into these

[agent]
log_level = "debug"
ttl = 1024 # seconds

[feature]
fs = "read" # default

[feature.network]
incoming = "mirror" # default
""",
        {
            "target.path": "pod/sample-pod-1234",
            "target.namespace": None,
            "skip_processes": ["ide-debugger", "ide-service"],
            "agent.log_level": "debug",
            "agent.ttl": 1024,
            "feature.fs.mode": "read",
            "feature.network.incoming.mode": "mirror",
        },
    ),
    "write-fs-steal-custom-agent-image": Example(
        ".toml",
        """\
# mirrord-config.toml

target = "pod/sample-pod-1234"
accept_invalid_certificates = true

[agent]
log_level = "trace"
ttl = 1024 # seconds
image = "registry/mirrord-agent-custom:latest"
image_pull_policy = "Always"

[feature]
fs = "write"

[feature.network]
incoming = "steal"
""",
        {
            "target.path": "pod/sample-pod-1234",
            "accept_invalid_certificates": True,
            "agent.log_level": "trace",
            "agent.ttl": 1024,
            "agent.image": "registry/mirrord-agent-custom:latest",
            "agent.image_pull_policy": "Always",
            "feature.fs.mode": "write",
            "feature.network.incoming.mode": "steal",
        },
    ),
    "exclude-secret-write-fs-capture-error-trace": Example(
        ".toml",
        """\
# mirrord-config.toml

[feature]
fs = "write"
capture_error_trace = true

[feature.env]
exclude = "SECRET"
""",
        {
            "feature.fs.mode": "write",
            "feature.capture_error_trace": True,
            "feature.env.exclude": ["SECRET"],
            "feature.env.include": ["*"],
        },
        ("feature.capture_error_trace",),
    ),
    "include-env-write-txt-files-mirror-outgoing": Example(
        ".toml",
        """\
# mirrord-config.toml

[feature.env]
include = "DATABASE_URL;PORT"

[feature.fs]
mode = "write"
include = "^.*.txt$"

[feature.network]
incoming = "mirror" # default, included here for effect

[feature.network.outgoing]
tcp = true
udp = true
""",
        {
            "feature.env.include": ["DATABASE_URL", "PORT"],
            "feature.fs.mode": "write",
            # mirrord ≤ 3.1x's include: remote paths, read-write in write mode.
            "feature.fs.read_write": ["^.*.txt$"],
            "feature.fs.read_only": [],
            "feature.network.incoming.mode": "mirror",
            "feature.network.outgoing.tcp": True,
            "feature.network.outgoing.udp": True,
        },
        ("feature.fs.include",),
    ),
    "env-include-everything": Example(
        ".toml",
        '# mirrord-config.toml\n\n[feature.env]\ninclude = "*"\n',
        {"feature.env.include": ["*"], "feature.env.exclude": []},
    ),
    "env-include-project-database": Example(
        ".toml",
        '# mirrord-config.toml\n\n[feature.env]\ninclude = "PROJECT;DATABASE"\n',
        {"feature.env.include": ["PROJECT", "DATABASE"]},
    ),
    "env-exclude-user-secret": Example(
        ".toml",
        '# mirrord-config.toml\n\n[feature.env]\nexclude = "USER;SECRET"\n',
        {"feature.env.include": ["*"], "feature.env.exclude": ["USER", "SECRET"]},
    ),
    "fs-write": Example(
        ".toml",
        '# mirrord-config.toml\n\n[feature]\nfs = "write"\n',
        {"feature.fs.mode": "write"},
    ),
    "fs-advanced-yaml": Example(
        ".yaml",
        """\
# mirrord-config.yaml
# /lib locally, /etc remotely and /var/run read write remotely. Rest local (the seed
# says; its mode = read reads the rest remotely).
feature:
  fs:
    mode: read
    read_write: ["/var/run"]
    read_only: ["/etc"]
    local: ["/lib"]
""",
        {
            "feature.fs.mode": "read",
            "feature.fs.read_write": ["/var/run"],
            "feature.fs.read_only": ["/etc"],
            "feature.fs.local": ["/lib"],
        },
    ),
    "fs-local-yaml": Example(
        ".yaml",
        "# mirrord-config.yaml\nfeature:\n  fs: local\n",
        {"feature.fs.mode": "local"},
    ),
    "fs-write-yaml": Example(
        ".yaml",
        "# mirrord-config.yaml\nfeature:\n  fs: write\n",
        {"feature.fs.mode": "write"},
    ),
    "steal-outgoing-tcp-dns": Example(
        ".toml",
        """\
# mirrord-config.toml

[feature.network]
incoming = "steal"
dns = true # not needed, as this is the default

[feature.network.outgoing]
tcp = true
""",
        {
            "feature.network.incoming.mode": "steal",
            "feature.network.dns": True,
            "feature.network.outgoing.tcp": True,
            "feature.network.outgoing.udp": True,
        },
    ),
    "incoming-mirror": Example(
        ".toml",
        """\
# mirrord-config.toml

[feature.network]
incoming = "mirror" # for illustration purporses, it's the default
""",
        {"feature.network.incoming.mode": "mirror"},
    ),
    "steal-http-header-filter-yaml": Example(
        ".yaml",
        """\
# mirrord-config.yaml
feature:
  network:
    incoming:
      mode: steal
      http_header_filter:
        filter: "Id: token.*"
""",
        {
            "feature.network.incoming.mode": "steal",
            "feature.network.incoming.http_filter.header_filter": "Id: token.*",
            "feature.network.incoming.http_filter.ports": [80, 8080],
        },
        ("feature.network.incoming.http_header_filter",),
    ),
    "steal-http-header-filter-toml": Example(
        ".toml",
        """\
[feature.network.incoming]
mode = "steal"

[feature.network.incoming.http_header_filter]
filter = "Id: token.*"
""",
        {
            "feature.network.incoming.mode": "steal",
            "feature.network.incoming.http_filter.header_filter": "Id: token.*",
        },
        ("feature.network.incoming.http_header_filter",),
    ),
    "target-path-namespace": Example(
        ".toml",
        """\
# mirrord-config.toml

[target]
path = "pod/hello-world-abcd-1234"
namespace = "hello"
""",
        {"target.path": "pod/hello-world-abcd-1234", "target.namespace": "hello"},
    ),
    "target-string": Example(
        ".toml",
        '# mirrord-config.toml\n\ntarget = "pod/hello-world-abcd-1234"\n',
        {"target.path": "pod/hello-world-abcd-1234", "target.namespace": None},
    ),
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


def expected_config(defaults: dict[str, Any], example: Example) -> dict[str, Any]:
    expected = copy.deepcopy(defaults)
    for path, value in example.expected.items():
        put(expected, path, value)
    return expected


def parse(example: Example) -> dict[str, Any]:
    if example.suffix == ".toml":
        return tomllib.loads(example.text)
    return yaml.safe_load(example.text)


def test_seed_reference_is_the_one_these_examples_come_from() -> None:
    """The examples above are the seed's (a changed seed must be looked at again)."""
    seed = SEED_FILE.read_text()
    for fragment in (
        'target = "pod/sample-pod-1234" skip_processes = ["ide-debugger", "ide-service"]',
        'imagepull_policy = "Always"',
        "captureerrortrace = true",
        'include = "DATABASE_URL;PORT"',
        'mode = "write" include = "^.*.txt$"',
        'include = "PROJECT;DATABASE"',
        'exclude = "USER;SECRET"',
        'readwrite = ["/var/run"] readonly = ["/etc"] local = ["/lib"]',
        "fs = local",
        '[feature.network.incoming.httpheaderfilter] filter = "Id: token.*"',
        'path = "pod/hello-world-abcd-1234" namespace = "hello"',
    ):
        assert fragment in seed, fragment
    # 13 TOML and 4 "yaml" blocks: the last target example appears twice, and the advanced
    # fs example hides inside the fs = "write" block whose backticks broke in rendering.
    assert (seed.count("```toml"), seed.count("```yaml")) == (13, 4)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_seed_example_resolves_as_mirrord(resolve_config, name: str) -> None:
    example = EXAMPLES[name]
    defaults = resolve_config().to_dict()
    resolved = resolve_config(example.text, suffix=example.suffix)
    assert resolved.to_dict() == expected_config(defaults, example)
    for path in example.warnings:
        assert any(path in warning for warning in resolved.warnings), resolved.warnings
    assert len(resolved.warnings) == len(example.warnings), resolved.warnings


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_seed_example_verifies_with_the_cli(
    run_cli, resolve_config, tmp_path: Path, name: str
) -> None:
    example = EXAMPLES[name]
    file = tmp_path / f"mirrord-config{example.suffix}"
    file.write_text(example.text)
    result = run_cli("verify-config", "--json", str(file))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected_config(resolve_config().to_dict(), example)
    for path in example.warnings:
        assert path in result.stderr


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    from mirrord_core.plugin_manager import get_plugins

    schema = config_schema(get_plugins().layout)
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_seed_example_validates_against_the_schema(validator: Draft7Validator, name: str) -> None:
    errors = sorted(validator.iter_errors(parse(EXAMPLES[name])), key=str)
    assert errors == [], [error.message for error in errors]


@pytest.mark.parametrize(
    ("document", "bad_key"),
    [
        ({"acceptinvalidcertificates": True}, "acceptinvalidcertificates"),
        ({"agent": {"loglevel": "trace"}}, "loglevel"),
        ({"agent": {"imagepull_policy": "Always"}}, "imagepull_policy"),
        ({"feature": {"captureerrortrace": True}}, "captureerrortrace"),
        ({"feature": {"fs": {"readwrite": ["/var/run"]}}}, "readwrite"),
        ({"feature": {"network": {"incoming": {"httpheaderfilter": {}}}}}, "httpheaderfilter"),
        ({"target": {"path": "pod/x", "nmespace": "y"}}, "nmespace"),
        ({"feature": {"network": {"outgoing": {"tcp": True, "sctp": True}}}}, "sctp"),
    ],
)
def test_schema_rejects_unknown_keys(
    validator: Draft7Validator, document: dict[str, Any], bad_key: str
) -> None:
    errors = list(validator.iter_errors(document))
    assert errors
    assert bad_key in json.dumps([str(error) for error in errors])


def test_schema_rejects_wrong_types(validator: Draft7Validator) -> None:
    for document in (
        {"agent": {"ttl": 70000}},
        {"agent": {"ttl": "1"}},
        {"feature": {"fs": "readwrite"}},
        {"feature": {"network": {"incoming": "sniff"}}},
        {"accept_invalid_certificates": "yes"},
    ):
        assert list(validator.iter_errors(document)), document


def test_schema_validates_the_repository_examples(validator: Draft7Validator) -> None:
    examples = Path(__file__).resolve().parents[3] / "examples"
    files = sorted(examples.glob("*.toml")) + sorted(examples.glob("*.y*ml"))
    assert files, "no example configs found"
    for file in files:
        document = (
            tomllib.loads(file.read_text())
            if file.suffix == ".toml"
            else yaml.safe_load(file.read_text())
        )
        assert list(validator.iter_errors(document)) == [], file


SEED_AS_RENDERED = {
    # The seed's second example exactly as rendered (underscores lost): each misspelled key
    # is an error that names the real key.
    "acceptinvalidcertificates": "accept_invalid_certificates",
    "agent.loglevel": "log_level",
    "agent.imagepull_policy": "image_pull_policy",
}


def test_seed_as_rendered_names_the_real_keys(resolve_config) -> None:
    text = """\
target = "pod/sample-pod-1234"
acceptinvalidcertificates = true

[agent]
loglevel = "trace"
ttl = 1024 # seconds
image = "registry/mirrord-agent-custom:latest"
imagepull_policy = "Always"

[feature]
fs = "write"
captureerrortrace = true

[feature.network]
incoming = "steal"
"""
    with pytest.raises(ConfigError) as caught:
        resolve_config(text)
    problems = {problem.path: problem.message for problem in caught.value.problems}
    expected = {**SEED_AS_RENDERED, "feature.captureerrortrace": "capture_error_trace"}
    assert set(problems) == set(expected)
    for path, real in expected.items():
        assert problems[path] == f"unknown key; did you mean {real}?"


def test_seed_yaml_as_rendered_names_the_real_keys(resolve_config) -> None:
    text = "feature:\n  fs:\n    mode: read\n    readwrite: [/var/run]\n    readonly: [/etc]\n"
    with pytest.raises(ConfigError) as caught:
        resolve_config(text, suffix=".yaml")
    assert sorted(str(problem) for problem in caught.value.problems) == [
        "feature.fs.readonly: unknown key; did you mean read_only?",
        "feature.fs.readwrite: unknown key; did you mean read_write?",
    ]


def test_layout_fixture_is_the_installed_plugins(layout: ConfigLayout) -> None:
    """The seed needs all four first-party sections."""
    assert {"feature.fs", "feature.env", "feature.network", "target"} <= set(layout.sections)
