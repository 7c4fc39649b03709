"""Turning failures of the Kubernetes API into one-line errors that say what to do.

The API server explains a refusal in the ``Status`` object of the response body
(``pods is forbidden: User "x" cannot list resource "pods" in API group "" in the
namespace "ns"``); connection failures come from urllib3 (plain requests) or from the
websocket library (port-forward), wrapped by the client into ``ApiException(status=0)``.
"""

from __future__ import annotations

import json
import re
import socket
import ssl

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from mirrord_core.user_errors import UserError

KUBECONFIG_HINT = "check your kubeconfig (KUBECONFIG / ~/.kube/config)"

# The API server's RBAC denial, as kube-apiserver's authorizer words it.
_RBAC_DENIAL = re.compile(
    r'cannot (?P<verb>[\w-]+) resource "(?P<resource>[^"]+)" in API group "(?P<group>[^"]*)"'
    r'(?: in the namespace "(?P<namespace>[^"]+)"| at the cluster scope)?'
)
# How the websocket library reports a refused upgrade: the HTTP status, then the body.
_HANDSHAKE_STATUS = re.compile(r"Handshake status (?P<status>\d{3})")


class KubeApiError(UserError):
    """The Kubernetes API refused or failed a request; the message says what to do."""


class KubeForbidden(KubeApiError):
    """The user's credentials lack an RBAC permission (or an admission policy refused)."""


class KubeUnauthorized(KubeApiError):
    """The API server did not accept the credentials at all."""


class KubeUnreachable(KubeApiError):
    """The API server cannot be reached."""


class KubeConfigError(KubeApiError):
    """No usable Kubernetes configuration (kubeconfig, in-cluster service account)."""


def status_message(err: ApiException) -> str:
    """The ``message`` of the API server's ``Status`` body, else the HTTP reason."""
    body = err.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        if isinstance(message, str) and message:
            return message
    return str(err.reason or f"HTTP {err.status}")


def forbidden_error(message: str) -> KubeForbidden:
    """The error for a 403 whose ``Status`` message is ``message``."""
    denial = _RBAC_DENIAL.search(message)
    if denial is None:
        # Not RBAC: an admission policy (PodSecurity, a webhook) refused the request.
        return KubeForbidden(
            f"the Kubernetes API server refused the request: {message}; "
            "ask your cluster admin to allow it"
        )
    verb, resource = denial["verb"], denial["resource"]
    where = f"in namespace {denial['namespace']}" if denial["namespace"] else "at the cluster scope"
    group = f", API group {denial['group']}" if denial["group"] else ""
    advice = "ask your cluster admin for a Role granting it"
    if denial["namespace"]:
        advice += ", or use a namespace you have access to (-n / target.namespace)"
    return KubeForbidden(
        f"mirrord needs permission to {verb} {resource} {where} "
        f"(RBAC: verb {verb}, resource {resource}{group}) — {advice}"
    )


def _causes(err: BaseException) -> list[BaseException]:
    """``err`` and what it wraps (urllib3's ``reason``, then ``__cause__``/``__context__``)."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        nested = getattr(current, "reason", None)
        current = (
            nested
            if isinstance(nested, BaseException)
            else (current.__cause__ or current.__context__)
        )
    return chain


def _socket_reason(err: BaseException) -> str:
    """The most specific description of why a connection failed."""
    chain = _causes(err)
    # The innermost OS error says it best ("Connection refused"); urllib3 classifies
    # refused connections as connect timeouts, so timeouts are only asked about after.
    for cause in reversed(chain):
        if isinstance(cause, socket.gaierror):
            return f"name not resolved ({cause.strerror})"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[0].lower() + cause.strerror[1:]
    if any(isinstance(c, TimeoutError | urllib3.exceptions.TimeoutError) for c in chain):
        return "connection timed out"
    text = str(err)
    # urllib3 prefixes its messages with the repr of its connection object.
    return text.split(": ", 1)[-1] if text.startswith(("<", "HTTP")) else text


def unreachable_error(server: str, err: BaseException) -> KubeUnreachable:
    """The error for a connection to ``server`` that failed with ``err``."""
    return KubeUnreachable(
        f"cannot reach the Kubernetes API server at {server}: {_socket_reason(err)}; "
        f"{KUBECONFIG_HINT}"
    )


def _tls_error(server: str, detail: str) -> KubeUnreachable:
    return KubeUnreachable(
        f"the TLS connection to the Kubernetes API server at {server} failed: {detail}; "
        "if the server uses a self-signed certificate, set accept_invalid_certificates = true"
    )


def normalize_api_error(err: BaseException) -> BaseException:
    """A refused websocket upgrade (port-forward) as the HTTP error it carries; other
    errors as they are. The client reports the upgrade as ``ApiException(status=0)``."""
    if not isinstance(err, ApiException) or err.status not in (0, None):
        return err
    reason = str(err.reason or "")
    found = _HANDSHAKE_STATUS.search(reason)
    if found is None:
        return err
    # websocket-client words it "Handshake status 403 Forbidden -+-+- {headers} -+-+- body".
    parts = reason.split(" -+-+- ")
    body = parts[-1] if len(parts) >= 3 else ""
    status_text = parts[0][found.end() :].strip()
    return ApiException(status=int(found["status"]), reason=status_text or None, body=body)


def translate_api_error(server: str, err: BaseException) -> KubeApiError | None:
    """A user-facing error for ``err`` when it is one a user can act on, else ``None``.

    Callers handle the statuses whose meaning depends on the request (404 above all)
    before asking here; what is left is about credentials, permissions and reachability.
    """
    err = normalize_api_error(err)
    if isinstance(err, urllib3.exceptions.SSLError | ssl.SSLError):
        return _tls_error(server, str(err))
    if isinstance(
        err, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError | socket.gaierror
    ):
        return unreachable_error(server, err)
    if not isinstance(err, ApiException):
        return None
    if err.status == 403:
        return forbidden_error(status_message(err))
    if err.status == 401:
        return KubeUnauthorized(
            f"the Kubernetes API server at {server} rejected the credentials "
            f"({status_message(err)}); log in again or {KUBECONFIG_HINT}"
        )
    if err.status == 0 or err.status is None:
        reason = str(err.reason or "")
        if reason.startswith("SSLError") or "CERTIFICATE_VERIFY_FAILED" in reason:
            return _tls_error(server, reason.splitlines()[-1])
        return KubeUnreachable(
            f"cannot reach the Kubernetes API server at {server}: {reason}; {KUBECONFIG_HINT}"
        )
    if err.status >= 500:
        return KubeApiError(
            f"the Kubernetes API server at {server} failed: {status_message(err)} "
            f"(HTTP {err.status}); try again, or ask your cluster admin"
        )
    return None
