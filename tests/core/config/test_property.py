"""Property: whatever the input, resolving gives a ``ResolvedConfig`` or a ``ConfigError`` —
never another exception (which the CLI would show as a traceback)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirrord_core.config import ConfigError, ConfigLayout, ResolvedConfig, resolve
from mirrord_core.config.deprecations import DEPRECATIONS, LegacyEnvVar
from mirrord_core.config.overrides import flag_table
from mirrord_core.plugin_manager import get_plugins

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _layout() -> ConfigLayout:
    return get_plugins().layout


def _real_paths() -> list[str]:
    paths = [path for path, _attribute, _meta in _layout().iter_fields()]
    # Deprecated spellings the compatibility table looks for.
    paths += [
        "feature.fs.include",
        "feature.fs.exclude",
        "feature.network.incoming.http_header_filter",
        "feature.network.incoming.http_header_filter.filter",
        "target.pod",
        "target.deployment",
        "target.container",
        "target.path.pod",
        "target.path.deployment",
        "target.path.container",
    ]
    return paths


REAL_PATHS = _real_paths()
REAL_NAMES = sorted({part for path in REAL_PATHS for part in path.split(".")})

# Values a config author might plausibly write, plus noise.
MEANINGFUL_TEXT = st.sampled_from(
    [
        "read",
        "write",
        "local",
        "localwithoverrides",
        "disabled",
        "mirror",
        "steal",
        "off",
        "pod/web",
        "podname/web",
        "deploy/api/container/app",
        "containername/app",
        "container/app",
        "pid/1",
        "pid/0",
        "A;B",
        "*",
        "(",
        "^/etc/.*",
        "127.0.0.1:80",
        "Always",
        "true",
        "",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=70000),
    st.sampled_from([-(2**70), 2**64, 2**64 - 1, 1.5, 2.0, -0.0, 1e300]),
    MEANINGFUL_TEXT,
    st.text(max_size=6),
)
KEYS = st.one_of(st.sampled_from(REAL_NAMES), st.text(alphabet="abcdefilmnoprstu_", max_size=8))


def values(keys: st.SearchStrategy[Any] = KEYS) -> st.SearchStrategy[Any]:
    return st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(keys, children, max_size=3),
        ),
        max_leaves=6,
    )


def _set(tree: dict[Any, Any], path: list[Any], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


PLACEMENTS = st.tuples(
    st.sampled_from(REAL_PATHS), st.one_of(st.none(), st.integers(min_value=0, max_value=6))
)


def documents(keys: st.SearchStrategy[Any] = KEYS) -> st.SearchStrategy[dict[Any, Any]]:
    """A random tree mixing random structure with values at real (or nearly real) paths."""
    vals = values(keys)

    @st.composite
    def build(draw: st.DrawFn) -> dict[Any, Any]:
        tree = draw(st.dictionaries(keys, vals, max_size=3))
        for path_text, detour in draw(st.lists(PLACEMENTS, max_size=6)):
            path: list[Any] = path_text.split(".")
            if detour is not None:  # wander off the real path: a random key somewhere
                path.insert(min(detour, len(path)), draw(keys))
            _set(tree, path, draw(vals))
        return tree

    return build()


def _check(outcome: Any) -> None:
    if isinstance(outcome, ResolvedConfig):
        json.dumps(outcome.to_dict())  # the resolved config is plain JSON
        assert all(isinstance(warning, str) and warning for warning in outcome.warnings)
    else:
        assert isinstance(outcome, ConfigError)
        assert outcome.problems
        for problem in outcome.problems:
            assert str(problem)
            assert "Traceback" not in str(problem)


def _resolve(text: str, suffix: str, environ: Mapping[str, str], flags: Mapping[str, Any]) -> Any:
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / f"mirrord{suffix}"
        file.write_text(text)
        try:
            return resolve(_layout(), file=file, environ=dict(environ), flags=dict(flags))
        except ConfigError as err:
            return err


@SETTINGS
@given(documents())
def test_random_json_file_resolves_or_fails_cleanly(document: dict[str, Any]) -> None:
    _check(_resolve(json.dumps(document), ".json", {}, {}))


@SETTINGS
@given(documents(keys=st.one_of(KEYS, st.integers(), st.booleans(), st.none())))
def test_random_yaml_file_resolves_or_fails_cleanly(document: dict[Any, Any]) -> None:
    """YAML also allows keys that are not strings (``1:``, ``null:``, ``true:``)."""
    _check(_resolve(yaml.safe_dump(document), ".yaml", {}, {}))


def _declared_variables() -> list[str]:
    declared = [meta.env for _path, _attribute, meta in _layout().leaf_fields() if meta.env]
    legacy = [
        name for entry in DEPRECATIONS if isinstance(entry, LegacyEnvVar) for name in entry.old_vars
    ]
    legacy += [entry.current_var for entry in DEPRECATIONS if isinstance(entry, LegacyEnvVar)]
    legacy += ["MIRRORD_FILE_FILTER_INCLUDE", "MIRRORD_FILE_FILTER_EXCLUDE"]
    return sorted(set(declared + legacy))


VARIABLES = _declared_variables()
VARIABLE_TEXT = st.one_of(
    MEANINGFUL_TEXT,
    st.sampled_from(["0", "1", "65535", "65536", "-1", "80;8080", "9333:80", "yes", "no"]),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=16),
)


@SETTINGS
@given(
    environ=st.dictionaries(st.sampled_from(VARIABLES), VARIABLE_TEXT, max_size=8),
    document=st.one_of(st.just({}), documents()),
)
def test_random_environment_resolves_or_fails_cleanly(
    environ: dict[str, str], document: dict[str, Any]
) -> None:
    _check(_resolve(json.dumps(document), ".json", environ, {}))


def _flag_strategy() -> st.SearchStrategy[dict[str, Any]]:
    table = flag_table(_layout())
    fields = {
        dest: (VARIABLE_TEXT if flag.takes_argument else st.sampled_from([None, False, True]))
        for dest, (flag, _paths) in table.items()
    }
    return st.fixed_dictionaries({}, optional=fields)


@SETTINGS
@given(
    flags=_flag_strategy(),
    environ=st.dictionaries(st.sampled_from(VARIABLES), VARIABLE_TEXT, max_size=4),
)
def test_random_flags_resolve_or_fail_cleanly(
    flags: dict[str, Any], environ: dict[str, str]
) -> None:
    _check(_resolve("{}", ".json", environ, flags))


def test_strategies_reach_both_outcomes() -> None:
    """Sanity: the generators are not so wild that nothing ever resolves."""
    assert isinstance(_resolve(json.dumps({"agent": {"ttl": 3}}), ".json", {}, {}), ResolvedConfig)
    assert isinstance(_resolve(json.dumps({"agent": {"ttl": -3}}), ".json", {}, {}), ConfigError)
