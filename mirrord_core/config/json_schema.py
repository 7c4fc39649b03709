"""A JSON Schema (draft-07) of the configuration, generated from the attrs classes.

Editors use it for completion and validation; it includes every installed plugin's
sections and the deprecated spellings the compatibility table still accepts (marked
``"deprecated": true``).
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Iterable
from typing import Any

import attrs

from mirrord_core.config import deprecations
from mirrord_core.config.converter import shared_converter
from mirrord_core.config.fields import field_meta
from mirrord_core.config.layout import ConfigLayout
from mirrord_core.config.values import ConfigValue

DRAFT = "http://json-schema.org/draft-07/schema#"


def _type_schema(type_: Any) -> dict[str, Any]:
    if typing.get_origin(type_) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(type_) if arg is not type(None)]
        if len(members) == 1:
            return _type_schema(members[0])
    if type_ is bool:
        return {"type": "boolean"}
    if type_ is str:
        return {"type": "string"}
    if isinstance(type_, type) and issubclass(type_, ConfigValue):
        return type_.json_schema()
    if isinstance(type_, type) and issubclass(type_, enum.Enum):
        return {"type": "string", "enum": [member.value for member in type_]}
    if typing.get_origin(type_) is dict:
        return {"type": "object", "additionalProperties": {"type": "string"}}
    if isinstance(type_, type) and attrs.has(type_):
        return class_schema(type_)
    raise TypeError(f"no JSON schema for config type {type_!r}")


def _object_schema(cls: type) -> dict[str, Any]:
    converter = shared_converter()
    properties: dict[str, Any] = {}
    for attribute in attrs.fields(cls):
        meta = field_meta(attribute)
        schema = dict(_type_schema(attribute.type))
        schema = (
            {"anyOf": [schema, {"type": "null"}]}
            if "anyOf" not in schema
            else {"anyOf": [*schema["anyOf"], {"type": "null"}]}
        )
        schema["description"] = meta.doc
        if not (isinstance(attribute.type, type) and attrs.has(attribute.type)):
            default = attribute.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()
            schema["default"] = converter.unstructure(default)
        if meta.env:
            schema["description"] += f" Environment variable: {meta.env}."
        properties[attribute.name] = schema
    description = (cls.__doc__ or "").strip().splitlines()
    return {
        "type": "object",
        "description": description[0] if description else cls.__name__,
        "properties": properties,
        "additionalProperties": False,
    }


def class_schema(cls: type) -> dict[str, Any]:
    """The schema of a config class, with the short forms it accepts."""
    obj = _object_schema(cls)
    shorthand = getattr(cls, "shorthand_schema", None)
    if shorthand is None:
        return obj
    return {"anyOf": [obj, *shorthand()], "description": obj["description"]}


def _object_at(schema: dict[str, Any], path: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for part in path.split(".") if path else []:
        node = _as_object(node)
        node = node["properties"].get(part) if node else None
        if node is None:
            return None
    return node


def _as_object(node: dict[str, Any] | None) -> dict[str, Any] | None:
    if node is None:
        return None
    if node.get("type") == "object" and "properties" in node:
        return node
    for option in node.get("anyOf", ()):
        found = _as_object(option)
        if found is not None:
            return found
    return None


def _add_deprecated(schema: dict[str, Any], table: Iterable[deprecations.Deprecation]) -> None:
    for entry in table:
        if isinstance(entry, deprecations.RenamedKey):
            parent_path, _, old_key = entry.old.rpartition(".")
            parent = _as_object(_object_at(schema, parent_path))
            current = _object_at(schema, entry.new)
            if parent is None or current is None:
                continue
            old = _rename_properties(current, dict((b, a) for a, b in entry.inner))
            old["deprecated"] = True
            parent["properties"][old_key] = old
        elif isinstance(entry, deprecations.LegacyFsFilters):
            fs = _as_object(_object_at(schema, "feature.fs"))
            if fs is not None:
                for old, new in (("include", "read_only"), ("exclude", "local")):
                    legacy = dict(fs["properties"][new])
                    legacy["deprecated"] = True
                    legacy["description"] = f"Deprecated: use {new} (or read_write)."
                    fs["properties"][old] = legacy
        elif isinstance(entry, deprecations.LegacyValue):
            for path in entry.paths:
                node = _object_at(schema, path)
                if node is not None and entry.schema_values:
                    alternatives = [{"const": v, "deprecated": True} for v in entry.schema_values]
                    node.setdefault("anyOf", []).extend(alternatives)


def _rename_properties(node: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    import copy

    node = copy.deepcopy(node)
    obj = _as_object(node)
    if obj is not None:
        obj["properties"] = {renames.get(k, k): v for k, v in obj["properties"].items()}
    return node


def config_schema(
    layout: ConfigLayout, table: Iterable[deprecations.Deprecation] = deprecations.DEPRECATIONS
) -> dict[str, Any]:
    """The JSON Schema of the whole configuration for ``layout``."""
    schema = _object_schema(layout.root_cls)
    _add_deprecated(schema, table)
    return {"$schema": DRAFT, "title": "mirrord configuration", **schema}
