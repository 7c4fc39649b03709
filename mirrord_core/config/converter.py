"""The one converter factory: strict cattrs structuring for every config class.

cattrs' defaults are lenient (``bool("no")`` is ``True``, ``str(5)`` is ``"5"``); a config
file with a wrong type must be an error instead, so every primitive gets a strict hook.
Unions that mirrord writes as "string or object" or "``true``/``false`` or object" are
handled by one explicit hook per class: a config class that accepts other forms defines
``from_shorthand(value) -> Mapping``, which receives every value given for the section and
returns its object form (a mapping passes through unchanged, or is rewritten), raising
:class:`ConfigValueError` for a value it does not accept; ``shorthand_schema()`` describes
the accepted short forms for the JSON schema.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from mirrord_core.config.errors import ConfigValueError
from mirrord_core.config.values import ConfigValue, describe


def _structure_bool(value: Any, _type: type) -> bool:
    if not isinstance(value, bool):
        raise ConfigValueError(f"expected true or false, got {describe(value)}")
    return value


def _structure_str(value: Any, _type: type) -> str:
    if not isinstance(value, str):
        raise ConfigValueError(f"expected a string, got {describe(value)}")
    return value


def _structure_enum(value: Any, enum_type: type[enum.Enum]) -> enum.Enum:
    choices = ", ".join(repr(member.value) for member in enum_type)
    if not isinstance(value, str):
        raise ConfigValueError(f"expected one of {choices}, got {describe(value)}")
    try:
        return enum_type(value)
    except ValueError:
        raise ConfigValueError(f"expected one of {choices}, got {value!r}") from None


def _is_str_map(type_: Any) -> bool:
    return typing.get_origin(type_) in (dict, Mapping) and typing.get_args(type_) == (str, str)


def _structure_str_map(value: Any, _type: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigValueError(f"expected a table of string values, got {describe(value)}")
    result = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ConfigValueError(f"key {key!r}: expected a string key")
        if not isinstance(item, str):
            raise ConfigValueError(f"{key}: expected a string, got {describe(item)}")
        result[key] = item
    return result


def _is_enum(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, enum.Enum)


_shared: cattrs.Converter | None = None


def shared_converter() -> cattrs.Converter:
    """One converter for the process: cattrs compiles a structuring function per class on
    first use, so reusing the converter makes every later resolve cheap."""
    global _shared
    if _shared is None:
        _shared = make_converter()
    return _shared


def make_converter() -> cattrs.Converter:
    """Build the converter used for structuring and unstructuring every config class."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook_func(_is_enum, _structure_enum)
    converter.register_structure_hook_func(_is_str_map, _structure_str_map)
    # singledispatch on the base class: ConfigValue comes first in each value type's MRO, so
    # it wins over the int/str/tuple hooks cattrs would otherwise pick.
    converter.register_structure_hook(ConfigValue, lambda v, t: t.structure(v))

    def attrs_hook_factory(cls: type) -> Any:
        base = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)
        shorthand = getattr(cls, "from_shorthand", None)

        def structure_section(value: Any, _type: type) -> Any:
            if shorthand is not None:
                value = shorthand(value)
            if not isinstance(value, Mapping):
                raise ConfigValueError(f"expected a table/object, got {describe(value)}")
            return base(value, cls)

        return structure_section

    converter.register_structure_hook_factory(attrs.has, attrs_hook_factory)

    converter.register_unstructure_hook(ConfigValue, lambda v: v.unstructure())
    converter.register_unstructure_hook_func(_is_enum, lambda v: v.value)
    return converter
