"""Structuring a raw config mapping and translating cattrs' errors into key paths."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from mirrord_core.config.errors import ConfigProblem, ConfigValueError
from mirrord_core.config.layout import ConfigLayout
from mirrord_core.config.plugin_catalogue import distribution_for_section


def _join(prefix: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{prefix}[{name}]"
    return f"{prefix}.{name}" if prefix else name


def _note_step(exc: BaseException) -> str | int | None:
    for note in getattr(exc, "__notes__", ()):
        name = getattr(note, "name", None)
        if name is not None:
            return name
        index = getattr(note, "index", None)
        if index is not None:
            return index
    return None


def _key_text(key: object) -> str:
    """A key as the config author wrote it (YAML allows keys like ``1``, ``null``, ``true``)."""
    return key if isinstance(key, str) else json.dumps(key, default=str)


def _suggest(unknown: str, known: Iterable[str]) -> str:
    matches = difflib.get_close_matches(unknown, list(known), n=1, cutoff=0.6)
    if not matches:
        squashed = {k.replace("_", ""): k for k in known}
        if unknown.replace("_", "").lower() in squashed:
            matches = [squashed[unknown.replace("_", "").lower()]]
    return f"; did you mean {matches[0]}?" if matches else ""


def _extra_key_problems(
    layout: ConfigLayout, prefix: str, extra: Iterable[str]
) -> Iterator[ConfigProblem]:
    cls = layout.class_at(prefix)
    known = {a.name for a in attrs.fields(cls)} if cls is not None else set()
    for key in sorted(map(_key_text, extra)):
        path = _join(prefix, key)
        distribution = distribution_for_section(path)
        if distribution is not None:
            yield ConfigProblem(
                path,
                f"this section needs the {distribution} plugin, which is not installed "
                f"or disabled: pip install {distribution}",
            )
        else:
            yield ConfigProblem(path, f"unknown key{_suggest(key, known)}")


def translate_errors(
    exc: BaseException, layout: ConfigLayout, prefix: str = ""
) -> Iterator[ConfigProblem]:
    """Turn a (nested) cattrs error into problems named by config key paths."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            step = _note_step(sub)
            path = prefix if step is None else _join(prefix, step)
            yield from translate_errors(sub, layout, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        yield from _extra_key_problems(layout, prefix, exc.extra_fields)
    elif isinstance(exc, ConfigValueError):
        yield ConfigProblem(prefix, str(exc))
    elif isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from translate_errors(sub, layout, prefix)
    else:
        yield ConfigProblem(prefix, f"invalid value ({exc})")


def structure(
    converter: cattrs.Converter,
    layout: ConfigLayout,
    raw: dict[str, Any],
) -> tuple[Any, list[ConfigProblem]]:
    """Structure ``raw`` into the root config class; returns ``(config or None, problems)``."""
    try:
        return converter.structure(raw, layout.root_cls), []
    except Exception as exc:
        return None, list(translate_errors(exc, layout))
