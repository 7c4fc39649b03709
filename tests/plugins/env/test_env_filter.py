"""The env plugin's filter: include/exclude wildcards, default exclusions, overrides."""

from __future__ import annotations

import importlib.metadata

import pluggy
import pytest

from mirrord_core.plugin_manager import apply_env_filters, load_plugins
from mirrord_env.local.env_filter import EnvFilter

REMOTE = {
    "PATH": "/pod/bin",
    "HOME": "/root",
    "DATABASE_URL": "postgres://db",
    "DATABASE_POOL": "5",
    "SECRET_KEY": "s3cr3t",
    "PORT": "8080",
    "JAVA_HOME": "/opt/java",
    "A1": "x",
    "A22": "y",
}


def test_default_takes_everything_but_machine_variables() -> None:
    chosen = EnvFilter.from_patterns(["*"], [], {}).apply(REMOTE)
    assert "PATH" not in chosen and "HOME" not in chosen and "JAVA_HOME" not in chosen
    assert chosen["DATABASE_URL"] == "postgres://db"
    assert chosen["SECRET_KEY"] == "s3cr3t"


def test_include_selects_with_wildcards() -> None:
    chosen = EnvFilter.from_patterns(["DATABASE_*", "PORT"], [], {}).apply(REMOTE)
    assert chosen == {"DATABASE_URL": "postgres://db", "DATABASE_POOL": "5", "PORT": "8080"}


def test_question_mark_matches_one_character() -> None:
    chosen = EnvFilter.from_patterns(["A?"], [], {}).apply(REMOTE)
    assert chosen == {"A1": "x"}


def test_exclude_drops_and_beats_include() -> None:
    chosen = EnvFilter.from_patterns(["*"], ["SECRET_*", "PORT"], {}).apply(REMOTE)
    assert "SECRET_KEY" not in chosen and "PORT" not in chosen
    assert "DATABASE_URL" in chosen
    assert EnvFilter.from_patterns(["PORT"], ["PORT"], {}).apply(REMOTE) == {}


def test_exact_include_takes_a_default_exclusion() -> None:
    chosen = EnvFilter.from_patterns(["PATH", "DATABASE_URL"], [], {}).apply(REMOTE)
    assert chosen == {"PATH": "/pod/bin", "DATABASE_URL": "postgres://db"}
    # A wildcard never reaches the default exclusions.
    assert "PATH" not in EnvFilter.from_patterns(["PA*"], [], {}).apply(REMOTE)


def test_matching_is_case_sensitive() -> None:
    assert EnvFilter.from_patterns(["port"], [], {}).apply(REMOTE) == {}


def test_overrides_win_and_add() -> None:
    chosen = EnvFilter.from_patterns(["PORT"], [], {"PORT": "9999", "EXTRA": "1"}).apply(REMOTE)
    assert chosen == {"PORT": "9999", "EXTRA": "1"}


@pytest.fixture
def first_party() -> pluggy.PluginManager:
    """Only the first-party plugins, whatever third-party ones are installed."""
    entry_points = [
        ep
        for ep in importlib.metadata.entry_points(group="mirrord")
        if ep.name in {"fs", "env", "network", "target"}
    ]
    return load_plugins(entry_points=entry_points, environ={}).manager


def test_env_false_takes_nothing_remote(resolve_config, first_party) -> None:
    resolved = resolve_config("[feature]\nenv = false\n")
    manager = first_party
    assert apply_env_filters(manager, resolved.config, REMOTE) == {}


def test_configured_filter_through_the_hook(resolve_config, first_party) -> None:
    resolved = resolve_config(
        '[feature.env]\ninclude = "DATABASE_*;PORT"\nexclude = ["DATABASE_POOL"]\n'
        '[feature.env.override]\nPORT = "1"\n'
    )
    assert apply_env_filters(first_party, resolved.config, REMOTE) == {
        "DATABASE_URL": "postgres://db",
        "PORT": "1",
    }
