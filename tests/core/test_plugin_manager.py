"""The plugin manager: loading the ``mirrord`` entry points, and every way a plugin can be wrong.

Plugins here are real: a throwaway module plus a ``*.dist-info`` directory (METADATA and
entry_points.txt) in a temporary directory, so ``importlib.metadata`` discovers them as it
discovers installed distributions — in this process through ``sys.path``, and in the
``mirrord`` console script through ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from mirrord_core.config import ConfigError, resolve
from mirrord_core.plugin_manager import (
    PluginError,
    apply_env_filters,
    get_plugins,
    load_plugins,
    reset_plugins,
)

FIRST_PARTY = {
    "env": "mirrord-env",
    "fs": "mirrord-fs",
    "network": "mirrord-network",
    "target": "mirrord-target",
}
_counter = itertools.count()


def installed_entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group="mirrord"))


def first_party_entry_points() -> list[importlib.metadata.EntryPoint]:
    return [
        ep
        for ep in installed_entry_points()
        if ep.dist is not None and FIRST_PARTY.get(ep.name) == ep.dist.metadata["Name"]
    ]


@attrs.define
class FakeSite:
    """A directory of fake distributions, on ``sys.path`` for this test."""

    root: Path
    modules: list[str] = attrs.field(factory=list)

    def module(self, source: str) -> str:
        """Write a uniquely named module and return its name."""
        name = f"mirrord_fake_{os.getpid()}_{next(_counter)}"
        (self.root / f"{name}.py").write_text(textwrap.dedent(source))
        self.modules.append(name)
        return name

    def distribution(
        self, name: str, version: str, entry_points: dict[str, str]
    ) -> importlib.metadata.Distribution:
        """A distribution ``name`` registering ``{entry-point name: module[:attr]}``."""
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[mirrord]\n{lines}")
        return importlib.metadata.PathDistribution(info)

    def plugin(
        self, name: str, source: str, distribution: str | None = None, version: str = "1.0"
    ) -> list[importlib.metadata.EntryPoint]:
        """One distribution with one plugin module; returns its entry points."""
        module = self.module(source)
        dist = self.distribution(distribution or f"fake-{name}", version, {name: module})
        return list(dist.entry_points)

    @property
    def cli_env(self) -> dict[str, str]:
        """Environment that makes the ``mirrord`` console script see these distributions."""
        paths = [str(self.root), *filter(None, [os.environ.get("PYTHONPATH")])]
        return {"PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSite]:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    site = FakeSite(root)
    yield site
    for name in site.modules:
        sys.modules.pop(name, None)
    reset_plugins()


SECTION_PLUGIN = """
    import attrs
    from mirrord_core.config import setting
    from mirrord_core.hookspecs import hookimpl

    @attrs.frozen(kw_only=True)
    class DemoConfig:
        \"\"\"A demo section.\"\"\"
        level: str = setting(default="low", env="MIRRORD_DEMO_LEVEL", doc="How much.")

    @hookimpl
    def register_config_sections():
        return {SECTION: DemoConfig}
