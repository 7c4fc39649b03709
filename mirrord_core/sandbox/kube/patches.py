"""Applying PATCH bodies the way the API server does, per ``Content-Type``.

- ``application/json-patch+json``: RFC 6902 operations (the ``jsonpatch`` library).
- ``application/merge-patch+json``: RFC 7386 (objects merge, ``null`` deletes, lists
  are replaced).
- ``application/strategic-merge-patch+json``: like a merge patch, except that the lists
  Kubernetes declares with a merge key (containers, ephemeral containers, env, ports,
  volumes, volume mounts) merge element by element on that key, and ``$patch: delete``
  in such an element removes it. This is what the official client sends for a dict body.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from .status import bad_request, unsupported_media_type

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

# List fields with a patch merge key, by field name (the pod spec's and the container's).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "tolerations": "key",
}


def apply_patch(content_type: str, original: dict[str, Any], patch: Any) -> dict[str, Any]:
    """The object after ``patch``; 400 for a malformed patch, 415 for an unknown type."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request("json patch must be a list of operations")
        try:
            return jsonpatch.apply_patch(original, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
            raise bad_request(f"the json patch could not be applied: {err}") from None
    if kind in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        if not isinstance(patch, dict):
            raise bad_request("a merge patch must be a JSON object")
        return _merge(original, patch, strategic=kind == STRATEGIC_MERGE_PATCH)
    raise unsupported_media_type(content_type)


def _merge(original: Any, patch: Any, *, strategic: bool) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if strategic and key.startswith("$"):
            continue  # directives ($patch, $setElementOrder/…) describe, they are not fields
        if value is None:
            result.pop(key, None)
        elif strategic and key in _MERGE_KEYS and isinstance(value, list):
            result[key] = _merge_list(result.get(key) or [], value, _MERGE_KEYS[key])
        else:
            result[key] = _merge(result.get(key), value, strategic=strategic)
    return result


def _merge_list(original: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    merged = copy.deepcopy(original)
    for element in patch:
        if not isinstance(element, dict) or merge_key not in element:
            raise bad_request(
                f"strategic merge patch: list element without its merge key {merge_key!r}"
            )
        index = next(
            (i for i, old in enumerate(merged) if old.get(merge_key) == element[merge_key]), None
        )
        if element.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append({k: v for k, v in element.items() if not k.startswith("$")})
        else:
            merged[index] = _merge(merged[index], element, strategic=True)
    return merged
