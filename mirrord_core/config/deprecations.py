"""The compatibility table: every deprecated key, value and environment variable.

Each entry translates an old spelling into the current one before the config is
structured, with a warning that names where the old spelling was found; giving the old
and the new spelling together is an error. Unstable keys mirrord accepts are listed here
too, so that every "accepted, but…" rule lives in one table (``DEPRECATIONS``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from mirrord_core.config.errors import ConfigProblem
from mirrord_core.config.overrides import Override
from mirrord_core.config.values import parse_bool_text


@attrs.define
class Report:
    """Collects the warnings and problems found while applying the table."""

    file: str | None
    warnings: list[str] = attrs.field(factory=list)
    problems: list[ConfigProblem] = attrs.field(factory=list)

    def warn_file(self, path: str, message: str) -> None:
        where = f"{self.file}: " if self.file else ""
        self.warnings.append(f"{where}{path}: {message}")

    def warn_source(self, source: str, message: str) -> None:
        self.warnings.append(f"{source}: {message}")

    def problem(self, path: str, message: str, source: str | None = None) -> None:
        self.problems.append(ConfigProblem(path, message, source))


def _parent(raw: dict[str, Any], path: str) -> tuple[dict[str, Any] | None, str]:
    """The mapping holding the last key of ``path`` in ``raw`` (``None`` if absent)."""
    *heads, last = path.split(".")
    node: Any = raw
    for head in heads:
        node = node.get(head) if isinstance(node, dict) else None
        if node is None:
            return None, last
    return (node if isinstance(node, dict) else None), last


class Deprecation:
    """One row of the table; each kind overrides the steps it takes part in."""

    id: str

    def apply_file(self, raw: dict[str, Any], report: Report) -> None:
        """Translate old spellings in the parsed file, in place."""

    def environment(
        self, environ: Mapping[str, str], raw: dict[str, Any], report: Report
    ) -> list[Override]:
        """Overrides translated from legacy environment variables."""
        return []

    def translate_override(self, override: Override, report: Report) -> Override:
        """Translate an old value given through the environment or a flag."""
        return override

    def check_set(self, set_paths: Mapping[str, str], report: Report) -> None:
        """React to keys given explicitly: ``set_paths`` maps each to where it was given."""


@attrs.frozen
class RenamedKey(Deprecation):
    """``old`` is now called ``new``; ``inner`` renames keys inside it."""

    id: str
    old: str
    new: str
    inner: tuple[tuple[str, str], ...] = ()

    def apply_file(self, raw: dict[str, Any], report: Report) -> None:
        parent, old_key = _parent(raw, self.old)
        if parent is None or old_key not in parent:
            return
        new_parent_path, _, new_key = self.new.rpartition(".")
        if new_parent_path != self.old.rpartition(".")[0]:  # pragma: no cover - table bug
            raise ValueError("renames only move a key within its table")
        if new_key in parent:
            report.problem(
                self.old,
                f"both {self.old} (deprecated) and {self.new} are given; keep only {self.new}",
            )
            parent.pop(old_key)
            return
        value = parent.pop(old_key)
        if isinstance(value, dict):
            for old_inner, new_inner in self.inner:
                if old_inner in value:
                    if new_inner in value:
                        report.problem(
                            f"{self.old}.{old_inner}",
                            f"both {old_inner} and {new_inner} are given; keep only {new_inner}",
                        )
                    value[new_inner] = value.pop(old_inner)
        parent[new_key] = value
        renamed = "".join(f", {a} → {b}" for a, b in self.inner)
        report.warn_file(self.old, f"deprecated, use {self.new} instead{renamed}")


@attrs.frozen
class LegacyValue(Deprecation):
    """An old value at one of ``paths`` that now has another spelling."""

    id: str
    paths: tuple[str, ...]
    matches: Callable[[Any], bool]
    replace: Callable[[Any], Any]
    explain: str
    schema_values: tuple[Any, ...] = ()

    def apply_file(self, raw: dict[str, Any], report: Report) -> None:
        for path in self.paths:
            parent, key = _parent(raw, path)
            if parent is None or key not in parent or not self.matches(parent[key]):
                continue
            old = parent[key]
            parent[key] = self.replace(old)
            report.warn_file(path, f"{_show(old)} is deprecated, {self.explain}")

    def translate_override(self, override: Override, report: Report) -> Override:
        if (
            override.path in self.paths
            and override.text is not None
            and self.matches(override.text)
        ):
            report.warn_source(
                override.source,
                f"{override.path}: {override.text!r} is deprecated, {self.explain}",
            )
            return override.with_text(self.replace(override.text))
        return override


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return f"{value}".lower()
    return repr(value)


@attrs.frozen
class LegacyFsFilters(Deprecation):
    """mirrord ≤ 3.1x's ``feature.fs.include``/``exclude`` (and their env variables).

    ``include`` listed remote paths: read-write remotely in ``write`` mode, read-only
    otherwise; ``exclude`` listed paths that stay local.
    """

    id: str

    @staticmethod
    def _include_target(mode: Any) -> str:
        return "read_write" if mode == "write" else "read_only"

    def apply_file(self, raw: dict[str, Any], report: Report) -> None:
        parent, key = _parent(raw, "feature.fs")
        fs = parent.get(key) if parent else None
        if not isinstance(fs, dict):
            return
        moves = (("include", self._include_target(fs.get("mode", "read"))), ("exclude", "local"))
        for old, new in moves:
            if old not in fs:
                continue
            if new in fs:
                report.problem(
                    f"feature.fs.{old}",
                    f"both feature.fs.{old} (deprecated) and feature.fs.{new} are given; "
                    f"keep only feature.fs.{new}",
                )
                fs.pop(old)
                continue
            fs[new] = fs.pop(old)
            report.warn_file(f"feature.fs.{old}", f"deprecated, use feature.fs.{new} instead")

    def environment(
        self, environ: Mapping[str, str], raw: dict[str, Any], report: Report
    ) -> list[Override]:
        parent, key = _parent(raw, "feature.fs")
        fs = parent.get(key) if parent else None
        mode = environ.get("MIRRORD_FILE_MODE") or (
            fs.get("mode", "read")
            if isinstance(fs, dict)
            else fs
            if isinstance(fs, str)
            else "read"
        )
        result = []
        pairs = (
            ("MIRRORD_FILE_FILTER_INCLUDE", self._include_target(mode)),
            ("MIRRORD_FILE_FILTER_EXCLUDE", "local"),
        )
        for variable, new in pairs:
            if variable not in environ:
                continue
            source = f"environment variable {variable}"
            current = {
                "read_write": "MIRRORD_FILE_READ_WRITE_PATTERN",
                "read_only": "MIRRORD_FILE_READ_ONLY_PATTERN",
                "local": "MIRRORD_FILE_LOCAL_PATTERN",
            }[new]
            if current in environ:
                report.problem(
                    f"feature.fs.{new}",
                    f"both {variable} (deprecated) and {current} are set",
                    source,
                )
                continue
            report.warn_source(source, f"deprecated, set {current} (feature.fs.{new}) instead")
            result.append(Override(f"feature.fs.{new}", source, text=environ[variable]))
        return result


@attrs.frozen
class LegacyEnvVar(Deprecation):
    """Old environment variables whose combined value now sets ``path``."""

    id: str
    old_vars: tuple[str, ...]
    current_var: str
    path: str
    translate: Callable[[Mapping[str, str]], str | None]

    def environment(
        self, environ: Mapping[str, str], raw: dict[str, Any], report: Report
    ) -> list[Override]:
        given = [name for name in self.old_vars if name in environ]
        if not given:
            return []
        source = "environment variable " + " and ".join(given)
        if self.current_var in environ:
            report.problem(
                self.path,
                f"both {', '.join(given)} (deprecated) and {self.current_var} are set; "
                f"keep only {self.current_var}",
                source,
            )
            return []
        try:
            text = self.translate(environ)
        except ValueError as err:
            report.problem(self.path, str(err), source)
            return []
        report.warn_source(source, f"deprecated, set {self.current_var} ({self.path}) instead")
        return [] if text is None else [Override(self.path, source, text=text)]


@attrs.frozen
class UnstableKey(Deprecation):
    """A key mirrord accepts but marks unstable (or that has no effect here)."""

    id: str
    path: str
    explain: str

    def check_set(self, set_paths: Mapping[str, str], report: Report) -> None:
        if self.path in set_paths:
            report.warn_source(set_paths[self.path], f"{self.path}: {self.explain}")


def _fs_mode_from_ops(environ: Mapping[str, str]) -> str | None:
    """mirrord's truth table for MIRRORD_FILE_OPS / MIRRORD_FILE_RO_OPS."""

    def read(name: str) -> bool | None:
        if name not in environ:
            return None
        return parse_bool_text(environ[name])

    ops, ro_ops = read("MIRRORD_FILE_OPS"), read("MIRRORD_FILE_RO_OPS")
    if ops:
        return "write"
    if ro_ops:
        return "read"
    if ops is None and ro_ops is None:  # pragma: no cover - not called without either
        return None
    return "local"