"""


def section_plugin(path: str) -> str:
    return SECTION_PLUGIN.replace("SECTION", repr(path))


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr


# -- loading: once, lazily ---------------------------------------------------------------


def test_importing_the_core_imports_no_plugin() -> None:
    packages = sorted({ep.module.split(".")[0] for ep in installed_entry_points()})
    assert {f"mirrord_{name}" for name in FIRST_PARTY} <= set(packages)
    script = textwrap.dedent(
        f"""
        import json, sys
        import mirrord_core, mirrord_core.config, mirrord_core.hookspecs
        import mirrord_core.plugin_manager, mirrord_core.run_pipeline
        import mirrord_core.cli, mirrord_core.cli.main, mirrord_core.cli.commands
        packages = {packages!r}
        before = [p for p in packages if p in sys.modules]
        mirrord_core.plugin_manager.get_plugins()
        after = [p for p in packages if p in sys.modules]
        print(json.dumps({{"before": before, "after": after}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    seen = json.loads(result.stdout)
    assert seen == {"before": [], "after": packages}


COUNTING_PLUGIN = """
    from pathlib import Path
    from mirrord_core.hookspecs import hookimpl

    LOG = Path(LOG_PATH)
    with LOG.open("a") as log:
        log.write("imported\\n")

    @hookimpl
    def register_config_sections():
        with LOG.open("a") as log:
            log.write("registered\\n")
        return {}
"""


def test_get_plugins_loads_entry_points_once_on_first_use(fake_site: FakeSite) -> None:
    log = fake_site.root / "events.log"
    log.touch()
    fake_site.plugin("counted", COUNTING_PLUGIN.replace("LOG_PATH", repr(str(log))))
    assert log.read_text() == ""  # installed, not loaded

    first = get_plugins()
    assert "counted" in [p.name for p in first.plugins]
    assert get_plugins() is first
    assert get_plugins() is first
    assert log.read_text().splitlines() == ["imported", "registered"]

    reset_plugins()
    second = get_plugins()
    assert second is not first
    assert log.read_text().splitlines() == ["imported", "registered", "registered"]


def test_entry_points_are_loaded_in_name_order_with_their_metadata(fake_site: FakeSite) -> None:
    zeta = fake_site.plugin("zeta", section_plugin("feature.zeta"), "zeta-dist", "3.2.1")
    alpha = fake_site.plugin("alpha", "from mirrord_core.hookspecs import hookimpl\n")
    loaded = load_plugins(entry_points=[*zeta, *alpha], environ={})
    assert [(p.name, p.distribution, p.version, p.sections, p.hooks) for p in loaded.plugins] == [
        ("alpha", "fake-alpha", "1.0", (), ()),
        ("zeta", "zeta-dist", "3.2.1", ("feature.zeta",), ("register_config_sections",)),
    ]
    assert loaded.failures == ()
    assert loaded.disabled == ()


def test_a_plugin_section_takes_part_in_resolving(fake_site: FakeSite, tmp_path: Path) -> None:
    entry_points = fake_site.plugin("demo", section_plugin("feature.demo"))
    layout = load_plugins(entry_points=entry_points, environ={}).layout
    file = tmp_path / "mirrord.toml"
    file.write_text('[feature.demo]\nlevel = "high"\n')
    assert resolve(layout, file=file, environ={}).config.feature.demo.level == "high"
    resolved = resolve(layout, file=file, environ={"MIRRORD_DEMO_LEVEL": "max"})
    assert resolved.to_dict()["feature"]["demo"] == {"level": "max"}


# -- a plugin that fails to import ---------------------------------------------------------

BROKEN_IMPORTS = {
    "missing dependency": ("import mirrord_no_such_dependency\n", "ModuleNotFoundError"),
    "error at import": ("raise RuntimeError('kaboom at import')\n", "RuntimeError: kaboom"),
    "syntax error": ("def broken(:\n", "SyntaxError"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_IMPORTS))
def test_a_plugin_failing_to_import_is_reported_and_skipped(fake_site: FakeSite, case: str) -> None:
    source, error = BROKEN_IMPORTS[case]
    broken = fake_site.plugin("broken", source, "mirrord-broken", "2.5.1")
    warnings: list[str] = []
    loaded = load_plugins(
        entry_points=[*first_party_entry_points(), *broken], environ={}, warn=warnings.append
    )
    assert sorted(p.name for p in loaded.plugins) == sorted(FIRST_PARTY)
    [failure] = loaded.failures
    assert (failure.name, failure.distribution, failure.version) == (
        "broken",
        "mirrord-broken",
        "2.5.1",
    )
    assert error in failure.error
    [warning] = warnings
    for part in ("'broken'", "mirrord-broken", "2.5.1", error, "skipping"):
        assert part in warning


def test_an_entry_point_naming_a_missing_attribute_is_a_failure(fake_site: FakeSite) -> None:
    module = fake_site.module("X = 1\n")
    dist = fake_site.distribution("mirrord-typo", "0.9", {"typo": f"{module}:plugn"})
    warnings: list[str] = []
    loaded = load_plugins(entry_points=dist.entry_points, environ={}, warn=warnings.append)
    assert loaded.plugins == ()
    [failure] = loaded.failures
    assert failure.error.startswith("AttributeError")
    assert "plugn" in warnings[0]


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_strict_mode_makes_an_import_failure_fatal(fake_site: FakeSite, value: str) -> None:
    broken = fake_site.plugin("broken", "raise RuntimeError('kaboom')\n", "mirrord-broken", "2.5.1")
    with pytest.raises(PluginError) as caught:
        load_plugins(
            entry_points=[*first_party_entry_points(), *broken],
            environ={"MIRRORD_STRICT_PLUGINS": value},
            warn=pytest.fail,
        )
    for part in ("'broken'", "mirrord-broken", "2.5.1", "RuntimeError: kaboom"):
        assert part in str(caught.value)
    assert "MIRRORD_STRICT_PLUGINS" in str(caught.value)


def test_strict_mode_off_values_keep_skipping(fake_site: FakeSite) -> None:
    broken = fake_site.plugin("broken", "raise RuntimeError('kaboom')\n")
    loaded = load_plugins(
        entry_points=broken, environ={"MIRRORD_STRICT_PLUGINS": "0"}, warn=lambda _: None
    )
    assert [f.name for f in loaded.failures] == ["broken"]


def test_cli_reports_a_broken_plugin_and_goes_on(fake_site: FakeSite, run_cli) -> None:
    fake_site.plugin("broken", "raise RuntimeError('kaboom')\n", "mirrord-broken", "2.5.1")
    result = run_cli("plugins", env=fake_site.cli_env)
    assert result.returncode == 0, result.stderr
    for part in ("'broken'", "mirrord-broken", "2.5.1", "RuntimeError: kaboom"):
        assert part in result.stderr
    assert "failed:" in result.stdout
    for name, distribution in FIRST_PARTY.items():
        assert name in result.stdout
        assert distribution in result.stdout
    no_traceback(result)

    listed = json.loads(run_cli("plugins", "--json", env=fake_site.cli_env).stdout)
    assert listed["failed"] == [
        {
            "name": "broken",
            "distribution": "mirrord-broken",
            "version": "2.5.1",
            "error": "RuntimeError: kaboom",
        }
    ]
    assert "broken" not in [p["name"] for p in listed["plugins"]]


@pytest.mark.parametrize("command", [["plugins"], ["schema"], ["run", "--dry-run"]])
def test_cli_strict_mode_exits_1_with_a_clean_message(
    fake_site: FakeSite, run_cli, command: list[str]
) -> None:
    fake_site.plugin("broken", "raise RuntimeError('kaboom')\n", "mirrord-broken", "2.5.1")
    result = run_cli(*command, env={**fake_site.cli_env, "MIRRORD_STRICT_PLUGINS": "1"})
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("mirrord: error:")
    for part in ("'broken'", "mirrord-broken", "2.5.1", "RuntimeError: kaboom"):
        assert part in result.stderr
    no_traceback(result)


# -- MIRRORD_DISABLE_PLUGINS -----------------------------------------------------------------


def test_disabled_plugins_are_not_imported(fake_site: FakeSite) -> None:
    entry_points = [
        *fake_site.plugin("keep", "from mirrord_core.hookspecs import hookimpl\n"),
        *fake_site.plugin("drop", "raise AssertionError('must not be imported')\n"),
    ]
    loaded = load_plugins(
        entry_points=entry_points,
        environ={"MIRRORD_DISABLE_PLUGINS": "drop"},
        warn=pytest.fail,
    )
    assert [p.name for p in loaded.plugins] == ["keep"]
    assert loaded.disabled == ("drop",)
    assert loaded.failures == ()
    assert fake_site.modules[1] not in sys.modules


def test_disabled_first_party_plugins_and_their_sections(tmp_path: Path) -> None:
    loaded = load_plugins(
        entry_points=first_party_entry_points(),
        environ={"MIRRORD_DISABLE_PLUGINS": " fs, network ,"},
        warn=pytest.fail,
    )
    assert sorted(p.name for p in loaded.plugins) == ["env", "target"]
    assert loaded.disabled == ("fs", "network")
    assert loaded.layout.field_at("feature.fs") is None
    assert loaded.layout.field_at("feature.env") is not None
    file = tmp_path / "mirrord.toml"
    file.write_text('[feature.fs]\nmode = "write"\n[feature.network]\ndns = false\n')
    with pytest.raises(ConfigError) as caught:
        resolve(loaded.layout, file=file, environ={})
    problems = {p.path: p.message for p in caught.value.problems}
    assert set(problems) == {"feature.fs", "feature.network"}
    assert "pip install mirrord-fs" in problems["feature.fs"]
    assert "pip install mirrord-network" in problems["feature.network"]


def test_disabling_an_unknown_plugin_warns() -> None:
    warnings: list[str] = []
    loaded = load_plugins(
        entry_points=first_party_entry_points(),
        environ={"MIRRORD_DISABLE_PLUGINS": "fs,netwrok"},
        warn=warnings.append,
    )
    assert loaded.disabled == ("fs",)
    [warning] = warnings
    assert "netwrok" in warning
    assert "network" in warning  # the installed names are listed


def test_cli_shows_disabled_plugins_and_explains_their_sections(run_cli, tmp_path: Path) -> None:
    env = {"MIRRORD_DISABLE_PLUGINS": "fs,network"}
    table = run_cli("plugins", env=env)
    assert table.returncode == 0, table.stderr
    assert "disabled: fs" in table.stdout
    assert "disabled: network" in table.stdout
    assert "mirrord-fs" not in table.stdout
    listed = json.loads(run_cli("plugins", "--json", env=env).stdout)
    assert listed["disabled"] == ["fs", "network"]
    assert {p["name"] for p in listed["plugins"]} >= {"env", "target"}
    assert not {p["name"] for p in listed["plugins"]} & {"fs", "network"}

    file = tmp_path / "mirrord.toml"
    file.write_text('[feature.fs]\nmode = "write"\n[feature.network]\ndns = false\n')
    result = run_cli("verify-config", str(file), env=env)
    assert result.returncode == 1
    assert "feature.fs: " in result.stderr
    assert "pip install mirrord-fs" in result.stderr
    assert "feature.network: " in result.stderr
    assert "pip install mirrord-network" in result.stderr
    no_traceback(result)


# -- conflicts ------------------------------------------------------------------------------


def test_two_distributions_claiming_one_entry_point_name(fake_site: FakeSite) -> None:
    fork = fake_site.plugin("fs", "X = 1\n", "mirrord-fs-fork", "9.9")
    with pytest.raises(PluginError) as caught:
        load_plugins(entry_points=[*first_party_entry_points(), *fork], environ={})
    message = str(caught.value)
    assert "'fs'" in message
    assert "mirrord-fs and mirrord-fs-fork" in message


def test_cli_two_distributions_claiming_one_name(fake_site: FakeSite, run_cli) -> None:
    fake_site.plugin("env", "X = 1\n", "mirrord-env-fork", "9.9")
    result = run_cli("plugins", env=fake_site.cli_env)
    assert result.returncode == 1
    assert "mirrord-env" in result.stderr
    assert "mirrord-env-fork" in result.stderr
    no_traceback(result)


def test_the_same_entry_point_twice_loads_once(fake_site: FakeSite) -> None:
    entry_points = fake_site.plugin("demo", section_plugin("feature.demo"))
    loaded = load_plugins(entry_points=[*entry_points, *entry_points], environ={})
    assert [p.name for p in loaded.plugins] == ["demo"]


def test_two_plugins_registering_one_section(fake_site: FakeSite) -> None:
    entry_points = [
        *fake_site.plugin("one", section_plugin("feature.demo"), "dist-one", "1.1"),
        *fake_site.plugin("two", section_plugin("feature.demo"), "dist-two", "2.2"),
    ]
    with pytest.raises(PluginError) as caught:
        load_plugins(entry_points=entry_points, environ={})
    message = str(caught.value)
    for part in ("'one'", "dist-one", "'two'", "dist-two", "feature.demo"):
        assert part in message


def test_a_plugin_claiming_a_first_party_section(fake_site: FakeSite) -> None:
    rival = fake_site.plugin("zfs", section_plugin("feature.fs"), "better-fs", "0.1")
    with pytest.raises(PluginError) as caught:
        load_plugins(entry_points=[*first_party_entry_points(), *rival], environ={})
    message = str(caught.value)
    for part in ("'fs'", "mirrord-fs", "'zfs'", "better-fs", "feature.fs"):
        assert part in message


# -- hooks ---------------------------------------------------------------------------------

UNKNOWN_HOOK = """
    from mirrord_core.hookspecs import hookimpl

    @hookimpl
    def not_a_hook():
        return None
"""


def test_an_unknown_hook_fails_loudly(fake_site: FakeSite) -> None:
    entry_points = fake_site.plugin("odd", UNKNOWN_HOOK, "mirrord-odd", "0.2")
    with pytest.raises(PluginError) as caught:
        load_plugins(entry_points=entry_points, environ={})
    message = str(caught.value)
    for part in ("'odd'", "mirrord-odd", "0.2", "not_a_hook", "MIRRORD_DISABLE_PLUGINS=odd"):
        assert part in message


def test_a_misspelt_hook_gets_a_suggestion(fake_site: FakeSite) -> None:
    source = UNKNOWN_HOOK.replace("def not_a_hook()", "def filter_envs(config, remote_env)")
    with pytest.raises(PluginError, match="did you mean filter_env"):
        load_plugins(entry_points=fake_site.plugin("odd", source), environ={})


def test_an_optional_unknown_hook_is_allowed(fake_site: FakeSite) -> None:
    source = UNKNOWN_HOOK.replace("@hookimpl", "@hookimpl(optionalhook=True)")
    loaded = load_plugins(entry_points=fake_site.plugin("odd", source), environ={})
    assert [p.name for p in loaded.plugins] == ["odd"]


def test_a_hook_with_arguments_the_spec_lacks(fake_site: FakeSite) -> None:
    source = UNKNOWN_HOOK.replace("def not_a_hook()", "def filter_env(config, environment)")
    with pytest.raises(PluginError) as caught:
        load_plugins(entry_points=fake_site.plugin("odd", source, "mirrord-odd"), environ={})
    message = str(caught.value)
    for part in ("'odd'", "mirrord-odd", "filter_env", "environment"):
        assert part in message


def test_one_module_under_two_entry_point_names(fake_site: FakeSite) -> None:
    module = fake_site.module(section_plugin("feature.demo"))
    dist = fake_site.distribution("twice", "1.0", {"first": module, "second": module})
    with pytest.raises(PluginError, match=r"'second' \(twice 1\.0\) cannot be registered"):
        load_plugins(entry_points=dist.entry_points, environ={})


def test_cli_unknown_hook_exits_1_with_a_clean_message(fake_site: FakeSite, run_cli) -> None:
    fake_site.plugin("odd", UNKNOWN_HOOK, "mirrord-odd", "0.2")
    result = run_cli("plugins", env=fake_site.cli_env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("mirrord: error: plugin 'odd' (mirrord-odd 0.2)")
    assert "not_a_hook" in result.stderr
    no_traceback(result)
    # The message's advice works.
    disabled = run_cli("plugins", env={**fake_site.cli_env, "MIRRORD_DISABLE_PLUGINS": "odd"})
    assert disabled.returncode == 0, disabled.stderr
    assert "disabled: odd" in disabled.stdout


CHAIN_PLUGIN = """
    from mirrord_core.hookspecs import hookimpl

    @hookimpl(MARKS)
    def filter_env(config, remote_env):
        if NAME == "quiet":
            return None
        return {**remote_env, "CHAIN": remote_env.get("CHAIN", "") + NAME + ";"}
"""


def chain_plugin(name: str, marks: str = "") -> str:
    return CHAIN_PLUGIN.replace("MARKS", marks).replace("NAME", repr(name))


def test_env_filters_run_as_a_chain_in_plugin_order(fake_site: FakeSite) -> None:
    entry_points = [
        *fake_site.plugin("zeta", chain_plugin("zeta")),
        *fake_site.plugin("alpha", chain_plugin("alpha")),
        *fake_site.plugin("quiet", chain_plugin("quiet")),
        *fake_site.plugin("mid", chain_plugin("mid")),
    ]
    manager = load_plugins(entry_points=entry_points, environ={}).manager
    result = apply_env_filters(manager, config=None, remote_env={"KEEP": "1"})
    assert result == {"KEEP": "1", "CHAIN": "alpha;mid;zeta;"}


def test_env_filter_order_honours_tryfirst_and_trylast(fake_site: FakeSite) -> None:
    entry_points = [
        *fake_site.plugin("alpha", chain_plugin("alpha", "trylast=True")),
        *fake_site.plugin("mid", chain_plugin("mid")),
        *fake_site.plugin("zeta", chain_plugin("zeta", "tryfirst=True")),
    ]
    manager = load_plugins(entry_points=entry_points, environ={}).manager
    assert apply_env_filters(manager, None, {}) == {"CHAIN": "zeta;mid;alpha;"}


def test_no_env_filter_keeps_the_environment(fake_site: FakeSite) -> None:
    manager = load_plugins(entry_points=fake_site.plugin("none", "X = 1\n"), environ={}).manager
    remote = {"A": "1"}
    result = apply_env_filters(manager, None, remote)
    assert result == {"A": "1"}
    assert result is not remote


# -- section classes -------------------------------------------------------------------------

NO_DEFAULT = """
    import attrs
    from mirrord_core.config import setting
    from mirrord_core.hookspecs import hookimpl

    @attrs.frozen(kw_only=True)
    class Inner:
        \"\"\"Nested.\"\"\"
        depth: str = setting(DEFAULT doc="Depth.")

    @attrs.frozen(kw_only=True)
    class Outer:
        \"\"\"Outer.\"\"\"
        inner: Inner = setting(factory=lambda: Inner(depth="x"), doc="Inner.")
        FIELD

    @hookimpl
    def register_config_sections():
        return {"feature.broken": Outer}
"""

BAD_SECTIONS = {
    "no default": (
        NO_DEFAULT.replace("DEFAULT", 'default="deep",').replace(
            "FIELD", 'level: str = setting(doc="Level.")'
        ),
        "feature.broken.level has no default",
    ),
    "nested key without default": (
        NO_DEFAULT.replace("DEFAULT", "").replace("FIELD", ""),
        "feature.broken.inner.depth has no default",
    ),
    "field without setting()": (
        NO_DEFAULT.replace("DEFAULT", 'default="deep",').replace("FIELD", "level: str = 'x'"),
        "feature.broken.level is not declared with mirrord_core.config.setting()",
    ),
    "type without a schema": (
        NO_DEFAULT.replace("DEFAULT", 'default="deep",').replace(
            "FIELD", 'count: int = setting(default=1, doc="Count.")'
        ),
        "section feature.broken: no JSON schema for config type",
    ),
    "not an attrs class": (
        SECTION_PLUGIN.replace("SECTION: DemoConfig", "'feature.broken': dict"),
        "section feature.broken is <class 'dict'>, not an attrs class",
    ),
    "hook raises": (
        SECTION_PLUGIN.replace("return {SECTION: DemoConfig}", "raise KeyError('oops')"),
        "register_config_sections failed: KeyError: 'oops'",
    ),
    "hook returns a list": (
        SECTION_PLUGIN.replace("return {SECTION: DemoConfig}", "return ['feature.broken']"),
        "must return a mapping of section path to attrs class, not list",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SECTIONS))
def test_a_bad_section_class_is_a_clear_error(fake_site: FakeSite, case: str) -> None:
    source, expected = BAD_SECTIONS[case]
    entry_points = fake_site.plugin("broken", source, "mirrord-broken", "0.4")
    with pytest.raises(PluginError) as caught:
        load_plugins(entry_points=entry_points, environ={})
    message = str(caught.value)
    assert "'broken' (mirrord-broken 0.4)" in message
    assert expected in message


@pytest.mark.parametrize(
    "path",
    [
        "",
        "feature.",
        ".demo",
        "Demo",
        "feature.Demo",
        "my-section",
        "x.y",
        "feature.a.b",
        "_private",
        "feature.class",
        "feature.9lives",
        7,
    ],
)
def test_a_section_at_an_invalid_path_is_a_clear_error(fake_site: FakeSite, path: object) -> None:
    entry_points = fake_site.plugin("misplaced", section_plugin(path), "mirrord-misplaced")  # type: ignore[arg-type]
    with pytest.raises(PluginError) as caught:
        load_plugins(entry_points=entry_points, environ={})
    message = str(caught.value)
    assert "'misplaced' (mirrord-misplaced 1.0)" in message
    assert f"cannot register the config section {path!r}" in message
    assert "'feature.<name>' or '<name>'" in message


@pytest.mark.parametrize(
    "path", ["agent", "feature", "connect_tcp", "skip_processes", "feature.capture_error_trace"]
)
def test_a_section_at_a_core_key_is_a_clear_error(fake_site: FakeSite, path: str) -> None:
    entry_points = fake_site.plugin("squatter", section_plugin(path))
    with pytest.raises(PluginError) as caught:
        load_plugins(entry_points=entry_points, environ={})
    assert "squatter" in str(caught.value)
    assert repr(path) in str(caught.value)


@pytest.mark.parametrize("path", ["feature.demo", "demo"])
def test_valid_section_paths(fake_site: FakeSite, path: str) -> None:
    loaded = load_plugins(entry_points=fake_site.plugin("demo", section_plugin(path)), environ={})
    assert loaded.plugins[0].sections == (path,)
    assert loaded.layout.field_at(f"{path}.level") is not None


def test_cli_bad_section_exits_1_with_a_clean_message(fake_site: FakeSite, run_cli) -> None:
    source, expected = BAD_SECTIONS["no default"]
    fake_site.plugin("broken", source, "mirrord-broken", "0.4")
    for command in (["plugins"], ["schema"], ["run", "--help"]):
        result = run_cli(*command, env=fake_site.cli_env)
        assert result.returncode == 1, command
        assert expected in result.stderr
        no_traceback(result)


def test_load_plugins_default_environment_is_the_process_environment(
    fake_site: FakeSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_points = fake_site.plugin("demo", section_plugin("feature.demo"))
    monkeypatch.setenv("MIRRORD_DISABLE_PLUGINS", "demo")
    assert load_plugins(entry_points=entry_points).disabled == ("demo",)
