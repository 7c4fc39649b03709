"""Failures as a real API server reports them: an HTTP status with a ``Status`` object.

The official client turns these into ``ApiException(status=…, reason=…)`` whose ``body``
is this JSON, so a caller can read ``reason`` (NotFound, Forbidden, Invalid, …) and show
``message`` exactly as it would from a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .resources import Resource


@dataclass(frozen=True)
class Cause:
    """One reason a request body is invalid (``StatusCause``)."""

    field: str
    reason: str
    message: str

    def as_json(self) -> dict[str, str]:
        """The cause as it appears in ``details.causes``."""
        return {"reason": self.reason, "message": self.message, "field": self.field}


@dataclass
class ApiError(Exception):
    """A request failed; the server answers ``code`` with a ``Status`` body."""

    code: int
    reason: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """The ``Status`` object sent as the response body."""
        return status_body(self.code, self.reason, self.message, self.details)


def status_body(
    code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A ``v1.Status`` (``status: Failure`` unless ``code`` is 2xx)."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if 200 <= code < 300 else "Failure",
        "message": message,
        "reason": reason,
        "details": dict(details or {}),
        "code": code,
    }
    if not message:
        del body["message"]
    if not reason:
        del body["reason"]
    return body


def _details(resource: Resource, name: str | None) -> dict[str, str]:
    details = {"kind": resource.plural.split("/")[0]}
    if name:
        details["name"] = name
    if resource.group:
        details["group"] = resource.group
    return details


def not_found(resource: Resource, name: str) -> ApiError:
    """``pods "x" not found`` (404 NotFound)."""
    return ApiError(
        404, "NotFound", f'{resource.qualified} "{name}" not found', _details(resource, name)
    )


def already_exists(resource: Resource, name: str) -> ApiError:
    """``jobs.batch "x" already exists`` (409 AlreadyExists)."""
    return ApiError(
        409,
        "AlreadyExists",
        f'{resource.qualified} "{name}" already exists',
        _details(resource, name),
    )


def forbidden(
    user: str, verb: str, resource: Resource, namespace: str | None, name: str | None = None
) -> ApiError:
    """What RBAC answers, naming the verb, the resource and the API group that are missing."""
    subject = f'{resource.plural.split("/")[0]} "{name}"' if name else resource.plural
    scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    message = (
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource.plural}" '
        f'in API group "{resource.group}"{scope}'
    )
    details = {"kind": resource.plural.split("/")[0], "group": resource.group}
    if name:
        details["name"] = name
    return ApiError(403, "Forbidden", message, details)


def invalid(resource: Resource, name: str, causes: Sequence[Cause]) -> ApiError:
    """``Job.batch "x" is invalid: field: message`` (422 Invalid)."""
    qualified = f"{resource.kind}.{resource.group}" if resource.group else resource.kind
    parts = [f"{c.field}: {c.message}" if c.field else c.message for c in causes]
    listed = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details: dict[str, Any] = {
        "name": name,
        "kind": resource.kind,
        "causes": [c.as_json() for c in causes],
    }
    if resource.group:
        details["group"] = resource.group
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {listed}', details)


def bad_request(message: str) -> ApiError:
    """A malformed request (400 BadRequest)."""
    return ApiError(400, "BadRequest", message)


def unsupported_media_type(content_type: str) -> ApiError:
    """A body in a format the endpoint does not take (415)."""
    return ApiError(
        415,
        "UnsupportedMediaType",
        f'the body of the request was in an unknown format: "{content_type}"',
    )


def method_not_allowed(method: str) -> ApiError:
    """A verb the resource does not support (405)."""
    return ApiError(
        405,
        "MethodNotAllowed",
        f"the server does not allow this method on the requested resource ({method})",
    )


def no_such_route() -> ApiError:
    """A path the server does not serve (404, as for an API group it does not have)."""
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def unauthorized() -> ApiError:
    """No or a wrong bearer token (401)."""
    return ApiError(401, "Unauthorized", "Unauthorized")
