"""Assembling the config tree from the core's keys and the plugins' sections.

Plugins contribute sections at ``feature.<name>`` or at the top level (``target``); the
layout turns them into two generated attrs classes, ``FeatureConfig`` and ``LayerConfig``,
so that one cattrs pass structures the whole file and one JSON schema describes it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from mirrord_core.config.core_sections import AgentConfig, CoreFeature, CoreTopLevel
from mirrord_core.config.fields import FieldMeta, field_meta

FEATURE = "feature"
RESERVED_TOP_LEVEL = frozenset({"agent", FEATURE}) | {f.name for f in attrs.fields(CoreTopLevel)}
RESERVED_FEATURE = frozenset(f.name for f in attrs.fields(CoreFeature))


class LayoutError(Exception):
    """A plugin registered a section the layout cannot hold (bad path, clash, no defaults)."""


@attrs.frozen
class SectionSpec:
    """A config section contributed by a plugin."""

    path: str
    cls: type
    plugin: str


def _section_doc(cls: type) -> str:
    return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


def _section_field(cls: type) -> Any:
    return attrs.field(
        factory=cls, type=cls, metadata={"mirrord": FieldMeta(doc=_section_doc(cls))}
    )


def _copy_fields(base: type) -> dict[str, Any]:
    copied = {}
    for attribute in attrs.fields(base):
        copied[attribute.name] = attrs.field(
            default=attribute.default, metadata=attribute.metadata, type=attribute.type
        )
    return copied


def _make_class(name: str, base: type, sections: Mapping[str, type], doc: str) -> type:
    fields = _copy_fields(base)
    for key, cls in sections.items():
        fields[key] = _section_field(cls)
    made = attrs.make_class(name, fields, frozen=True, kw_only=True)
    made.__doc__ = doc
    return made


def resolve_types_deep(cls: type) -> None:
    """Resolve string annotations of a config class and of every class nested in it."""
    attrs.resolve_types(cls)
    for attribute in attrs.fields(cls):
        if isinstance(attribute.type, type) and attrs.has(attribute.type):
            resolve_types_deep(attribute.type)


def _check_section_class(spec: SectionSpec) -> None:
    if not attrs.has(spec.cls):
        raise LayoutError(f"{spec.plugin}: section {spec.path} is not an attrs class")
    try:
        resolve_types_deep(spec.cls)
    except NameError as err:
        raise LayoutError(f"{spec.plugin}: section {spec.path}: {err}") from None
    for attribute in attrs.fields(spec.cls):
        field_meta(attribute)
        if attribute.default is attrs.NOTHING:
            raise LayoutError(
                f"{spec.plugin}: {spec.path}.{attribute.name} has no default; every key of "
                "a section needs one so that an empty config file is valid"
            )


for _core_class in (AgentConfig, CoreFeature, CoreTopLevel):
    resolve_types_deep(_core_class)


class ConfigLayout:
    """The whole config tree for a set of plugin sections."""

    def __init__(self, sections: Mapping[str, SectionSpec] | None = None) -> None:
        self.sections: dict[str, SectionSpec] = dict(sections or {})
        feature_sections: dict[str, type] = {}
        top_sections: dict[str, type] = {}
        for path, spec in sorted(self.sections.items()):
            _check_section_class(spec)
            parts = path.split(".")
            if len(parts) == 2 and parts[0] == FEATURE and parts[1] not in RESERVED_FEATURE:
                feature_sections[parts[1]] = spec.cls
            elif len(parts) == 1 and parts[0] not in RESERVED_TOP_LEVEL:
                top_sections[parts[0]] = spec.cls
            else:
                raise LayoutError(
                    f"{spec.plugin}: cannot register section {path!r}; sections live at "
                    "'feature.<name>' or at a new top-level key"
                )
        self.feature_cls = _make_class(
            "FeatureConfig", CoreFeature, feature_sections, "Controls mirrord's features."
        )
        self.root_cls = _make_class(
            "LayerConfig",
            CoreTopLevel,
            {"agent": AgentConfig, FEATURE: self.feature_cls, **top_sections},
            "mirrord's configuration.",
        )

    def section_owner(self, path: str) -> str | None:
        """The plugin that contributed the section at ``path`` (``None`` for core keys)."""
        spec = self.sections.get(path)
        return spec.plugin if spec else None

    def iter_fields(self) -> Iterator[tuple[str, attrs.Attribute, FieldMeta]]:
        """Every key of the tree, sections included, as ``(dotted path, attribute, meta)``."""
        yield from _walk(self.root_cls, "")

    def leaf_fields(self) -> Iterator[tuple[str, attrs.Attribute, FieldMeta]]:
        """Every key that holds a value (not a section)."""
        for path, attribute, meta in self.iter_fields():
            if not (isinstance(attribute.type, type) and attrs.has(attribute.type)):
                yield path, attribute, meta

    def field_at(self, path: str) -> attrs.Attribute | None:
        """The attribute at a dotted path, or ``None``."""
        cls: Any = self.root_cls
        attribute = None
        for part in path.split("."):
            if not (isinstance(cls, type) and attrs.has(cls)):
                return None
            attribute = getattr(attrs.fields(cls), part, None)
            if attribute is None:
                return None
            cls = attribute.type
        return attribute

    def class_at(self, path: str) -> type | None:
        """The config class at a dotted path (``""`` is the root), or ``None``."""
        if not path:
            return self.root_cls
        attribute = self.field_at(path)
        if attribute is not None and isinstance(attribute.type, type) and attrs.has(attribute.type):
            return attribute.type
        return None


def _walk(cls: type, prefix: str) -> Iterator[tuple[str, attrs.Attribute, FieldMeta]]:
    for attribute in attrs.fields(cls):
        path = f"{prefix}{attribute.name}"
        yield path, attribute, field_meta(attribute)
        if isinstance(attribute.type, type) and attrs.has(attribute.type):
            yield from _walk(attribute.type, f"{path}.")
