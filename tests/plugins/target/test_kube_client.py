"""Finding the cluster as kubectl does: the kubeconfig setting, KUBECONFIG (merged),
~/.kube/config, the in-cluster service account; the context's namespace; exec-credential
plugins run by the official client; accept_invalid_certificates; clear errors."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from mirrord_target.local.kube_client import connect_kube
from mirrord_target.local.kube_errors import KubeConfigError


def _kubeconfig(
    server: str = "https://127.0.0.1:6443",
    namespace: str | None = None,
    user: dict[str, object] | None = None,
    context: str = "dev",
) -> dict[str, object]:
    ctx: dict[str, object] = {"cluster": "c", "user": "u"}
    if namespace:
        ctx["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": user or {"token": "t0ken"}}],
        "contexts": [{"name": context, "context": ctx}],
        "current-context": context,
    }


def _write(path: Path, document: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def test_explicit_kubeconfig_wins_and_gives_the_context_namespace(tmp_path: Path) -> None:
    explicit = _write(tmp_path / "a.yaml", _kubeconfig("https://10.1.1.1:6443", "shop"))
    other = _write(tmp_path / "b.yaml", _kubeconfig("https://10.2.2.2:6443", "other"))
    api = connect_kube(str(explicit), False, environ={"KUBECONFIG": str(other)})
    assert api.server == "https://10.1.1.1:6443"
    assert api.default_namespace == "shop"
    assert api.api_client.configuration.auth_settings()["BearerToken"]["value"] == "Bearer t0ken"


def test_kubeconfig_env_lists_files_that_are_merged(tmp_path: Path) -> None:
    # The first file sets the current context; the second holds the cluster and user.
    first = tmp_path / "first.yaml"
    first.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "dev",
                "contexts": [
                    {"name": "dev", "context": {"cluster": "c", "user": "u", "namespace": "n1"}}
                ],
            }
        )
    )
    second = _write(tmp_path / "second.yaml", _kubeconfig("https://10.3.3.3:6443", context="x"))
    missing = tmp_path / "missing.yaml"
    environ = {"KUBECONFIG": os.pathsep.join([str(first), str(missing), str(second)])}
    api = connect_kube(None, False, environ=environ)
    assert api.server == "https://10.3.3.3:6443"
    assert api.default_namespace == "n1"


def test_home_kube_config_without_namespace_means_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".kube").mkdir()
    _write(tmp_path / ".kube" / "config", _kubeconfig("https://10.4.4.4:6443"))
    api = connect_kube(None, False, environ={})
    assert api.server == "https://10.4.4.4:6443"
    assert api.default_namespace == "default"
    assert api.source.endswith(".kube/config")


def test_no_configuration_at_all_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(KubeConfigError, match="set kubeconfig or KUBECONFIG"):
        connect_kube(None, False, environ={})


def test_in_cluster_without_service_account_files_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(KubeConfigError, match="no Kubernetes configuration found"):
        connect_kube(None, False, environ=environ)


def test_missing_explicit_file_and_empty_kubeconfig_list_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"\(setting kubeconfig\) does not exist"):
        connect_kube(str(tmp_path / "nope.yaml"), False, environ={})
    with pytest.raises(KubeConfigError, match=r"KUBECONFIG=.* names no existing file"):
        connect_kube(None, False, environ={"KUBECONFIG": str(tmp_path / "nope.yaml")})


def test_broken_kubeconfig_is_a_user_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"apiVersion": "v1", "current-context": "gone"}))
    with pytest.raises(KubeConfigError, match="cannot use the kubeconfig"):
        connect_kube(str(broken), False, environ={})


def test_accept_invalid_certificates_turns_verification_off(tmp_path: Path) -> None:
    path = _write(tmp_path / "k.yaml", _kubeconfig())
    assert connect_kube(str(path), False, environ={}).api_client.configuration.verify_ssl
    assert not connect_kube(str(path), True, environ={}).api_client.configuration.verify_ssl


def test_exec_credential_plugin_supplies_the_token(tmp_path: Path) -> None:
    plugin = tmp_path / "credential-plugin"
    plugin.write_text(
        f"#!{sys.executable}\n"
        "import json\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1',"
        " 'kind': 'ExecCredential', 'status': {'token': 'from-the-plugin'}}))\n"
    )
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": str(plugin),
            "interactiveMode": "Never",
        }
    }
    path = _write(tmp_path / "k.yaml", _kubeconfig(user=user))
    api = connect_kube(str(path), False, environ={})
    assert (
        api.api_client.configuration.auth_settings()["BearerToken"]["value"]
        == "Bearer from-the-plugin"
    )
