"""Every union form a key accepts: string or object, toggles, list-or-single, ``;`` lists,
and ``null`` meaning "not set"."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mirrord_core.config import ConfigError


def get(tree: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


# ---------------------------------------------------------------------------------------
# target
# ---------------------------------------------------------------------------------------

TARGET_FORMS = [
    # (TOML, resolved target.path, resolved target.namespace)
    ('target = "pod/web"', "pod/web", None),
    ('target = "pod/web/container/app"', "pod/web/container/app", None),
    ('target = "deployment/api"', "deployment/api", None),
    ('target = "deployment/api/container/app"', "deployment/api/container/app", None),
    ('target = "deploy/api"', "deployment/api", None),
    ('target = "deploy/api/container/app"', "deployment/api/container/app", None),
    ('target = "container/app"', "container/app", None),
    ('target = "pid/4242"', "pid/4242", None),
    ('target = { path = "pod/web", namespace = "prod" }', "pod/web", "prod"),
    ('target = { path = "deploy/api" }', "deployment/api", None),
    ('target = { namespace = "prod" }', None, "prod"),
    ("target = {}", None, None),
    ('target = { pod = "web" }', "pod/web", None),
    ('target = { pod = "web", container = "app" }', "pod/web/container/app", None),
    ('target = { deployment = "api" }', "deployment/api", None),
    ('target = { deployment = "api", container = "app" }', "deployment/api/container/app", None),
    (
        '[target]\npath = { pod = "web", container = "app" }\nnamespace = "prod"',
        "pod/web/container/app",
        "prod",
    ),
    ('[target]\npath = { deployment = "api" }\nnamespace = "prod"', "deployment/api", "prod"),
    (
        '[target]\npath = "pod/hello-world-abcd-1234"\nnamespace = "hello"',
        "pod/hello-world-abcd-1234",
        "hello",
    ),
]


@pytest.mark.parametrize(("text", "path", "namespace"), TARGET_FORMS)
def test_target_forms(resolve_config, text: str, path: str | None, namespace: str | None) -> None:
    resolved = resolve_config(text)
    assert resolved.to_dict()["target"] == {"path": path, "namespace": namespace}
    assert resolved.warnings == ()


def test_target_path_parts(resolve_config) -> None:
    cases = {
        "pod/web/container/app": ("pod", "web", "app"),
        "deploy/api": ("deployment", "api", None),
        "container/app": ("container", "app", "app"),
        "pid/17": ("pid", "17", None),
    }
    for text, (kind, name, container) in cases.items():
        path = resolve_config(f'target = "{text}"').config.target.path
        assert (path.kind, path.name, path.container) == (kind, name, container), text


def test_target_forms_agree_between_formats(resolve_config) -> None:
    toml = resolve_config('target = { deployment = "api", container = "app" }').to_dict()
    yaml = resolve_config("target:\n  deployment: api\n  container: app\n", suffix=".yaml")
    jsn = resolve_config('{"target": {"path": "deploy/api/container/app"}}', suffix=".json")
    assert toml["target"] == yaml.to_dict()["target"] == jsn.to_dict()["target"]


# ---------------------------------------------------------------------------------------
# feature.fs
# ---------------------------------------------------------------------------------------

FS_FORMS = [
    ('fs = "read"', {"mode": "read"}, False),
    ('fs = "write"', {"mode": "write"}, False),
    ('fs = "local"', {"mode": "local"}, False),
    ('fs = "localwithoverrides"', {"mode": "localwithoverrides"}, False),
    ("fs = true", {"mode": "read"}, True),
    ("fs = false", {"mode": "local"}, True),
    ("fs = {}", {"mode": "read"}, False),
    ('fs = { mode = "write" }', {"mode": "write"}, False),
    (
        'fs = { mode = "read", read_write = ["^/var/run"], read_only = "^/etc", local = "^/lib" }',
        {"mode": "read", "read_write": ["^/var/run"], "read_only": ["^/etc"], "local": ["^/lib"]},
        False,
    ),
    ('fs = { local = ["^/a", "^/b"] }', {"mode": "read", "local": ["^/a", "^/b"]}, False),
]


@pytest.mark.parametrize(("text", "expected", "warns"), FS_FORMS)
def test_fs_forms(resolve_config, text: str, expected: dict[str, Any], warns: bool) -> None:
    resolved = resolve_config(f"[feature]\n{text}\n")
    fs = resolved.to_dict()["feature"]["fs"]
    assert fs == {"read_write": [], "read_only": [], "local": [], **expected}
    # fs = true/false go through the compatibility table (see test_deprecations.py).
    assert bool(resolved.warnings) is warns


# ---------------------------------------------------------------------------------------
# feature.network.incoming / outgoing / network / http_filter
# ---------------------------------------------------------------------------------------

INCOMING_FORMS = [
    ('incoming = "mirror"', {"mode": "mirror"}),
    ('incoming = "steal"', {"mode": "steal"}),
    ('incoming = "off"', {"mode": "off"}),
    ("incoming = {}", {"mode": "mirror"}),
    ('incoming = { mode = "steal" }', {"mode": "steal"}),
    (
        'incoming = { mode = "steal", port_mapping = [[9333, 80]], ignore_localhost = true }',
        {"mode": "steal", "port_mapping": [[9333, 80]], "ignore_localhost": True},
    ),
    # A judgment call, tested as implemented: mirrord 3.32 has no "off" mode and keeps
    # mirroring for `incoming = false`; here false turns incoming traffic off.
    ("incoming = true", {"mode": "mirror"}),
    ("incoming = false", {"mode": "off"}),
]


@pytest.mark.parametrize(("text", "expected"), INCOMING_FORMS)
def test_incoming_forms(resolve_config, text: str, expected: dict[str, Any]) -> None:
    incoming = resolve_config(f"[feature.network]\n{text}\n").to_dict()["feature"]["network"]
    default = {
        "mode": "mirror",
        "http_filter": {"header_filter": None, "ports": [80, 8080]},
        "port_mapping": [],
        "ignore_localhost": False,
    }
    assert incoming["incoming"] == {**default, **expected}


OUTGOING_FORMS = [
    ("outgoing = true", (True, True)),
    ("outgoing = false", (False, False)),
    ("outgoing = {}", (True, True)),
    ("outgoing = { tcp = false }", (False, True)),
    ("outgoing = { udp = false }", (True, False)),
    ("outgoing = { tcp = true, udp = true }", (True, True)),
]


@pytest.mark.parametrize(("text", "expected"), OUTGOING_FORMS)
def test_outgoing_forms(resolve_config, text: str, expected: tuple[bool, bool]) -> None:
    outgoing = resolve_config(f"[feature.network]\n{text}\n").to_dict()["feature"]["network"]
    assert (outgoing["outgoing"]["tcp"], outgoing["outgoing"]["udp"]) == expected
    assert outgoing["outgoing"]["unix_streams"] == []


def test_outgoing_unix_streams_single_or_list(resolve_config) -> None:
    single = resolve_config('[feature.network.outgoing]\nunix_streams = "^/run/.*"\n')
    many = resolve_config('[feature.network.outgoing]\nunix_streams = ["^/a", "^/b"]\n')
    assert single.to_dict()["feature"]["network"]["outgoing"]["unix_streams"] == ["^/run/.*"]
    assert many.to_dict()["feature"]["network"]["outgoing"]["unix_streams"] == ["^/a", "^/b"]


def test_network_true_is_the_default(resolve_config) -> None:
    assert resolve_config("[feature]\nnetwork = true\n").to_dict() == resolve_config().to_dict()


def test_network_false_turns_everything_off(resolve_config) -> None:
    """``network = false``: no DNS, no outgoing; incoming "off" (mirrord 3.32 would keep
    mirroring, as for ``incoming = false``; the implemented choice is tested)."""
    network = resolve_config("[feature]\nnetwork = false\n").to_dict()["feature"]["network"]
    assert network["dns"] is False
    assert network["outgoing"]["tcp"] is False
    assert network["outgoing"]["udp"] is False
    assert network["incoming"]["mode"] == "off"


def test_network_object_form(resolve_config) -> None:
    text = '[feature]\nnetwork = { dns = false, incoming = "steal", outgoing = { udp = false } }\n'
    network = resolve_config(text).to_dict()["feature"]["network"]
    assert network["dns"] is False
    assert network["incoming"]["mode"] == "steal"
    assert (network["outgoing"]["tcp"], network["outgoing"]["udp"]) == (True, False)


HTTP_FILTER_FORMS = [
    ("http_filter = true", {"header_filter": None, "ports": [80, 8080]}),
    ("http_filter = false", {"header_filter": None, "ports": [80, 8080]}),
    ("http_filter = {}", {"header_filter": None, "ports": [80, 8080]}),
    (
        'http_filter = { header_filter = "^x-user: .*" }',
        {"header_filter": "^x-user: .*", "ports": [80, 8080]},
    ),
    ("http_filter = { ports = 3000 }", {"header_filter": None, "ports": [3000]}),
    ("http_filter = { ports = [3000, 3001] }", {"header_filter": None, "ports": [3000, 3001]}),
    ("http_filter = { ports = [] }", {"header_filter": None, "ports": []}),
]


@pytest.mark.parametrize(("text", "expected"), HTTP_FILTER_FORMS)
def test_http_filter_forms(resolve_config, text: str, expected: dict[str, Any]) -> None:
    resolved = resolve_config(f'[feature.network.incoming]\nmode = "steal"\n{text}\n')
    assert resolved.to_dict()["feature"]["network"]["incoming"]["http_filter"] == expected


# ---------------------------------------------------------------------------------------
# feature.env
# ---------------------------------------------------------------------------------------

ENV_FORMS = [
    ("env = true", {"include": ["*"], "exclude": [], "override": {}}),
    # mirrord 3.32's disabled env config excludes "*".
    ("env = false", {"include": [], "exclude": ["*"], "override": {}}),
    ("env = {}", {"include": ["*"], "exclude": [], "override": {}}),
    ('env = { include = "*" }', {"include": ["*"], "exclude": [], "override": {}}),
    (
        'env = { include = "DATABASE_URL;PORT" }',
        {"include": ["DATABASE_URL", "PORT"], "exclude": [], "override": {}},
    ),
    ('env = { include = ["A", "B"] }', {"include": ["A", "B"], "exclude": [], "override": {}}),
    ('env = { exclude = "SECRET" }', {"include": ["*"], "exclude": ["SECRET"], "override": {}}),
    (
        'env = { exclude = "USER;SECRET" }',
        {"include": ["*"], "exclude": ["USER", "SECRET"], "override": {}},
    ),
    (
        'env = { override = { REGION = "2" } }',
        {"include": ["*"], "exclude": [], "override": {"REGION": "2"}},
    ),
]


@pytest.mark.parametrize(("text", "expected"), ENV_FORMS)
def test_env_forms(resolve_config, text: str, expected: dict[str, Any]) -> None:
    assert resolve_config(f"[feature]\n{text}\n").to_dict()["feature"]["env"] == expected


# ---------------------------------------------------------------------------------------
# list-or-single
# ---------------------------------------------------------------------------------------

STRING_LISTS = [
    "skip_processes",
    "sip_binaries",
    "feature.env.include",
    "feature.env.exclude",
    "feature.fs.read_write",
    "feature.fs.read_only",
    "feature.fs.local",
    "feature.network.outgoing.unix_streams",
]


def nest(path: str, value: Any) -> dict[str, Any]:
    tree: Any = value
    for part in reversed(path.split(".")):
        tree = {part: tree}
    return tree


@pytest.mark.parametrize("path", STRING_LISTS)
def test_string_list_single_or_list(resolve_config, path: str) -> None:
    single = resolve_config(json.dumps(nest(path, "abc")), suffix=".json").to_dict()
    many = resolve_config(json.dumps(nest(path, ["abc", "def"])), suffix=".json").to_dict()
    empty = resolve_config(json.dumps(nest(path, [])), suffix=".json").to_dict()
    assert get(single, path) == ["abc"]
    assert get(many, path) == ["abc", "def"]
    assert get(empty, path) == []


def test_semicolons_in_file_strings_split_only_env_filters(resolve_config) -> None:
    """``feature.env.include``/``exclude`` are ``;``-lists in mirrord (the seed's
    ``include = "DATABASE_URL;PORT"``); other string lists take the string as one item, as
    mirrord 3.32's ``VecOrSingle::to_vec`` does."""
    text = """
skip_processes = "a;b"
[feature.env]
include = "A;B"
exclude = " C ; D ;"
[feature.fs]
local = "^/x;y"
"""
    resolved = resolve_config(text).to_dict()
    assert resolved["feature"]["env"]["include"] == ["A", "B"]
    assert resolved["feature"]["env"]["exclude"] == ["C", "D"]
    assert resolved["skip_processes"] == ["a;b"]
    assert resolved["feature"]["fs"]["local"] == ["^/x;y"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(80, [80]), ([80], [80]), ([80, 8080, 9000], [80, 8080, 9000]), (0, [0]), (65535, [65535])],
)
def test_port_list_single_or_list(resolve_config, value: Any, expected: list[int]) -> None:
    tree = nest("feature.network.incoming.http_filter.ports", value)
    resolved = resolve_config(json.dumps(tree), suffix=".json").to_dict()
    assert resolved["feature"]["network"]["incoming"]["http_filter"]["ports"] == expected


