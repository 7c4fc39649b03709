"""Request bodies checked against the official client's own models, then as a cluster would.

``model_causes`` walks a JSON body along the client's generated models (their
``attribute_map`` and ``openapi_types``): unknown fields, wrong types and missing required
fields are reported with their full path (``spec.template.spec.containers[0].name``),
and the body must then deserialize with the model's ``from_dict``. The deliberate
strictness about unknown fields (a real server drops them with a warning unless
``fieldValidation=Strict``) catches a client that misspells a field, which on a real
cluster would silently not do what was meant.

The semantic checks require what a real API server requires of pods, jobs and ephemeral
containers (names, images, restart policies, immutability), with its messages.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any

import kubernetes.client.models as models
import pydantic

from .resources import Resource
from .status import Cause, invalid

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_LIST = re.compile(r"^List\[(.*)\]$")
_DICT = re.compile(r"^Dict\[str, (.*)\]$")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(kind: str) -> str:
    return {"str": "string", "int": "integer", "bool": "boolean", "float": "number"}.get(kind, kind)


def _primitive_ok(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "datetime":
        if not isinstance(value, str):
            return False
        try:
            datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return False
        return True
    if kind == "bytes":
        return isinstance(value, str)
    return True  # "object": anything (int-or-string, raw JSON)


def model_causes(data: Any, model: str, path: str = "") -> list[Cause]:
    """Every way ``data`` does not fit the client model ``model`` (e.g. ``"V1Job"``)."""
    if match := _LIST.match(model):
        if not isinstance(data, list):
            return [Cause(path, "FieldValueTypeInvalid", "Invalid value: must be a list")]
        causes = []
        for index, item in enumerate(data):
            causes += model_causes(item, match.group(1), f"{path}[{index}]")
        return causes
    if match := _DICT.match(model):
        if not isinstance(data, dict):
            return [Cause(path, "FieldValueTypeInvalid", "Invalid value: must be an object")]
        causes = []
        for key, item in data.items():
            causes += model_causes(item, match.group(1), f"{path}[{key}]")
        return causes
    klass = getattr(models, model, None)
    if klass is None:
        if not _primitive_ok(data, model):
            return [
                Cause(
                    path,
                    "FieldValueTypeInvalid",
                    f"Invalid value: {data!r}: must be of type {_type_name(model)}",
                )
            ]
        return []
    if not isinstance(data, dict):
        return [Cause(path, "FieldValueTypeInvalid", f"Invalid value: must be a {model[2:]}")]
    by_json = {json_key: name for name, json_key in klass.attribute_map.items()}
    causes = []
    for key, value in data.items():
        name = by_json.get(key)
        if name is None:
            causes.append(Cause(_join(path, key), "FieldValueNotSupported", "unknown field"))
        elif value is not None:
            causes += model_causes(value, klass.openapi_types[name], _join(path, key))
    for name, info in klass.model_fields.items():
        json_key = klass.attribute_map.get(name, name)
        if info.is_required() and data.get(json_key) is None:
            causes.append(Cause(_join(path, json_key), "FieldValueRequired", "Required value"))
    if not causes and not path:
        try:
            klass.from_dict(data)
        except (pydantic.ValidationError, ValueError, TypeError) as err:
            causes.append(Cause("", "FieldValueInvalid", str(err).splitlines()[0]))
    return causes


def check_body(resource: Resource, body: Any, name: str) -> None:
    """422 Invalid unless ``body`` fits the resource's client model."""
    if not isinstance(body, dict):
        raise invalid(resource, name, [Cause("", "FieldValueTypeInvalid", "must be an object")])
    if causes := model_causes(body, resource.model):
        raise invalid(resource, name, causes)


def check_stored(resource: Resource, obj: dict[str, Any]) -> None:
    """The emulator's own objects must fit the client's models (a bug otherwise)."""
    if resource.model and (causes := model_causes(obj, resource.model)):
        raise RuntimeError(
            f"emulator produced an invalid {resource.kind}: "
            + "; ".join(f"{c.field}: {c.message}" for c in causes)
        )


# semantic checks ------------------------------------------------------------------


def name_causes(name: Any, path: str, *, label: bool = False) -> list[Cause]:
    """A metadata name: a DNS subdomain (or label), as the server requires."""
    if not name:
        return [
            Cause(path, "FieldValueRequired", "Required value: name or generateName is required")
        ]
    pattern, limit, what = (
        (_DNS_LABEL, 63, "RFC 1123 label") if label else (_DNS_SUBDOMAIN, 253, "RFC 1123 subdomain")
    )
    if len(name) > limit or not pattern.match(name):
        return [
            Cause(
                path,
                "FieldValueInvalid",
                f'Invalid value: "{name}": a lowercase {what} must consist of lower case '
                "alphanumeric characters, '-' or '.', and must start and end with an "
                f"alphanumeric character (at most {limit} characters)",
            )
        ]
    return []


