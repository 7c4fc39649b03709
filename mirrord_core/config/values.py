"""Value types used by config sections, each knowing how to parse itself.

A config value type implements the :class:`ConfigValue` protocol: ``structure`` (from a
file value), ``from_string`` (from an environment variable or a flag), ``unstructure`` (to
the resolved JSON) and ``json_schema``. The converter factory registers one hook for all of
them, so a plugin can add its own value type without touching the core.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from mirrord_core.config.errors import ConfigValueError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def describe(value: object) -> str:
    """Name a value's type the way a config author thinks of it (TOML/YAML/JSON words)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a table/object"
    return type(value).__name__


def parse_bool_text(text: str) -> bool:
    """Parse a boolean given as text (environment variables, flags)."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigValueError(f"expected true or false, got {text!r}")


def split_semicolons(text: str) -> list[str]:
    """Split mirrord's ``a;b;c`` list syntax, ignoring empty items and surrounding spaces."""
    return [part.strip() for part in text.split(";") if part.strip()]


class ConfigValue:
    """Base class of value types with their own parsing rules (see module docstring)."""

    @classmethod
    def structure(cls, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_string(cls, text: str) -> Any:
        return cls.structure(text)

    def unstructure(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def json_schema(cls) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


class UInt(ConfigValue, int):
    """An unsigned integer with an upper bound; booleans and strings are rejected."""

    maximum: ClassVar[int] = 2**64 - 1
    format_name: ClassVar[str] = "uint64"

    @classmethod
    def structure(cls, value: Any) -> UInt:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigValueError(
                f"expected an integer from 0 to {cls.maximum}, got {describe(value)}"
            )
        if not 0 <= value <= cls.maximum:
            raise ConfigValueError(
                f"{value} is out of range: expected an integer from 0 to {cls.maximum}"
            )
        return cls(value)

    @classmethod
    def from_string(cls, text: str) -> UInt:
        try:
            number = int(text.strip())
        except ValueError:
            raise ConfigValueError(
                f"expected an integer from 0 to {cls.maximum}, got {text!r}"
            ) from None
        return cls.structure(number)

    def unstructure(self) -> int:
        return int(self)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return {"type": "integer", "minimum": 0, "maximum": cls.maximum, "format": cls.format_name}


class UInt16(UInt):
    """An integer from 0 to 65535 (ports, seconds in mirrord's u16 fields)."""

    maximum = 65535
    format_name = "uint16"


class UInt64(UInt):
    """An integer from 0 to 2**64-1."""


class StringList(ConfigValue, tuple):
    """A list of strings that may also be written as a single string.

    From an environment variable or a flag, items are separated by ``;``.
    """

    split_file_strings: ClassVar[bool] = False

    @classmethod
    def check_item(cls, item: str) -> str:
        return item

    @classmethod
    def structure(cls, value: Any) -> StringList:
        if isinstance(value, str):
            items = split_semicolons(value) if cls.split_file_strings else [value]
        elif isinstance(value, list | tuple):
            items = []
            for index, item in enumerate(value):
                if not isinstance(item, str):
                    raise ConfigValueError(f"item {index}: expected a string, got {describe(item)}")
                items.append(item)
        else:
            raise ConfigValueError(f"expected a string or a list of strings, got {describe(value)}")
        checked = []
        for index, item in enumerate(items):
            try:
                checked.append(cls.check_item(item))
            except ConfigValueError as err:
                prefix = f"item {index}: " if len(items) > 1 else ""
                raise ConfigValueError(f"{prefix}{err}") from None
        return cls(checked)

    @classmethod
    def from_string(cls, text: str) -> StringList:
        return cls.structure(split_semicolons(text))

    def unstructure(self) -> list[str]:
        return list(self)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
            ]
        }


