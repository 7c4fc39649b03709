"""Loading plugins from the ``mirrord`` entry-point group, once and lazily.

A plugin that fails to import is reported and skipped (fatal with
``MIRRORD_STRICT_PLUGINS=1``); ``MIRRORD_DISABLE_PLUGINS=fs,network`` blocks plugins by
entry-point name; two distributions claiming one entry-point name is an error; a hook
implementation that matches no hook spec fails loudly.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pluggy

from mirrord_core import hookspecs
from mirrord_core.config import ConfigLayout, LayoutError, SectionSpec

ENTRY_POINT_GROUP = "mirrord"
STRICT_ENV = "MIRRORD_STRICT_PLUGINS"
DISABLE_ENV = "MIRRORD_DISABLE_PLUGINS"


class PluginError(Exception):
    """Plugins cannot be loaded as installed (a conflict, a bad hook, a strict failure)."""


@attrs.frozen
class PluginInfo:
    """A loaded plugin: its entry-point name, distribution, and what it contributes."""

    name: str
    distribution: str
    version: str
    sections: tuple[str, ...]
    hooks: tuple[str, ...]


@attrs.frozen
class PluginFailure:
    """A plugin that could not be imported, with the error it raised."""

    name: str
    distribution: str
    version: str
    error: str

    def __str__(self) -> str:
        return (
            f"plugin {self.name!r} from {self.distribution} {self.version} failed to load: "
            f"{self.error}"
        )


@attrs.frozen
class LoadedPlugins:
    """The plugin manager with everything known about what was (not) loaded."""

    manager: pluggy.PluginManager
    plugins: tuple[PluginInfo, ...]
    failures: tuple[PluginFailure, ...]
    disabled: tuple[str, ...]
    layout: ConfigLayout


def _distribution(entry_point: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = entry_point.dist
    if dist is None:  # pragma: no cover - entry points always come from a distribution
        return "unknown", "unknown"
    return dist.metadata["Name"], dist.version


def _select(entry_points: Iterable[importlib.metadata.EntryPoint]) -> list[Any]:
    by_name: dict[str, importlib.metadata.EntryPoint] = {}
    for entry_point in entry_points:
        known = by_name.get(entry_point.name)
        if known is not None:
            first, second = _distribution(known)[0], _distribution(entry_point)[0]
            if first != second:
                raise PluginError(
                    f"two distributions register the mirrord plugin {entry_point.name!r}: "
                    f"{first} and {second}; uninstall one of them"
                )
            continue
        by_name[entry_point.name] = entry_point
    return sorted(by_name.values(), key=lambda ep: ep.name)


def _collect_sections(
    manager: pluggy.PluginManager, names: Iterable[str]
) -> tuple[dict[str, SectionSpec], dict[str, tuple[str, ...]]]:
    sections: dict[str, SectionSpec] = {}
    per_plugin: dict[str, tuple[str, ...]] = {}
    for name in names:
        plugin = manager.get_plugin(name)
        impl = getattr(plugin, "register_config_sections", None)
        contributed = dict(impl() or {}) if impl is not None else {}
        for path, cls in contributed.items():
            if path in sections:
                raise PluginError(
                    f"plugins {sections[path].plugin!r} and {name!r} both register the "
                    f"config section {path}"
                )
            sections[path] = SectionSpec(path=path, cls=cls, plugin=name)
        per_plugin[name] = tuple(sorted(contributed))
    return sections, per_plugin


def load_plugins(
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    environ: Mapping[str, str] | None = None,
    warn: Any = None,
) -> LoadedPlugins:
    """Load the installed plugins (or ``entry_points``) into a fresh plugin manager."""
    environ = os.environ if environ is None else environ
    warn = warn or (lambda message: print(f"mirrord: warning: {message}", file=sys.stderr))
    strict = environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes"}
    disabled = {n.strip() for n in environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)

    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    failures: list[PluginFailure] = []
    skipped: list[str] = []
    meta: dict[str, tuple[str, str]] = {}
    for entry_point in _select(entry_points):
        distribution, version = _distribution(entry_point)
        if entry_point.name in disabled:
            skipped.append(entry_point.name)
            continue
        try:
            plugin = entry_point.load()
        except Exception as err:
            failure = PluginFailure(
                entry_point.name, distribution, version, f"{type(err).__name__}: {err}"
            )
            if strict:
                raise PluginError(f"{failure} ({STRICT_ENV}=1)") from err
            warn(f"{failure}; skipping it")
            failures.append(failure)
            continue
        manager.register(plugin, name=entry_point.name)
        meta[entry_point.name] = (distribution, version)

    try:
        manager.check_pending()
    except pluggy.PluginValidationError as err:
        raise PluginError(f"a mirrord plugin implements an unknown hook: {err}") from None

    sections, per_plugin = _collect_sections(manager, meta)
    try:
        layout = ConfigLayout(sections)
    except LayoutError as err:
        raise PluginError(str(err)) from None
    plugins = tuple(
        PluginInfo(
            name=name,
            distribution=meta[name][0],
            version=meta[name][1],
            sections=per_plugin[name],
            hooks=tuple(
                sorted(
                    caller.name
                    for caller in manager.get_hookcallers(manager.get_plugin(name)) or ()
                )
            ),
        )
        for name in meta
    )
    return LoadedPlugins(
        manager=manager,
        plugins=plugins,
        failures=tuple(failures),
        disabled=tuple(sorted(skipped)),
        layout=layout,
    )


_loaded: LoadedPlugins | None = None


def get_plugins() -> LoadedPlugins:
    """The installed plugins, loaded on first use and cached for the process."""
    global _loaded
    if _loaded is None:
        _loaded = load_plugins()
    return _loaded


def reset_plugins() -> None:
    """Forget the cached plugins (tests change the environment between loads)."""
    global _loaded
    _loaded = None


def apply_env_filters(
    manager: pluggy.PluginManager, config: Any, remote_env: Mapping[str, str]
) -> dict[str, str]:
    """Run the ``filter_env`` implementations as a chain and return the final environment."""
    env = dict(remote_env)
    # pluggy calls implementations last-registered first; a chain runs them in load order.
    for impl in reversed(manager.hook.filter_env.get_hookimpls()):
        result = impl.function(config=config, remote_env=env)
        if result is not None:
            env = dict(result)
    return env