def container_causes(
    container: Mapping[str, Any], path: str, *, ephemeral: bool = False
) -> list[Cause]:
    """A container: a DNS-label name, an image, sane env, ports and pull policy."""
    causes = []
    name = container.get("name")
    if name is not None and not _DNS_LABEL.match(name):
        causes += name_causes(name, f"{path}.name", label=True)
    if not container.get("image"):
        causes.append(Cause(f"{path}.image", "FieldValueRequired", "Required value"))
    policy = container.get("imagePullPolicy")
    if policy is not None and policy not in _PULL_POLICIES:
        causes.append(
            Cause(
                f"{path}.imagePullPolicy",
                "FieldValueNotSupported",
                f'Unsupported value: "{policy}": supported values: '
                '"Always", "IfNotPresent", "Never"',
            )
        )
    for index, env in enumerate(container.get("env") or []):
        env_name = env.get("name") or ""
        if not _ENV_NAME.match(env_name):
            causes.append(
                Cause(
                    f"{path}.env[{index}].name",
                    "FieldValueInvalid",
                    f'Invalid value: "{env_name}": a valid environment variable name must '
                    "consist of alphabetic characters, digits, '_', '-', or '.'",
                )
            )
    for index, port in enumerate(container.get("ports") or []):
        if ephemeral:
            causes.append(
                Cause(
                    f"{path}.ports",
                    "FieldValueForbidden",
                    "Forbidden: cannot be set for an Ephemeral Container",
                )
            )
            break
        number = port.get("containerPort")
        if not isinstance(number, int) or not 0 < number < 65536:
            causes.append(
                Cause(
                    f"{path}.ports[{index}].containerPort",
                    "FieldValueInvalid",
                    f"Invalid value: {number}: must be between 1 and 65535, inclusive",
                )
            )
    if ephemeral:
        for field in ("lifecycle", "livenessProbe", "readinessProbe", "startupProbe", "resources"):
            if container.get(field):
                causes.append(
                    Cause(
                        f"{path}.{field}",
                        "FieldValueForbidden",
                        "Forbidden: cannot be set for an Ephemeral Container",
                    )
                )
    return causes


def pod_spec_causes(spec: Mapping[str, Any], path: str, *, job: bool = False) -> list[Cause]:
    """A pod spec: containers with unique names and images, a valid restart policy."""
    causes = []
    containers = spec.get("containers") or []
    if not containers:
        causes.append(Cause(f"{path}.containers", "FieldValueRequired", "Required value"))
    seen: set[str] = set()
    for index, container in enumerate(containers):
        causes += container_causes(container, f"{path}.containers[{index}]")
        if container.get("name") in seen:
            causes.append(
                Cause(
                    f"{path}.containers[{index}].name",
                    "FieldValueDuplicate",
                    f'Duplicate value: "{container.get("name")}"',
                )
            )
        seen.add(container.get("name"))
    policy = spec.get("restartPolicy")
    allowed = ("OnFailure", "Never") if job else ("Always", "OnFailure", "Never")
    if job and policy is None:
        causes.append(
            Cause(
                f"{path}.restartPolicy",
                "FieldValueRequired",
                'Required value: valid values: "OnFailure", "Never"',
            )
        )
    elif policy is not None and policy not in allowed:
        quoted = ", ".join(f'"{p}"' for p in allowed)
        causes.append(
            Cause(
                f"{path}.restartPolicy",
                "FieldValueNotSupported",
                f'Unsupported value: "{policy}": supported values: {quoted}',
            )
        )
    return causes


def job_causes(job: Mapping[str, Any]) -> list[Cause]:
    """A Job create body, as the batch API validates it."""
    meta = job.get("metadata") or {}
    causes = []
    if not meta.get("name") and not meta.get("generateName"):
        causes += name_causes(None, "metadata.name")
    elif meta.get("name"):
        # A Job's name becomes a label value of its pods, hence the label limit.
        causes += name_causes(meta["name"], "metadata.name", label=True)
    spec = job.get("spec") or {}
    template = spec.get("template")
    if not template:
        return [*causes, Cause("spec.template", "FieldValueRequired", "Required value")]
    causes += pod_spec_causes(template.get("spec") or {}, "spec.template.spec", job=True)
    for field in ("ttlSecondsAfterFinished", "backoffLimit", "activeDeadlineSeconds"):
        value = spec.get(field)
        if isinstance(value, int) and value < 0:
            causes.append(
                Cause(
                    f"spec.{field}",
                    "FieldValueInvalid",
                    f"Invalid value: {value}: must be greater than or equal to 0",
                )
            )
    if spec.get("selector") and not spec.get("manualSelector"):
        causes.append(
            Cause(
                "spec.selector",
                "FieldValueInvalid",
                "Invalid value: `selector` will be auto-generated",
            )
        )
    return causes


def ephemeral_update_causes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Cause]:
    """An update of ``pods/ephemeralcontainers``: only additions of valid containers."""
    path = "spec.ephemeralContainers"
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    causes = []
    for key in set(old_spec) | set(new_spec):
        if key != "ephemeralContainers" and old_spec.get(key) != new_spec.get(key):
            causes.append(
                Cause(
                    f"spec.{key}",
                    "FieldValueForbidden",
                    "Forbidden: pod updates may not change fields other than "
                    "`spec.ephemeralContainers`",
                )
            )
    before = {c["name"]: c for c in old_spec.get("ephemeralContainers") or []}
    after = new_spec.get("ephemeralContainers") or []
    after_names = [c.get("name") for c in after]
    for name, container in before.items():
        if name not in after_names:
            causes.append(
                Cause(
                    path,
                    "FieldValueForbidden",
                    f'Forbidden: existing ephemeral containers "{name}" may not be removed',
                )
            )
        elif after[after_names.index(name)] != container:
            causes.append(
                Cause(
                    path,
                    "FieldValueForbidden",
                    f'Forbidden: existing ephemeral containers "{name}" may not be changed',
                )
            )
    regular = {c.get("name") for c in old_spec.get("containers") or []}
    seen: set[str] = set()
    for index, container in enumerate(after):
        here = f"{path}[{index}]"
        name = container.get("name")
        if name in before:
            seen.add(name)
            continue
        causes += container_causes(container, here, ephemeral=True)
        if name in regular or name in seen:
            causes.append(
                Cause(f"{here}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"')
            )
        seen.add(name)
        target = container.get("targetContainerName")
        if target is not None and target not in regular:
            causes.append(
                Cause(f"{here}.targetContainerName", "FieldValueNotFound", f'Not found: "{target}"')
            )
    return causes
