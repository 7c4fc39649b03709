"""The ``target`` section: what mirrord runs in the context of."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from mirrord_core.config import ConfigValue, ConfigValueError, Flag, describe, setting

# Kubernetes object names (DNS-1123 subdomains) and container names (DNS-1123 labels).
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_CONTAINER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

TARGET_FORMS = (
    "pod/NAME[/container/CONTAINER]",
    "deployment/NAME[/container/CONTAINER]",
    "container/CONTAINER",
    "pid/PID",
)
_KIND_ALIASES = {"pod": "pod", "deployment": "deployment", "deploy": "deployment"}


def _bad(text: str, why: str) -> ConfigValueError:
    return ConfigValueError(
        f"invalid target {text!r}: {why}; valid forms: {', '.join(TARGET_FORMS)}"
    )


class TargetPath(ConfigValue, str):
    """A target in its canonical string form (``pod/web/container/app``, ``pid/42`` …).

    Parsed from a string or from mirrord's object form ``{pod = "web", container = "app"}``
    / ``{deployment = "api"}``; ``deploy/`` is accepted as ``deployment/``.
    """

    kinds: ClassVar[tuple[str, ...]] = ("pod", "deployment", "container", "pid")

    @property
    def kind(self) -> str:
        """``pod``, ``deployment``, ``container`` or ``pid``."""
        return self.split("/")[0]

    @property
    def name(self) -> str:
        """The pod or deployment name, the container name, or the PID as text."""
        return self.split("/")[1]

    @property
    def container(self) -> str | None:
        """The container chosen inside a pod or deployment, if any."""
        parts = self.split("/")
        if parts[0] == "container":
            return parts[1]
        return parts[3] if len(parts) == 4 else None

    @classmethod
    def parse(cls, text: str) -> TargetPath:
        parts = text.strip().split("/")
        head = parts[0]
        if head in _KIND_ALIASES:
            kind = _KIND_ALIASES[head]
            if len(parts) not in (2, 4) or (len(parts) == 4 and parts[2] != "container"):
                raise _bad(text, f"expected {kind}/NAME or {kind}/NAME/container/CONTAINER")
            name = parts[1]
            if not _OBJECT_NAME.match(name):
                raise _bad(text, f"{name!r} is not a valid Kubernetes {kind} name")
            if len(parts) == 4:
                if not _CONTAINER_NAME.match(parts[3]):
                    raise _bad(text, f"{parts[3]!r} is not a valid container name")
                return cls(f"{kind}/{name}/container/{parts[3]}")
            return cls(f"{kind}/{name}")
        if head == "container":
            if len(parts) != 2 or not _CONTAINER_NAME.match(parts[1]):
                raise _bad(text, "expected container/CONTAINER with a valid container name")
            return cls(f"container/{parts[1]}")
        if head == "pid":
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) <= 0:
                raise _bad(text, "expected pid/PID with a positive process id")
            return cls(f"pid/{int(parts[1])}")
        raise _bad(text, f"unknown target kind {head!r}")

    @classmethod
    def structure(cls, value: Any) -> TargetPath:
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, Mapping):
            return cls._from_object(value)
        raise ConfigValueError(f"expected a target string or table, got {describe(value)}")

    @classmethod
    def _from_object(cls, value: Mapping[str, Any]) -> TargetPath:
        kinds = [key for key in ("pod", "deployment") if key in value]
        unknown = sorted(set(value) - {"pod", "deployment", "container"})
        if len(kinds) != 1 or unknown:
            raise ConfigValueError(
                "expected {pod = NAME} or {deployment = NAME}, optionally with container; "
                f"got keys {sorted(value)}"
            )
        name, container = value[kinds[0]], value.get("container")
        if not isinstance(name, str) or (container is not None and not isinstance(container, str)):
            raise ConfigValueError("target names must be strings")
        suffix = f"/container/{container}" if container else ""
        return cls.parse(f"{kinds[0]}/{name}{suffix}")

    def unstructure(self) -> str:
        return str(self)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        name = {"type": "string"}
        return {
            "anyOf": [
                {
                    "type": "string",
                    "pattern": r"^(pod|podname|deployment|deploy|container|containername|pid)/.+$",
                },
                {
                    "type": "object",
                    "properties": {"pod": name, "container": {"type": ["string", "null"]}},
                    "required": ["pod"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {"deployment": name, "container": {"type": ["string", "null"]}},
                    "required": ["deployment"],
                    "additionalProperties": False,
                },
            ]
        }


@attrs.frozen(kw_only=True)
class TargetConfig:
    """Specifies the target to run in the context of: a pod, deployment, container or PID."""

    path: TargetPath | None = setting(
        default=None,
        env="MIRRORD_IMPERSONATED_TARGET",
        flags=(
            Flag(
                names=("-t", "--target"),
                help="target: " + ", ".join(TARGET_FORMS),
            ),
        ),
        doc="The target: " + ", ".join(TARGET_FORMS) + ".",
    )
    namespace: str | None = setting(
        default=None,
        env="MIRRORD_TARGET_NAMESPACE",
        flags=(Flag(names=("-n", "--target-namespace"), help="namespace of the target"),),
        doc="Namespace of the target; defaults to the kubeconfig context's namespace.",
    )

    @classmethod
    def from_shorthand(cls, value: Any) -> Mapping[str, Any]:
        """``target = "pod/x"`` and ``target = {pod = "x"}`` are ``target = {path = …}``."""
        if isinstance(value, str):
            return {"path": value}
        if isinstance(value, Mapping):
            if "pod" in value or "deployment" in value:
                return {"path": value}
            return value
        raise ConfigValueError(f"expected a target string or a table, got {describe(value)}")

    @classmethod
    def shorthand_schema(cls) -> list[dict[str, Any]]:
        return TargetPath.json_schema()["anyOf"]