def test_port_mapping_pairs(resolve_config) -> None:
    text = "[feature.network.incoming]\nport_mapping = [[9333, 80], [9334, 8080]]\n"
    incoming = resolve_config(text).to_dict()["feature"]["network"]["incoming"]
    assert incoming["port_mapping"] == [[9333, 80], [9334, 8080]]


# ---------------------------------------------------------------------------------------
# null means "not set"
# ---------------------------------------------------------------------------------------

NULLABLE_EVERYWHERE = {
    "accept_invalid_certificates": None,
    "skip_processes": None,
    "connect_tcp": None,
    "connect_agent_port": None,
    "operator": None,
    "agent": {"log_level": None, "ttl": None, "image_pull_policy": None, "ephemeral": None},
    "feature": {
        "capture_error_trace": None,
        "env": {"include": None, "exclude": None, "override": None},
        "fs": {"mode": None, "read_only": None},
        "network": {
            "dns": None,
            "incoming": {"mode": None, "http_filter": {"header_filter": None, "ports": None}},
            "outgoing": {"tcp": None, "udp": None},
        },
    },
    "target": {"path": None, "namespace": None},
}


def test_json_null_means_default(resolve_config) -> None:
    resolved = resolve_config(json.dumps(NULLABLE_EVERYWHERE), suffix=".json")
    assert resolved.to_dict() == resolve_config().to_dict()


