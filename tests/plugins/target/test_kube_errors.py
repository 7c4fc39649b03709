"""Kubernetes API failures become one-line errors that say what to do: RBAC denials name
the verb and resource, unreachable servers the URL and the reason (from a real refused
connection), TLS failures point at accept_invalid_certificates."""

from __future__ import annotations

import json
import socket

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from mirrord_target.local.kube_errors import (
    KubeForbidden,
    KubeUnauthorized,
    KubeUnreachable,
    status_message,
    translate_api_error,
)

SERVER = "https://10.0.0.1:6443"


def _status(code: int, message: str) -> ApiException:
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": "Forbidden",
            "code": code,
        }
    )
    return ApiException(status=code, reason="Forbidden", body=body)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            'pods is forbidden: User "dev" cannot list resource "pods" in API group "" in the '
            'namespace "payments"',
            "mirrord needs permission to list pods in namespace payments (RBAC: verb list, "
            "resource pods)",
        ),
        (
            'jobs.batch is forbidden: User "system:serviceaccount:ci:runner" cannot create '
            'resource "jobs" in API group "batch" in the namespace "default"',
            "mirrord needs permission to create jobs in namespace default (RBAC: verb create, "
            "resource jobs, API group batch)",
        ),
        (
            'pods "web-1" is forbidden: User "dev" cannot create resource "pods/portforward" in '
            'API group "" in the namespace "shop"',
            "to create pods/portforward in namespace shop (RBAC: verb create, resource "
            "pods/portforward)",
        ),
        (
            'namespaces is forbidden: User "dev" cannot list resource "namespaces" in API group '
            '"" at the cluster scope',
            "to list namespaces at the cluster scope (RBAC: verb list, resource namespaces)",
        ),
    ],
)
def test_rbac_denials_name_verb_resource_and_namespace(message: str, expected: str) -> None:
    error = translate_api_error(SERVER, _status(403, message))
    assert isinstance(error, KubeForbidden)
    text = str(error)
    assert expected in text
    assert "ask your cluster admin" in text
    assert "\n" not in text


def test_namespaced_denial_suggests_another_namespace_cluster_scope_does_not() -> None:
    namespaced = translate_api_error(
        SERVER,
        _status(
            403,
            'pods is forbidden: User "u" cannot get resource "pods" in API group "" '
            'in the namespace "x"',
        ),
    )
    cluster = translate_api_error(
        SERVER,
        _status(
            403,
            'nodes is forbidden: User "u" cannot get resource "nodes" in API group "" '
            "at the cluster scope",
        ),
    )
    assert "-n / target.namespace" in str(namespaced)
    assert "-n / target.namespace" not in str(cluster)


def test_admission_refusal_is_reported_with_the_servers_words() -> None:
    message = (
        'pods "mirrord-agent-x" is forbidden: violates PodSecurity "restricted:latest": '
        'privileged (container "mirrord-agent" must not set securityContext.privileged=true)'
    )
    error = translate_api_error(SERVER, _status(403, message))
    assert isinstance(error, KubeForbidden)
    assert "violates PodSecurity" in str(error)
    assert "RBAC" not in str(error)


def test_unauthorized_says_to_log_in_again() -> None:
    error = translate_api_error(SERVER, _status(401, "Unauthorized"))
    assert isinstance(error, KubeUnauthorized)
    assert SERVER in str(error) and "kubeconfig" in str(error)


def test_refused_connection_names_server_and_reason() -> None:
    # A real refused connection: a loopback port nobody listens on.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = f"http://127.0.0.1:{port}"
    with pytest.raises(urllib3.exceptions.HTTPError) as caught:
        urllib3.PoolManager(retries=0).request("GET", f"{server}/api")
    error = translate_api_error(server, caught.value)
    assert isinstance(error, KubeUnreachable)
    assert str(error) == (
        f"cannot reach the Kubernetes API server at {server}: connection refused; "
        "check your kubeconfig (KUBECONFIG / ~/.kube/config)"
    )


def test_tls_failure_points_at_accept_invalid_certificates() -> None:
    err = ApiException(
        status=0,
        reason="SSLError\n[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
        "self-signed certificate",
    )
    error = translate_api_error(SERVER, err)
    assert isinstance(error, KubeUnreachable)
    assert "accept_invalid_certificates" in str(error)
    assert "self-signed certificate" in str(error)


def test_refused_websocket_upgrade_maps_like_the_http_status_it_carries() -> None:
    body = json.dumps(
        {
            "kind": "Status",
            "message": 'pods "web" is forbidden: User "u" cannot create resource '
            '"pods/portforward" in API group "" in the namespace "shop"',
            "code": 403,
        }
    )
    reason = (
        f"Handshake status 403 Forbidden -+-+- {{'content-type': 'application/json'}} -+-+- {body}"
    )
    error = translate_api_error(SERVER, ApiException(status=0, reason=reason))
    assert isinstance(error, KubeForbidden)
    assert "create pods/portforward in namespace shop" in str(error)


def test_request_specific_statuses_are_left_to_the_caller() -> None:
    assert translate_api_error(SERVER, _status(404, 'pods "x" not found')) is None
    assert translate_api_error(SERVER, _status(409, "already exists")) is None
    assert translate_api_error(SERVER, ValueError("not an API failure")) is None


def test_status_message_falls_back_to_the_reason() -> None:
    assert status_message(ApiException(status=500, reason="Internal Server Error")) == (
        "Internal Server Error"
    )
    assert status_message(ApiException(status=500, reason="x", body="not json")) == "x"
