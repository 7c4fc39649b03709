"""The user documentation cannot drift from the code.

``docs/configuration.md`` must document every config key (with its default, environment
variable and flags as declared in the field metadata), every ``MIRRORD_*`` variable the
config layer reads (legacy ones included) and every ``mirrord run`` flag;
``docs/deprecations.md`` must document every entry of the deprecation table. Only the
first-party plugins' sections are checked: a third-party plugin (such as the test plugin
``mirrord-hello``) documents itself.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from mirrord_core.cli.main import build_parser
from mirrord_core.config import CONFIG_FILE_ENV, ConfigLayout, FieldMeta, deprecations
from mirrord_core.config.converter import make_converter
from mirrord_core.config.overrides import flag_table
from mirrord_core.config.plugin_catalogue import FIRST_PARTY_SECTIONS
from mirrord_core.plugin_manager import DISABLE_ENV, STRICT_ENV, LoadedPlugins, get_plugins

DOCS = Path(__file__).resolve().parents[2] / "docs"
CONFIGURATION = DOCS / "configuration.md"
DEPRECATIONS = DOCS / "deprecations.md"

Field = tuple[str, attrs.Attribute, FieldMeta]
NONE = "\N{EN DASH}"  # what the key tables show for "no variable" / "no flag"


@pytest.fixture
def loaded() -> LoadedPlugins:
    loaded = get_plugins()
    installed = {plugin.distribution for plugin in loaded.plugins}
    missing = set(FIRST_PARTY_SECTIONS.values()) - installed
    assert not missing, f"first-party plugins not installed, the docs cannot be checked: {missing}"
    return loaded


def _third_party_sections(loaded: LoadedPlugins) -> list[str]:
    first_party = {
        plugin.name
        for plugin in loaded.plugins
        if plugin.distribution in set(FIRST_PARTY_SECTIONS.values())
    }
    return [path for path, spec in loaded.layout.sections.items() if spec.plugin not in first_party]


def _documented_fields(loaded: LoadedPlugins, leaves_only: bool = False) -> list[Field]:
    """Every key of the core and of the first-party plugins, as ``(path, attribute, meta)``."""
    skipped = _third_party_sections(loaded)
    layout: ConfigLayout = loaded.layout
    fields = layout.leaf_fields() if leaves_only else layout.iter_fields()
    return [
        field
        for field in fields
        if not any(field[0] == s or field[0].startswith(f"{s}.") for s in skipped)
    ]


def _section(text: str, heading: str) -> str:
    """The body of the Markdown section ``heading`` (up to the next heading of its level)."""
    level = heading.split(" ", 1)[0]
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise AssertionError(f"missing section {heading!r}") from None
    body: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("#") and line.split(" ", 1)[0] == level:
            break
        body.append(line)
    return "\n".join(body)


def _cells(row: str) -> list[str]:
    """The cells of a Markdown table row (``\\|`` inside a cell is not a separator)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def _rows(text: str, first_cell: str) -> list[list[str]]:
    return [
        _cells(line)
        for line in text.splitlines()
        if line.startswith("|") and _cells(line) and _cells(line)[0] == first_cell
    ]