@pytest.mark.parametrize(
    "text",
    [
        "agent:\nfeature:\ntarget:\n",
        "agent: ~\nfeature: {fs: null, env: ~, network: null}\ntarget: null\n",
        "feature:\n  network:\n    incoming:\n    outgoing: ~\n",
    ],
)
def test_yaml_null_sections_mean_default(resolve_config, text: str) -> None:
    assert resolve_config(text, suffix=".yaml").to_dict() == resolve_config().to_dict()


def test_null_does_not_hide_other_keys(resolve_config) -> None:
    text = (
        '{"agent": {"ttl": null, "log_level": "debug"}, "target": {"path": null, "namespace": "x"}}'
    )
    resolved = resolve_config(text, suffix=".json").to_dict()
    assert resolved["agent"]["ttl"] == 1
    assert resolved["agent"]["log_level"] == "debug"
    assert resolved["target"] == {"path": None, "namespace": "x"}


# ---------------------------------------------------------------------------------------
# forms that are not accepted
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("[feature]\nfs = 1", "feature.fs"),
        ('[feature]\nfs = "readwrite"', "feature.fs.mode"),
        ("[feature]\nfs = []", "feature.fs"),
        ('[feature]\nenv = "A"', "feature.env"),
        ('[feature]\nnetwork = "steal"', "feature.network"),
        ("[feature.network]\nincoming = 1", "feature.network.incoming"),
        ('[feature.network]\nincoming = "sniff"', "feature.network.incoming.mode"),
        ('[feature.network]\noutgoing = "tcp"', "feature.network.outgoing"),
        ('[feature.network.incoming]\nhttp_filter = "x"', "feature.network.incoming.http_filter"),
        ("target = 1", "target"),
        ("target = true", "target"),
        ('target = { pod = "a", deployment = "b" }', "target.path"),
    ],
)
def test_unaccepted_forms(resolve_config, text: str, path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config(text)
    assert [problem.path for problem in caught.value.problems] == [path]
