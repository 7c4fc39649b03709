"""Every key set from a config file, in each format: TOML, YAML (.yaml/.yml), JSON (.json or
no extension), and the ways a file is chosen (``file=``, ``MIRRORD_CONFIG_FILE``, ``-f``)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirrord_core.config import ConfigLayout, resolve

# Every key of the configuration set to a value that is not its default, in the
# canonical form the resolved JSON shows.
FULL: dict[str, Any] = {
    "accept_invalid_certificates": True,
    "skip_processes": ["ide-debugger", "ide-service"],
    "connect_tcp": "10.0.0.1:7777",
    "connect_agent_name": "mirrord-agent-abc",
    "connect_agent_port": 7777,
    "operator": False,
    "kubeconfig": "/home/dev/.kube/staging",
    "sip_binaries": ["bash", "/usr/bin/env"],
    "agent": {
        "log_level": "mirrord=trace,warn",
        "namespace": "mirrord",
        "image": "registry/mirrord-agent-custom:latest",
        "image_pull_policy": "Always",
        "ttl": 1024,
        "ephemeral": True,
        "communication_timeout": 30,
        "startup_timeout": 120,
        "network_interface": "eth1",
        "pause": True,
        "flush_connections": False,
    },
    "feature": {
        "capture_error_trace": True,
        "env": {
            "include": ["DATABASE_URL", "PORT"],
            "exclude": ["SECRET"],
            "override": {"REGION": "2", "LOG_FORMAT": "text"},
        },
        "fs": {
            "mode": "write",
            "read_write": ["^/var/run/.*"],
            "read_only": ["^/etc/.*"],
            "local": ["^/lib/.*", "^/usr/.*"],
        },
        "network": {
            "incoming": {
                "mode": "steal",
                "http_filter": {"header_filter": "Id: token.*", "ports": [9090, 9091]},
                "port_mapping": [[9333, 80], [9334, 81]],
                "ignore_localhost": True,
            },
            "outgoing": {
                "tcp": False,
                "udp": False,
                "ignore_localhost": True,
                "unix_streams": ["^/run/app\\.sock$"],
            },
            "dns": False,
        },
    },
    "target": {"path": "pod/web-6f9c7-abcde/container/app", "namespace": "staging"},
}

FULL_TOML = r"""
# Every key, the way a user writes a mirrord.toml.
accept_invalid_certificates = true
skip_processes = ["ide-debugger", "ide-service"]
connect_tcp = "10.0.0.1:7777"
connect_agent_name = "mirrord-agent-abc"
connect_agent_port = 7777
operator = false
kubeconfig = "/home/dev/.kube/staging"
sip_binaries = ["bash", "/usr/bin/env"]

[target]
path = "pod/web-6f9c7-abcde/container/app"
namespace = "staging"

[agent]
log_level = "mirrord=trace,warn"
namespace = "mirrord"
image = "registry/mirrord-agent-custom:latest"
image_pull_policy = "Always"
ttl = 1024  # seconds
ephemeral = true
communication_timeout = 30
startup_timeout = 120
network_interface = "eth1"
pause = true
flush_connections = false

[feature]
capture_error_trace = true

[feature.env]
include = ["DATABASE_URL", "PORT"]
exclude = ["SECRET"]
override = { REGION = "2", LOG_FORMAT = "text" }

[feature.fs]
mode = "write"
read_write = ["^/var/run/.*"]
read_only = ["^/etc/.*"]
local = ["^/lib/.*", "^/usr/.*"]

[feature.network]
dns = false

[feature.network.incoming]
mode = "steal"
port_mapping = [[9333, 80], [9334, 81]]
ignore_localhost = true

[feature.network.incoming.http_filter]
header_filter = "Id: token.*"
ports = [9090, 9091]

[feature.network.outgoing]
tcp = false
udp = false
ignore_localhost = true
unix_streams = ['^/run/app\.sock$']
"""

FULL_YAML = r"""
# Every key, the way a user writes a mirrord.yaml.
accept_invalid_certificates: true
skip_processes:
  - ide-debugger
  - ide-service
connect_tcp: "10.0.0.1:7777"
connect_agent_name: mirrord-agent-abc
connect_agent_port: 7777
operator: false
kubeconfig: /home/dev/.kube/staging
sip_binaries: [bash, /usr/bin/env]
target:
  path: pod/web-6f9c7-abcde/container/app
  namespace: staging
agent:
  log_level: mirrord=trace,warn
  namespace: mirrord
  image: registry/mirrord-agent-custom:latest
  image_pull_policy: Always
  ttl: 1024
  ephemeral: true
  communication_timeout: 30
  startup_timeout: 120
  network_interface: eth1
  pause: true
  flush_connections: false
feature:
  capture_error_trace: true
  env:
    include: [DATABASE_URL, PORT]
    exclude: [SECRET]
    override:
      REGION: "2"
      LOG_FORMAT: text
  fs:
    mode: write
    read_write: ["^/var/run/.*"]
    read_only: ["^/etc/.*"]
    local: ["^/lib/.*", "^/usr/.*"]
  network:
    dns: false
    incoming:
      mode: steal
      http_filter:
        header_filter: "Id: token.*"
        ports: [9090, 9091]
      port_mapping:
        - [9333, 80]
        - [9334, 81]
      ignore_localhost: true
    outgoing:
      tcp: false
      udp: false
      ignore_localhost: true
      unix_streams: ['^/run/app\.sock$']