def _code_spans(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


def _default_json(attribute: attrs.Attribute) -> str:
    default = attribute.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    return json.dumps(make_converter().unstructure(default))


def _current_variables(loaded: LoadedPlugins) -> set[str]:
    return {meta.env for _, _, meta in _documented_fields(loaded) if meta.env}


def _legacy_variables(loaded: LoadedPlugins) -> set[str]:
    """Every old environment variable the deprecation table reads (not the current ones)."""
    names: set[str] = set()
    for entry in deprecations.DEPRECATIONS:
        names.update(getattr(entry, "old_vars", ()))
    # Entries that read variables in code (LegacyFsFilters) name them as string literals.
    names.update(re.findall(r"\"(MIRRORD_[A-Z0-9_]+)\"", inspect.getsource(deprecations)))
    return names - _current_variables(loaded)


# -- config keys ---------------------------------------------------------------------------


def test_every_config_key_is_documented(loaded: LoadedPlugins) -> None:
    text = CONFIGURATION.read_text()
    fields = _documented_fields(loaded)
    assert len(fields) > 30  # the seed's keys, not an empty layout
    missing = [path for path, _, _ in fields if f"`{path}`" not in text]
    assert not missing, f"config keys missing from docs/configuration.md: {missing}"


def test_every_key_row_matches_its_metadata(loaded: LoadedPlugins) -> None:
    """Each leaf key has one table row whose default, variable and flags are the code's."""
    keys = _section(CONFIGURATION.read_text(), "## Keys")
    wrong: list[str] = []
    for path, attribute, meta in _documented_fields(loaded, leaves_only=True):
        rows = _rows(keys, f"`{path}`")
        if len(rows) != 1:
            wrong.append(f"{path}: {len(rows)} rows in the key tables, expected 1")
            continue
        _key, _type, default, env, flags, doc = rows[0]
        if default != f"`{_default_json(attribute)}`":
            wrong.append(f"{path}: default {default}, code has {_default_json(attribute)}")
        expected_env = f"`{meta.env}`" if meta.env else NONE
        if env != expected_env:
            wrong.append(f"{path}: environment {env}, code has {expected_env}")
        expected_flags = {name for flag in meta.flags for name in flag.names}
        if _code_spans(flags) != expected_flags:
            wrong.append(f"{path}: flags {flags}, code has {sorted(expected_flags)}")
        if not doc:
            wrong.append(f"{path}: no meaning given")
    assert not wrong, "docs/configuration.md key tables disagree with the code:\n" + "\n".join(
        wrong
    )


def test_documented_keys_exist(loaded: LoadedPlugins) -> None:
    """No row documents a key that the code does not have (a renamed or removed key)."""
    keys = _section(CONFIGURATION.read_text(), "## Keys")
    known = {path for path, _, _ in _documented_fields(loaded)}
    documented = [
        _cells(line)[0].strip("`")
        for line in keys.splitlines()
        if line.startswith("| `") and _cells(line)
    ]
    assert documented
    stale = [path for path in documented if path not in known]
    assert not stale, f"docs/configuration.md documents keys the code does not have: {stale}"


# -- environment variables -----------------------------------------------------------------


def test_every_environment_variable_is_documented(loaded: LoadedPlugins) -> None:
    """The variable table maps every field's variable to its key."""
    table = _section(CONFIGURATION.read_text(), "## Environment variables")
    wrong: list[str] = []
    for path, _, meta in _documented_fields(loaded, leaves_only=True):
        if not meta.env:
            continue
        rows = _rows(table, f"`{meta.env}`")
        if len(rows) != 1 or rows[0][1] != f"`{path}`" or not rows[0][2]:
            wrong.append(f"{meta.env} → {path}: rows {rows}")
    assert not wrong, "environment variable table disagrees with the code:\n" + "\n".join(wrong)


def test_documented_environment_variables_exist(loaded: LoadedPlugins) -> None:
    text = CONFIGURATION.read_text()
    known = (
        _current_variables(loaded)
        | _legacy_variables(loaded)
        | {CONFIG_FILE_ENV, DISABLE_ENV, STRICT_ENV}
    )
    documented = set(re.findall(r"`(MIRRORD_[A-Z0-9_]+)", text))
    stale = sorted(documented - known)
    assert not stale, f"docs/configuration.md names variables the code does not read: {stale}"


def test_every_legacy_environment_variable_is_documented(loaded: LoadedPlugins) -> None:
    legacy = _legacy_variables(loaded)
    # The scan finds variables read in code as well as those declared in the table.
    assert {"MIRRORD_FILE_OPS", "MIRRORD_FILE_FILTER_INCLUDE"} <= legacy
    table = _section(CONFIGURATION.read_text(), "### Legacy variables")
    missing = sorted(name for name in legacy if not _rows(table, f"`{name}`"))
    assert not missing, f"legacy variables missing from docs/configuration.md: {missing}"


def test_plugin_and_file_variables_are_documented() -> None:
    table = _section(CONFIGURATION.read_text(), "### Other variables")
    missing = [
        name for name in (CONFIG_FILE_ENV, DISABLE_ENV, STRICT_ENV) if not _rows(table, f"`{name}`")
    ]
    assert not missing


# -- run flags -----------------------------------------------------------------------------


def _run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["run"]
    raise AssertionError("mirrord has no run command")


def test_every_run_flag_is_documented(loaded: LoadedPlugins) -> None:
    """Every flag a first-party key declares, and every core option of ``mirrord run``."""
    section = _section(CONFIGURATION.read_text(), "## `mirrord run` flags")
    declared = {
        name: (flag, [])
        for path, _, meta in _documented_fields(loaded, leaves_only=True)
        for flag in meta.flags
        for name in flag.names
    }
    for path, _, meta in _documented_fields(loaded, leaves_only=True):
        for flag in meta.flags:
            for name in flag.names:
                declared[name][1].append(path)
    plugin_dests = set(flag_table(loaded.layout))
    core_options = {
        name
        for action in _run_parser()._actions
        if action.dest not in plugin_dests and action.dest != "help"
        for name in action.option_strings
    }
    assert {"-f", "--config-file", "--dry-run"} <= core_options

    wrong: list[str] = []
    for name in sorted(core_options | set(declared)):
        rows = [
            line
            for line in section.splitlines()
            if line.startswith("|") and re.search(rf"`{re.escape(name)}[` ]", _cells(line)[0])
        ]
        if len(rows) != 1:
            wrong.append(f"{name}: {len(rows)} rows in the flags table, expected 1")
            continue
        for path in declared.get(name, (None, []))[1]:
            if f"`{path}`" not in _cells(rows[0])[1]:
                wrong.append(f"{name}: row does not say it sets {path}")
    assert not wrong, "docs/configuration.md flags table disagrees with the code:\n" + "\n".join(
        wrong
    )


def test_documented_run_flags_exist(loaded: LoadedPlugins) -> None:
    section = _section(CONFIGURATION.read_text(), "## `mirrord run` flags")
    accepted = {name for action in _run_parser()._actions for name in action.option_strings}
    documented = {
        token.split(" ")[0]
        for line in section.splitlines()
        if line.startswith("| `")
        for token in _code_spans(_cells(line)[0])
    }
    assert documented
    stale = sorted(documented - accepted)
    assert not stale, f"documented flags that mirrord run does not accept: {stale}"


# -- deprecations --------------------------------------------------------------------------


def _deprecation_ids() -> list[str]:
    return [entry.id for entry in deprecations.DEPRECATIONS]


def test_deprecation_ids_are_unique() -> None:
    ids = _deprecation_ids()
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("entry_id", _deprecation_ids())
def test_every_deprecation_is_documented(entry_id: str) -> None:
    text = DEPRECATIONS.read_text()
    assert _rows(text, f"`{entry_id}`"), f"{entry_id}: no row in the table of deprecations.md"
    body = _section(text, f"### `{entry_id}`")
    assert len(body.split()) >= 10, f"{entry_id}: its section in deprecations.md is empty"


def test_documented_deprecations_exist() -> None:
    text = DEPRECATIONS.read_text()
    documented = re.findall(r"^### `([^`]+)`$", text, flags=re.MULTILINE)
    assert sorted(documented) == sorted(_deprecation_ids())


def test_deprecated_spellings_are_named_in_their_sections() -> None:
    """Each entry's section names the old spelling the code translates."""
    text = DEPRECATIONS.read_text()
    missing: list[str] = []
    for entry in deprecations.DEPRECATIONS:
        body = _section(text, f"### `{entry.id}`")
        names = [
            *getattr(entry, "old_vars", ()),
            *([entry.old] if hasattr(entry, "old") else []),
            *([entry.path] if isinstance(entry, deprecations.UnstableKey) else []),
            *getattr(entry, "paths", ())[:1],
        ]
        missing.extend(f"{entry.id}: {name}" for name in names if name not in body)
    assert not missing, missing


# -- links ---------------------------------------------------------------------------------


def _links(path: Path) -> Iterator[str]:
    yield from re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", path.read_text())


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_links_between_docs_resolve(page: str) -> None:
    broken = [link for link in _links(DOCS / page) if not (DOCS / link).is_file()]
    assert not broken