def _pod_target_from_env(environ: Mapping[str, str]) -> str | None:
    pod = environ.get("MIRRORD_AGENT_IMPERSONATED_POD_NAME")
    container = environ.get("MIRRORD_IMPERSONATED_CONTAINER_NAME")
    if not pod:
        raise ValueError(
            "MIRRORD_IMPERSONATED_CONTAINER_NAME needs MIRRORD_AGENT_IMPERSONATED_POD_NAME"
        )
    return f"pod/{pod}/container/{container}" if container else f"pod/{pod}"


def _prefix_rename(old: str, new: str) -> Callable[[Any], Any]:
    return lambda value: new + value[len(old) :]


def _starts_with(prefix: str) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and value.startswith(prefix)


DEPRECATIONS: tuple[Deprecation, ...] = (
    LegacyEnvVar(
        id="env-file-ops",
        old_vars=("MIRRORD_FILE_OPS", "MIRRORD_FILE_RO_OPS"),
        current_var="MIRRORD_FILE_MODE",
        path="feature.fs.mode",
        translate=_fs_mode_from_ops,
    ),
    LegacyFsFilters(id="fs-include-exclude"),
    LegacyValue(
        id="fs-toggle",
        paths=("feature.fs",),
        matches=lambda value: isinstance(value, bool),
        replace=lambda value: "read" if value else "local",
        explain='use feature.fs = "read" for true or "local" for false',
    ),
    LegacyValue(
        id="fs-mode-disabled",
        paths=("feature.fs", "feature.fs.mode"),
        matches=lambda value: value == "disabled",
        replace=lambda value: "local",
        explain='use "local"',
        schema_values=("disabled",),
    ),
    LegacyValue(
        id="incoming-toggle",
        paths=("feature.network.incoming",),
        matches=lambda value: isinstance(value, bool),
        replace=lambda value: "mirror" if value else "off",
        explain='use feature.network.incoming = "mirror" for true or "off" for false',
    ),
    LegacyValue(
        id="target-podname",
        paths=("target", "target.path"),
        matches=_starts_with("podname/"),
        replace=_prefix_rename("podname/", "pod/"),
        explain="use the pod/ prefix",
    ),
    LegacyValue(
        id="target-containername",
        paths=("target", "target.path"),
        matches=_starts_with("containername/"),
        replace=_prefix_rename("containername/", "container/"),
        explain="use the container/ prefix",
    ),
    LegacyEnvVar(
        id="env-impersonated-pod",
        old_vars=("MIRRORD_AGENT_IMPERSONATED_POD_NAME", "MIRRORD_IMPERSONATED_CONTAINER_NAME"),
        current_var="MIRRORD_IMPERSONATED_TARGET",
        path="target.path",
        translate=_pod_target_from_env,
    ),
    LegacyEnvVar(
        id="env-impersonated-namespace",
        old_vars=("MIRRORD_AGENT_IMPERSONATED_POD_NAMESPACE",),
        current_var="MIRRORD_TARGET_NAMESPACE",
        path="target.namespace",
        translate=lambda environ: environ["MIRRORD_AGENT_IMPERSONATED_POD_NAMESPACE"],
    ),
    RenamedKey(
        id="http-header-filter",
        old="feature.network.incoming.http_header_filter",
        new="feature.network.incoming.http_filter",
        inner=(("filter", "header_filter"),),
    ),
    UnstableKey(
        id="unstable-agent-pause",
        path="agent.pause",
        explain="unstable: the target is frozen while mirrord runs, so incoming traffic "
        "must be stolen",
    ),
    UnstableKey(
        id="unstable-flush-connections",
        path="agent.flush_connections",
        explain="unstable: may change in a later version",
    ),
    UnstableKey(
        id="unstable-incoming-ignore-localhost",
        path="feature.network.incoming.ignore_localhost",
        explain="unstable: may change in a later version",
    ),
    UnstableKey(
        id="unstable-outgoing-ignore-localhost",
        path="feature.network.outgoing.ignore_localhost",
        explain="unstable: may change in a later version",
    ),
    UnstableKey(
        id="capture-error-trace",
        path="feature.capture_error_trace",
        explain="accepted for compatibility; mirrord for Python writes no crash trace",
    ),
)


def apply_file(
    raw: dict[str, Any], report: Report, table: Iterable[Deprecation] = DEPRECATIONS
) -> None:
    """Run every entry's file translation over ``raw`` (in place)."""
    for entry in table:
        entry.apply_file(raw, report)