"""

FULL_JSON = json.dumps(FULL, indent=2)

FORMATS = [
    pytest.param(".toml", FULL_TOML, id="toml"),
    pytest.param(".yaml", FULL_YAML, id="yaml"),
    pytest.param(".yml", FULL_YAML, id="yml"),
    pytest.param(".json", FULL_JSON, id="json"),
    pytest.param("", FULL_JSON, id="no-extension-is-json"),
]


def leaf_items(layout: ConfigLayout, tree: dict[str, Any], prefix: str = "") -> Iterator[tuple]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if layout.class_at(path) is not None and isinstance(value, dict):
            yield from leaf_items(layout, value, f"{path}.")
        else:
            yield path, value


def test_the_texts_hold_the_same_document() -> None:
    """The three renderings really are the same config (so the format is all that varies)."""
    assert tomllib.loads(FULL_TOML) == FULL
    assert yaml.safe_load(FULL_YAML) == FULL
    assert json.loads(FULL_JSON) == FULL


def test_full_config_sets_every_key_to_a_non_default(layout: ConfigLayout, resolve_config) -> None:
    """A new key fails here until the file tests set it."""
    defaults = dict(leaf_items(layout, resolve_config().to_dict()))
    given = dict(leaf_items(layout, FULL))
    declared = {path for path, _attribute, _meta in layout.leaf_fields()}
    assert set(given) == declared
    same = sorted(path for path in declared if given[path] == defaults[path])
    assert same == [], "these keys are set to their default, so the test cannot see them"


@pytest.mark.parametrize(("suffix", "text"), FORMATS)
def test_every_key_from_a_file(resolve_config, suffix: str, text: str) -> None:
    resolved = resolve_config(text, suffix=suffix)
    assert resolved.to_dict() == FULL


@pytest.mark.parametrize(("suffix", "text"), FORMATS)
def test_verify_config_json_output_for_each_format(
    run_cli, tmp_path: Path, suffix: str, text: str
) -> None:
    file = tmp_path / f"mirrord-config{suffix}"
    file.write_text(text)
    result = run_cli("verify-config", "--json", str(file))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == FULL
    assert "Traceback" not in result.stderr


def test_typed_tree_from_a_file(resolve_config) -> None:
    config = resolve_config(FULL_TOML).config
    assert config.agent.ttl == 1024
    assert config.feature.fs.mode.value == "write"
    assert list(config.feature.fs.local) == ["^/lib/.*", "^/usr/.*"]
    assert config.feature.network.incoming.mode.value == "steal"
    assert list(config.feature.network.incoming.port_mapping) == [(9333, 80), (9334, 81)]
    assert config.feature.env.override == {"REGION": "2", "LOG_FORMAT": "text"}
    assert config.target.path.kind == "pod"
    assert config.target.path.name == "web-6f9c7-abcde"
    assert config.target.path.container == "app"


def test_toml_inline_tables_and_dotted_keys_are_the_same_as_tables(resolve_config) -> None:
    tables = resolve_config(
        '[feature.network.incoming]\nmode = "steal"\n[agent]\nttl = 5\n'
    ).to_dict()
    inline = resolve_config(
        'agent = { ttl = 5 }\nfeature = { network = { incoming = { mode = "steal" } } }\n'
    ).to_dict()
    dotted = resolve_config('agent.ttl = 5\nfeature.network.incoming.mode = "steal"\n').to_dict()
    assert tables == inline == dotted
    assert tables["agent"]["ttl"] == 5
    assert tables["feature"]["network"]["incoming"]["mode"] == "steal"


def test_yaml_anchors_and_flow_style(resolve_config) -> None:
    text = """
feature:
  fs: {mode: read, local: &paths ["^/lib/.*"], read_only: *paths}
"""
    fs = resolve_config(text, suffix=".yaml").to_dict()["feature"]["fs"]
    assert fs["local"] == ["^/lib/.*"]
    assert fs["read_only"] == ["^/lib/.*"]


def test_extension_is_case_insensitive(resolve_config) -> None:
    assert resolve_config("agent: {ttl: 7}", suffix=".YAML").to_dict()["agent"]["ttl"] == 7
    assert resolve_config("[agent]\nttl = 7", suffix=".Toml").to_dict()["agent"]["ttl"] == 7


def test_mirrord_config_file_environment_variable_selects_the_file(
    layout: ConfigLayout, tmp_path: Path
) -> None:
    file = tmp_path / "from-env.toml"
    file.write_text(FULL_TOML)
    resolved = resolve(layout, environ={"MIRRORD_CONFIG_FILE": str(file)})
    assert resolved.file == str(file)
    assert resolved.to_dict() == FULL


def test_explicit_file_wins_over_mirrord_config_file(layout: ConfigLayout, tmp_path: Path) -> None:
    chosen = tmp_path / "chosen.toml"
    chosen.write_text("[agent]\nttl = 11\n")
    other = tmp_path / "other.toml"
    other.write_text("[agent]\nttl = 22\n")
    resolved = resolve(layout, file=chosen, environ={"MIRRORD_CONFIG_FILE": str(other)})
    assert resolved.file == str(chosen)
    assert resolved.to_dict()["agent"]["ttl"] == 11


def test_run_reads_the_file_given_with_dash_f(run_cli, tmp_path: Path) -> None:
    file = tmp_path / "mirrord.yml"
    file.write_text(FULL_YAML)
    for option in ("-f", "--config-file"):
        result = run_cli("run", option, str(file), "--dry-run")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == FULL


def test_run_reads_mirrord_config_file(run_cli, tmp_path: Path) -> None:
    file = tmp_path / "mirrord.json"
    file.write_text(FULL_JSON)
    result = run_cli("exec", "--dry-run", env={"MIRRORD_CONFIG_FILE": str(file)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == FULL
