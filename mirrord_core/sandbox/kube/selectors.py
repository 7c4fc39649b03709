"""``labelSelector`` and ``fieldSelector`` query parameters, parsed and matched.

Label selectors take the full syntax (``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``,
``a notin (x)``, ``a``, ``!a``). Field selectors take ``=``, ``==`` and ``!=`` on the
fields each resource supports (as a real API server, anything else is a 400 "field label
not supported").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .status import bad_request

_KEY = re.compile(
    r"^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?/)?[a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?$"
)
_VALUE = re.compile(r"^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?)?$")


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        # "!=" and "notin" also match objects without the label, as in Kubernetes.
        return not present or value not in self.values


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _check_key(key: str, text: str) -> str:
    if not _KEY.match(key):
        raise bad_request(f'unable to parse requirement: invalid label key "{key}" in "{text}"')
    return key


def _check_value(value: str, text: str) -> str:
    if not _VALUE.match(value) or len(value) > 63:
        raise bad_request(f'unable to parse requirement: invalid label value "{value}" in "{text}"')
    return value


def _parse_requirement(part: str, text: str) -> _Requirement:
    part = part.strip()
    if match := re.match(r"^(\S+)\s+(in|notin)\s*\((.*)\)$", part):
        key, op, raw = match.groups()
        values = frozenset(_check_value(v.strip(), text) for v in raw.split(",") if v.strip())
        return _Requirement(_check_key(key, text), op, values)
    for op, name in (("!=", "!="), ("==", "="), ("=", "=")):
        if op in part:
            key, _, value = part.partition(op)
            return _Requirement(
                _check_key(key.strip(), text), name, frozenset({_check_value(value.strip(), text)})
            )
    if part.startswith("!"):
        return _Requirement(_check_key(part[1:].strip(), text), "!exists", frozenset())
    return _Requirement(_check_key(part, text), "exists", frozenset())


@dataclass(frozen=True)
class LabelSelector:
    """A parsed ``labelSelector``; the empty selector matches everything."""

    requirements: tuple[_Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        """Parse the query parameter; 400 BadRequest if it is malformed."""
        if not text or not text.strip():
            return cls()
        parts = _split_top_level(text)
        if any(not p.strip() for p in parts):
            raise bad_request(f'unable to parse requirement: found empty requirement in "{text}"')
        return cls(tuple(_parse_requirement(p, text) for p in parts))

    @classmethod
    def from_match_labels(cls, labels: Mapping[str, str]) -> LabelSelector:
        """The selector of a ``matchLabels`` map."""
        return cls(tuple(_Requirement(k, "=", frozenset({v})) for k, v in labels.items()))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether an object with ``labels`` is selected."""
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


FieldGetter = Callable[[dict[str, Any]], str]


def _path(*keys: str) -> FieldGetter:
    def get(obj: dict[str, Any]) -> str:
        value: Any = obj
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return "" if value is None else str(value)

    return get


COMMON_FIELDS: dict[str, FieldGetter] = {
    "metadata.name": _path("metadata", "name"),
    "metadata.namespace": _path("metadata", "namespace"),
}
POD_FIELDS: dict[str, FieldGetter] = {
    **COMMON_FIELDS,
    "spec.nodeName": _path("spec", "nodeName"),
    "spec.restartPolicy": _path("spec", "restartPolicy"),
    "spec.schedulerName": _path("spec", "schedulerName"),
    "spec.serviceAccountName": _path("spec", "serviceAccountName"),
    "spec.hostNetwork": lambda obj: str(bool(obj.get("spec", {}).get("hostNetwork"))).lower(),
    "status.phase": _path("status", "phase"),
    "status.podIP": _path("status", "podIP"),
    "status.nominatedNodeName": _path("status", "nominatedNodeName"),
}
JOB_FIELDS: dict[str, FieldGetter] = {
    **COMMON_FIELDS,
    "status.successful": _path("status", "succeeded"),
}
EVENT_FIELDS: dict[str, FieldGetter] = {
    **COMMON_FIELDS,
    "involvedObject.kind": _path("involvedObject", "kind"),
    "involvedObject.name": _path("involvedObject", "name"),
    "involvedObject.namespace": _path("involvedObject", "namespace"),
    "involvedObject.uid": _path("involvedObject", "uid"),
    "reason": _path("reason"),
    "type": _path("type"),
}


def _field_term(part: str, text: str) -> tuple[str, bool, str]:
    """(field, equal?, value) of one ``field=value`` / ``field!=value`` term."""
    for op, equal in (("!=", False), ("==", True), ("=", True)):
        if op in part:
            name, _, value = part.partition(op)
            return name.strip(), equal, value.strip()
    raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")


@dataclass(frozen=True)
class FieldSelector:
    """A parsed ``fieldSelector`` over the fields a resource supports."""

    terms: tuple[tuple[FieldGetter, bool, str], ...] = ()

    @classmethod
    def parse(cls, text: str | None, fields: Mapping[str, FieldGetter]) -> FieldSelector:
        """Parse the query parameter; 400 BadRequest for unknown fields or bad syntax."""
        if not text or not text.strip():
            return cls()
        terms = []
        for part in text.split(","):
            name, equal, value = _field_term(part, text)
            if name not in fields:
                raise bad_request(f"field label not supported: {name}")
            terms.append((fields[name], equal, value))
        return cls(tuple(terms))

    def matches(self, obj: dict[str, Any]) -> bool:
        """Whether ``obj`` is selected."""
        return all((get(obj) == value) == equal for get, equal, value in self.terms)