class SemicolonList(StringList):
    """A string list where a single string is itself a ``;``-separated list (env filters)."""

    split_file_strings = True


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a user regex, turning a syntax error into a :class:`ConfigValueError`."""
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ConfigValueError(f"invalid regular expression {pattern!r}: {err}") from None


class RegexList(StringList):
    """A list (or single string) of regular expressions, each checked to compile."""

    @classmethod
    def check_item(cls, item: str) -> str:
        compile_regex(item)
        return item


class Regex(ConfigValue, str):
    """One regular expression, checked to compile."""

    @classmethod
    def structure(cls, value: Any) -> Regex:
        if not isinstance(value, str):
            raise ConfigValueError(f"expected a regular expression string, got {describe(value)}")
        compile_regex(value)
        return cls(value)

    def unstructure(self) -> str:
        return str(self)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return {"type": "string", "format": "regex"}


class PortList(ConfigValue, tuple):
    """One port or a list of ports (uint16); ``;``-separated from the environment."""

    @classmethod
    def structure(cls, value: Any) -> PortList:
        items = value if isinstance(value, list | tuple) else [value]
        ports = []
        for index, item in enumerate(items):
            try:
                ports.append(UInt16.structure(item))
            except ConfigValueError as err:
                prefix = f"item {index}: " if isinstance(value, list | tuple) else ""
                raise ConfigValueError(f"{prefix}{err}") from None
        return cls(ports)

    @classmethod
    def from_string(cls, text: str) -> PortList:
        return cls(UInt16.from_string(part) for part in split_semicolons(text))

    def unstructure(self) -> list[int]:
        return [int(port) for port in self]

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        port = UInt16.json_schema()
        return {"anyOf": [port, {"type": "array", "items": port}]}


class PortMapping(ConfigValue, tuple):
    """``[[local, remote], …]`` pairs; each local and each remote port appears once."""

    @classmethod
    def structure(cls, value: Any) -> PortMapping:
        if not isinstance(value, list | tuple):
            raise ConfigValueError(
                f"expected a list of [local, remote] port pairs, got {describe(value)}"
            )
        pairs: list[tuple[int, int]] = []
        seen_local: dict[int, int] = {}
        seen_remote: dict[int, int] = {}
        for index, pair in enumerate(value):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ConfigValueError(
                    f"item {index}: expected a pair [local, remote], got {describe(pair)}"
                )
            try:
                local, remote = UInt16.structure(pair[0]), UInt16.structure(pair[1])
            except ConfigValueError as err:
                raise ConfigValueError(f"item {index}: {err}") from None
            if local in seen_local:
                raise ConfigValueError(
                    f"item {index}: local port {local} is already mapped by item "
                    f"{seen_local[local]}"
                )
            if remote in seen_remote:
                raise ConfigValueError(
                    f"item {index}: remote port {remote} is already mapped by item "
                    f"{seen_remote[remote]}"
                )
            seen_local[local], seen_remote[remote] = index, index
            pairs.append((int(local), int(remote)))
        return cls(pairs)

    @classmethod
    def from_string(cls, text: str) -> PortMapping:
        # "9333:80;8081:81" - the environment has no nested lists.
        pairs = []
        for part in split_semicolons(text):
            local, sep, remote = part.partition(":")
            if not sep:
                raise ConfigValueError(
                    f"expected LOCAL:REMOTE pairs separated by ';', got {part!r}"
                )
            pairs.append([UInt16.from_string(local), UInt16.from_string(remote)])
        return cls.structure(pairs)

    def unstructure(self) -> list[list[int]]:
        return [[local, remote] for local, remote in self]

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        port = UInt16.json_schema()
        return {
            "type": "array",
            "items": {"type": "array", "items": [port, port], "minItems": 2, "maxItems": 2},
        }


class ChoiceString(ConfigValue, str):
    """A string restricted to ``choices`` (subclasses set them)."""

    choices: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def structure(cls, value: Any) -> ChoiceString:
        if not isinstance(value, str) or value not in cls.choices:
            options = ", ".join(repr(choice) for choice in cls.choices)
            raise ConfigValueError(f"expected one of {options}, got {describe(value)}")
        return cls(value)

    def unstructure(self) -> str:
        return str(self)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return {"type": "string", "enum": list(cls.choices)}


class HostPort(ConfigValue, str):
    """``HOST:PORT`` with a port from 1 to 65535 (IPv6 hosts in brackets)."""

    @classmethod
    def structure(cls, value: Any) -> HostPort:
        if not isinstance(value, str):
            raise ConfigValueError(f"expected HOST:PORT, got {describe(value)}")
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigValueError(f"expected HOST:PORT with a port from 1 to 65535, got {value!r}")
        return cls(value)

    def unstructure(self) -> str:
        return str(self)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return {"type": "string", "pattern": r"^.+:[0-9]{1,5}$"}
