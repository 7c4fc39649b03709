"""Resolving the configuration: defaults < file < environment < flags.

The pipeline: parse the file, translate deprecated spellings, structure it (strictly,
collecting every problem), apply ``MIRRORD_*`` environment variables, then run flags,
then report. The result is a frozen config tree plus the warnings to show.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from mirrord_core.config import deprecations
from mirrord_core.config.converter import shared_converter
from mirrord_core.config.errors import ConfigError, ConfigValueError
from mirrord_core.config.file_formats import load_config_file
from mirrord_core.config.layout import ConfigLayout
from mirrord_core.config.overrides import (
    Override,
    environment_overrides,
    flag_overrides,
    override_value,
    set_path,
)
from mirrord_core.config.structuring import structure

CONFIG_FILE_ENV = "MIRRORD_CONFIG_FILE"


@attrs.frozen
class ResolvedConfig:
    """A resolved configuration: the config tree, where it came from, and its warnings."""

    config: Any
    layout: ConfigLayout
    file: str | None
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The resolved config with mirrord's key names and every default filled in."""
        return shared_converter().unstructure(self.config)


def _drop_nulls(value: Any) -> Any:
    # mirrord treats null exactly like an absent key.
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _key_paths(raw: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(raw, dict):
        for key, value in raw.items():
            path = f"{prefix}{key}"
            yield path
            yield from _key_paths(value, f"{path}.")


def resolve(
    layout: ConfigLayout,
    *,
    file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    table: Iterable[deprecations.Deprecation] = deprecations.DEPRECATIONS,
) -> ResolvedConfig:
    """Resolve the configuration; raises :class:`ConfigError` listing every problem.

    ``file`` defaults to ``MIRRORD_CONFIG_FILE``; ``flags`` maps run-flag destinations
    (``target``, ``steal`` …) to their parsed values.
    """
    environ = os.environ if environ is None else environ
    table = tuple(table)
    if file is None and environ.get(CONFIG_FILE_ENV):
        file = environ[CONFIG_FILE_ENV]
    file_label = str(file) if file is not None else None
    raw: dict[str, Any] = _drop_nulls(load_config_file(Path(file))) if file is not None else {}

    report = deprecations.Report(file=file_label)
    deprecations.apply_file(raw, report, table)
    # Every key given explicitly, with where its effective value came from.
    set_paths = dict.fromkeys(_key_paths(raw), file_label or "the config file")

    config, problems = structure(shared_converter(), layout, raw)
    problems = [*report.problems, *problems]
    report.problems.clear()

    overrides: list[Override] = []
    for entry in table:
        overrides.extend(entry.environment(environ, raw, report))
    overrides.extend(environment_overrides(layout, environ))
    overrides.extend(flag_overrides(layout, flags or {}))

    for override in overrides:
        if layout.field_at(override.path) is None:
            continue  # a legacy variable for a section whose plugin is not installed
        for entry in table:
            override = entry.translate_override(override, report)
        try:
            value = override_value(layout, override)
        except ConfigValueError as err:
            report.problem(override.path, str(err), override.source)
            continue
        set_paths[override.path] = override.source
        if config is not None:
            config = set_path(config, override.path, value)

    for entry in table:
        entry.check_set(set_paths, report)
    problems.extend(report.problems)
    if problems:
        raise ConfigError(problems, file=file_label)
    return ResolvedConfig(
        config=config, layout=layout, file=file_label, warnings=tuple(report.warnings)
    )
