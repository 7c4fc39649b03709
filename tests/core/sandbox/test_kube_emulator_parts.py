"""The emulated Kubernetes API's parts that need no sandbox: selectors, patches, body
validation against the client's models, container command lines and security wrappers,
access policy and error messages."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from mirrord_core.sandbox.kube import resources
from mirrord_core.sandbox.kube.access import AccessPolicy
from mirrord_core.sandbox.kube.container_runtime import (
    ContainerStartError,
    command_line,
    container_env,
    security_wrapper,
)
from mirrord_core.sandbox.kube.patches import apply_patch
from mirrord_core.sandbox.kube.selectors import POD_FIELDS, FieldSelector, LabelSelector
from mirrord_core.sandbox.kube.status import ApiError
from mirrord_core.sandbox.kube.validation import (
    check_stored,
    ephemeral_update_causes,
    job_causes,
    model_causes,
)

AGENT = [sys.executable, "-m", "mirrord_core.cli", "agent"]


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web,tier=front", {"app": "web"}, False),
        ("app!=web", {}, True),
        ("app in (web, api)", {"app": "api"}, True),
        ("app notin (web)", {"app": "web"}, False),
        ("app", {"app": ""}, True),
        ("!app", {"app": "x"}, False),
        ("", {"anything": "x"}, True),
        ("batch.kubernetes.io/job-name=j", {"batch.kubernetes.io/job-name": "j"}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], selected: bool) -> None:
    assert LabelSelector.parse(selector).matches(labels) is selected


@pytest.mark.parametrize("selector", ["app in (web", "a=b,,c=d", "bad key!=x", "app=in valid"])
def test_malformed_label_selectors_are_400(selector: str) -> None:
    with pytest.raises(ApiError) as err:
        LabelSelector.parse(selector)
    assert (err.value.code, err.value.reason) == (400, "BadRequest")


def test_field_selectors() -> None:
    pod = {"metadata": {"name": "p", "namespace": "n"}, "status": {"phase": "Running"}}
    assert FieldSelector.parse("status.phase=Running,metadata.name==p", POD_FIELDS).matches(pod)
    assert not FieldSelector.parse("status.phase!=Running", POD_FIELDS).matches(pod)
    with pytest.raises(ApiError, match=r"field label not supported: status\.bogus"):
        FieldSelector.parse("status.bogus=1", POD_FIELDS)
    with pytest.raises(ApiError, match="invalid selector"):
        FieldSelector.parse("status.phase", POD_FIELDS)


def _pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "labels": {"a": "1", "b": "2"}},
        "spec": {
            "containers": [{"name": "web", "image": "w"}],
            "ephemeralContainers": [{"name": "e1", "image": "x"}],
        },
    }


def test_strategic_merge_patch_merges_keyed_lists() -> None:
    patch = {
        "metadata": {"labels": {"a": None, "c": "3"}},
        "spec": {"ephemeralContainers": [{"name": "e2", "image": "y"}]},
    }
    result = apply_patch("application/strategic-merge-patch+json", _pod(), patch)
    assert result["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert [c["name"] for c in result["spec"]["ephemeralContainers"]] == ["e1", "e2"]
    assert result["spec"]["containers"] == _pod()["spec"]["containers"]
    deleted = apply_patch(
        "application/strategic-merge-patch+json",
        _pod(),
        {"spec": {"ephemeralContainers": [{"name": "e1", "$patch": "delete"}]}},
    )
    assert deleted["spec"]["ephemeralContainers"] == []


def test_merge_patch_replaces_lists_and_json_patch_applies_operations() -> None:
    patch = {"spec": {"ephemeralContainers": [{"name": "e2", "image": "y"}]}}
    merged = apply_patch("application/merge-patch+json", _pod(), patch)
    assert [c["name"] for c in merged["spec"]["ephemeralContainers"]] == ["e2"]
    operations = [{"op": "add", "path": "/spec/ephemeralContainers/-", "value": {"name": "e3"}}]
    patched = apply_patch("application/json-patch+json", _pod(), operations)
    assert [c["name"] for c in patched["spec"]["ephemeralContainers"]] == ["e1", "e3"]
    with pytest.raises(ApiError) as err:
        apply_patch("application/json-patch+json", _pod(), [{"op": "remove", "path": "/nope"}])
    assert err.value.code == 400
    with pytest.raises(ApiError) as err:
        apply_patch("text/plain", _pod(), {})
    assert err.value.code == 415


def _job() -> dict[str, Any]:
    return {
        "metadata": {"name": "j"},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "c", "image": "i", "env": [{"name": "A", "value": "1"}]}
                    ],
                }
            }
        },
    }


def test_model_causes_follow_the_clients_models() -> None:
    assert model_causes(_job(), "V1Job") == []
    job = _job()
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["imagPullPolicy"] = "Always"
    container["env"][0]["value"] = 1
    del container["name"]
    job["spec"]["backoffLimit"] = True
    causes = {(c.field, c.reason) for c in model_causes(job, "V1Job")}
    base = "spec.template.spec.containers[0]"
    assert causes == {
        (f"{base}.imagPullPolicy", "FieldValueNotSupported"),
        (f"{base}.env[0].value", "FieldValueTypeInvalid"),
        (f"{base}.name", "FieldValueRequired"),
        ("spec.backoffLimit", "FieldValueTypeInvalid"),
    }
    with pytest.raises(RuntimeError, match="emulator produced an invalid Job"):
        check_stored(resources.JOBS, job)


def test_job_and_ephemeral_semantics() -> None:
    job = _job()
    assert job_causes(job) == []
    job["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    job["spec"]["ttlSecondsAfterFinished"] = -1
    assert {c.field for c in job_causes(job)} == {
        "spec.template.spec.restartPolicy",
        "spec.ttlSecondsAfterFinished",
    }
    old = _pod()
    new = _pod()
    new["spec"]["ephemeralContainers"].append(
        {"name": "web", "image": "y", "ports": [{"containerPort": 1}]}
    )
    new["spec"]["containers"][0]["image"] = "changed"
    messages = [c.message for c in ephemeral_update_causes(old, new)]
    assert any("may not change fields other than" in m for m in messages)
    assert 'Duplicate value: "web"' in messages
    assert "Forbidden: cannot be set for an Ephemeral Container" in messages


def test_command_line_runs_mirrord_locally() -> None:
    env = {"PORT": "4000"}
    container = {
        "command": ["mirrord", "agent"],
        "args": ["--listen", "0.0.0.0:$(PORT)", "--ephemeral", "$$x"],
    }
    assert command_line(container, env, loopback=True, ephemeral_container_id="ab" * 32) == [
        *AGENT,
        "--listen",
        "127.0.0.1:4000",
        "--container-id",
        "ab" * 32,
        "$x",
    ]
    # In a pod with its own network namespace the wildcard stays.
    assert command_line(container, env, loopback=False)[4:6] == ["--listen", "0.0.0.0:4000"]
    # args alone replace the image's CMD (mirrord agent --help); a command replaces both.
    assert command_line({"args": ["mirrord", "--version"]}, {}, loopback=True)[-1] == "--version"
    assert command_line({}, {}, loopback=True) == [*AGENT, "--help"]
    with pytest.raises(ContainerStartError) as err:
        command_line({"command": ["/bin/sh", "-c", "true"]}, {}, loopback=True)
    assert (
        err.value.reason == "StartError"
        and '"/bin/sh": executable file not found' in err.value.message
    )


def test_container_env() -> None:
    container = {
        "env": [
            {"name": "A", "value": "x"},
            {"name": "B", "value": "$(A)-y"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ]
    }
    env = container_env(container, {"metadata.name": "agent-1"}, "agent-1")
    assert env["A"] == "x" and env["B"] == "x-y" and env["POD"] == "agent-1"
    assert env["HOSTNAME"] == "agent-1" and "PATH" in env and "SECRET" not in env


def test_security_wrapper_enforces_the_spec() -> None:
    privileged = {"securityContext": {"privileged": True}}
    assert security_wrapper({"hostPID": True}, privileged, own_pid_namespace=False) == []
    wrapper = security_wrapper(
        {},
        {
            "securityContext": {
                "capabilities": {"add": ["SYS_ADMIN"], "drop": ["ALL"]},
                "runAsUser": 1000,
            }
        },
        own_pid_namespace=True,
    )
    assert wrapper[:2] == ["unshare", "--pid"]
    assert "--bounding-set" in wrapper and "-all,+sys_admin" in wrapper
    assert wrapper[wrapper.index("--reuid") + 1] == "1000"


def test_access_policy_and_forbidden_messages() -> None:
    policy = AccessPolicy(denied=["create pods/portforward"])
    assert not policy.allows("create", resources.POD_PORTFORWARD, "default")
    assert policy.allows("get", resources.PODS, "default")
    assert not policy.allows("get", resources.PODS, "restricted")
    with pytest.raises(ApiError) as err:
        policy.check("create", resources.POD_PORTFORWARD, "default", "web-1")
    assert err.value.message == (
        'pods "web-1" is forbidden: User "developer" cannot create resource "pods/portforward" '
        'in API group "" in the namespace "default"'
    )
    with pytest.raises(ValueError, match="VERB RESOURCE"):
        policy.deny("create")
