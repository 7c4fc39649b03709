"""Values that override the file: ``MIRRORD_*`` environment variables and run flags.

Each key declares its environment variable and flags in its metadata (see
:mod:`mirrord_core.config.fields`); this module turns the environment and parsed flags into
:class:`Override` objects, parses their text with the key's type, and writes them into a
structured config.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from mirrord_core.config.converter import _structure_enum
from mirrord_core.config.errors import ConfigValueError
from mirrord_core.config.fields import NO_CONST, Flag
from mirrord_core.config.layout import ConfigLayout
from mirrord_core.config.values import ConfigValue, parse_bool_text


@attrs.frozen
class Override:
    """A value for ``path`` from outside the file: text to parse, or an already typed value."""

    path: str
    source: str
    text: str | None = None
    value: Any = NO_CONST

    def with_text(self, text: str) -> Override:
        return attrs.evolve(self, text=text)


def parse_text(type_: Any, text: str) -> Any:
    """Parse the text form of a value of ``type_`` (as given in the environment or a flag)."""
    if typing.get_origin(type_) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(type_) if arg is not type(None)]
        if len(members) == 1:
            return parse_text(members[0], text)
    if type_ is bool:
        return parse_bool_text(text)
    if type_ is str:
        return text
    if isinstance(type_, type) and issubclass(type_, ConfigValue):
        return type_.from_string(text)
    if isinstance(type_, type) and issubclass(type_, enum.Enum):
        return _structure_enum(text.strip(), type_)
    raise ConfigValueError(f"this key cannot be set from text (type {type_!r})")


def environment_overrides(layout: ConfigLayout, environ: Mapping[str, str]) -> Iterator[Override]:
    """An override for every key whose environment variable is set."""
    for path, _attribute, meta in layout.leaf_fields():
        if meta.env and meta.env in environ:
            yield Override(path, f"environment variable {meta.env}", text=environ[meta.env])


def flag_table(layout: ConfigLayout) -> dict[str, tuple[Flag, list[str]]]:
    """Every run flag declared by a key, by destination name, with the paths it sets.

    One flag may set several keys (``--no-outgoing`` sets both ``tcp`` and ``udp``).
    """
    table: dict[str, tuple[Flag, list[str]]] = {}
    for path, _attribute, meta in layout.leaf_fields():
        for flag in meta.flags:
            if flag.dest in table:
                known, paths = table[flag.dest]
                if known.names != flag.names or known.const != flag.const:
                    raise ValueError(f"flag {flag.names} is declared twice differently")
                paths.append(path)
            else:
                table[flag.dest] = (flag, [path])
    return table


def flag_overrides(layout: ConfigLayout, given: Mapping[str, Any]) -> Iterator[Override]:
    """Overrides for the run flags that were given (``given``: destination → value)."""
    for dest, (flag, paths) in flag_table(layout).items():
        value = given.get(dest)
        if value is None or value is False:
            continue
        source = f"flag {max(flag.names, key=len)}"
        for path in paths:
            if flag.takes_argument:
                yield Override(path, source, text=str(value))
            else:
                yield Override(path, source, value=flag.const)


def override_value(layout: ConfigLayout, override: Override) -> Any:
    """The typed value of an override; raises :class:`ConfigValueError` for bad text."""
    if override.text is None:
        return override.value
    attribute = layout.field_at(override.path)
    if attribute is None:  # pragma: no cover - overrides come from the layout itself
        raise ConfigValueError("no such key")
    meta = attribute.metadata["mirrord"]
    if meta.env_parser is not None and override.source.startswith("environment"):
        return meta.env_parser(override.text)
    return parse_text(attribute.type, override.text)


def set_path(config: Any, path: str, value: Any) -> Any:
    """A copy of the frozen ``config`` with the key at ``path`` replaced."""
    head, _, rest = path.partition(".")
    if not rest:
        return attrs.evolve(config, **{head: value})
    return attrs.evolve(config, **{head: set_path(getattr(config, head), rest, value)})
