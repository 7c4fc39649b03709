"""Loading plugins from the ``mirrord`` entry-point group, once and lazily.

A plugin that fails to import is reported and skipped (fatal with
``MIRRORD_STRICT_PLUGINS=1``); ``MIRRORD_DISABLE_PLUGINS=fs,network`` blocks plugins by
entry-point name; two distributions claiming one entry-point name is an error; a hook
implementation that matches no hook spec fails loudly.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import keyword
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pluggy

from mirrord_core import hookspecs
from mirrord_core.config import ConfigLayout, LayoutError, SectionSpec, field_meta
from mirrord_core.config.json_schema import class_schema
from mirrord_core.config.layout import resolve_types_deep
from mirrord_core.user_errors import UserError

ENTRY_POINT_GROUP = "mirrord"
STRICT_ENV = "MIRRORD_STRICT_PLUGINS"
DISABLE_ENV = "MIRRORD_DISABLE_PLUGINS"


class PluginError(UserError):
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


#: A section path: ``feature.<name>`` or ``<name>``, names in lower-case snake_case.
_SECTION_PATH = re.compile(r"(feature\.)?([a-z][a-z0-9_]*)")
_DISABLE_HINT = f"(to run without it: {DISABLE_ENV}=%s)"


def _label(name: str, meta: Mapping[str, tuple[str, str]]) -> str:
    distribution, version = meta.get(name, ("unknown", "unknown"))
    return f"{name!r} ({distribution} {version})"


def _check_fields(cls: type, path: str) -> str | None:
    """Why the attrs class ``cls`` cannot be a config section (``None`` when it can)."""
    for attribute in attrs.fields(cls):
        key = f"{path}.{attribute.name}"
        try:
            field_meta(attribute)
        except TypeError:
            return f"{key} is not declared with mirrord_core.config.setting()"
        if attribute.default is attrs.NOTHING:
            return (
                f"{key} has no default; every key of a section needs one so that an empty "
                "config file is valid"
            )
        if isinstance(attribute.type, type) and attrs.has(attribute.type):
            problem = _check_fields(attribute.type, key)
            if problem is not None:
                return problem
    return None


def _section_problem(path: Any, cls: Any) -> str | None:
    """Why ``path: cls`` cannot be registered as a config section (``None`` when it can)."""
    match = _SECTION_PATH.fullmatch(path) if isinstance(path, str) else None
    if match is None or keyword.iskeyword(match.group(2)):
        return (
            f"cannot register the config section {path!r}: a section path is "
            "'feature.<name>' or '<name>', names in lower-case snake_case"
        )
    if not (isinstance(cls, type) and attrs.has(cls)):
        return f"section {path} is {cls!r}, not an attrs class"
    try:
        resolve_types_deep(cls)
        problem = _check_fields(cls, path)
        if problem is None:
            class_schema(cls)
    except (NameError, TypeError) as err:
        return f"section {path}: {err}"
    return problem


def _collect_sections(
    manager: pluggy.PluginManager, meta: Mapping[str, tuple[str, str]]
) -> tuple[dict[str, SectionSpec], dict[str, tuple[str, ...]]]:
    sections: dict[str, SectionSpec] = {}
    per_plugin: dict[str, tuple[str, ...]] = dict.fromkeys(meta, ())
    impls = {i.plugin_name: i for i in manager.hook.register_config_sections.get_hookimpls()}
    for name in meta:
        impl = impls.get(name)
        if impl is None:
            continue
        label = _label(name, meta)
        hint = _DISABLE_HINT % name
        try:
            contributed = impl.function()
        except Exception as err:
            raise PluginError(
                f"plugin {label}: register_config_sections failed: "
                f"{type(err).__name__}: {err} {hint}"
            ) from err
        if contributed is None:
            contributed = {}
        if not isinstance(contributed, Mapping):
            raise PluginError(
                f"plugin {label}: register_config_sections must return a mapping of "
                f"section path to attrs class, not {type(contributed).__name__} {hint}"
            )
        for path, cls in contributed.items():
            problem = _section_problem(path, cls)
            if problem is not None:
                raise PluginError(f"plugin {label}: {problem} {hint}")
            if path in sections:
                other = sections[path].plugin
                raise PluginError(
                    f"plugins {_label(other, meta)} and {label} both register the config "
                    f"section {path}; uninstall or disable one of them "
                    f"({DISABLE_ENV}={name})"
                )
            sections[path] = SectionSpec(path=path, cls=cls, plugin=name)
        per_plugin[name] = tuple(sorted(contributed))
    return sections, per_plugin


def _check_hooks(manager: pluggy.PluginManager, meta: Mapping[str, tuple[str, str]]) -> None:
    """Fail loudly for a hook implementation that matches no hook spec."""
    known = sorted(
        name for name, caller in vars(manager.hook).items() if getattr(caller, "spec", None)
    )
    for name in meta:
        plugin = manager.get_plugin(name)
        for caller in manager.get_hookcallers(plugin) or ():
            if caller.spec is not None:
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin_name == name and not impl.optionalhook:
                    close = difflib.get_close_matches(caller.name, known, n=1)
                    suggestion = f"; did you mean {close[0]}?" if close else ""
                    raise PluginError(
                        f"plugin {_label(name, meta)} implements {caller.name!r}, which is "
                        f"not a mirrord hook{suggestion} (mirrord hooks: {', '.join(known)}) "
                        f"{_DISABLE_HINT % name}"
                    )
    try:  # anything the per-plugin check above did not catch
        manager.check_pending()
    except pluggy.PluginValidationError as err:
        raise PluginError(f"a mirrord plugin implements an unknown hook: {err}") from None


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
    selected = _select(entry_points)
    for entry_point in selected:
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
        meta[entry_point.name] = (distribution, version)
        try:
            manager.register(plugin, name=entry_point.name)
        except (pluggy.PluginValidationError, ValueError) as err:
            # A hook implementation whose arguments the spec does not have, or one module
            # registered under two entry-point names.
            raise PluginError(
                f"plugin {_label(entry_point.name, meta)} cannot be registered: {err} "
                f"{_DISABLE_HINT % entry_point.name}"
            ) from None

    unknown = sorted(disabled - {entry_point.name for entry_point in selected})
    if unknown:
        warn(
            f"{DISABLE_ENV} names {', '.join(unknown)}, but no installed plugin has that "
            f"name (installed: {', '.join(ep.name for ep in selected) or 'none'})"
        )
    _check_hooks(manager, meta)
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
    # pluggy would call implementations last-registered first; the chain runs them in load
    # (plugin name) order instead, ``tryfirst`` ones first and ``trylast`` ones last.
    impls = manager.hook.filter_env.get_hookimpls()
    ordered = sorted(impls, key=lambda impl: 0 if impl.tryfirst else 2 if impl.trylast else 1)
    for impl in ordered:
        # Like pluggy, pass only the arguments the implementation names.
        arguments = {"config": config, "remote_env": env}
        result = impl.function(*(arguments[name] for name in impl.argnames))
        if result is not None:
            env = dict(result)
    return env
