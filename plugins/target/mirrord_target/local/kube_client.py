"""A configured Kubernetes API client, found the way kubectl finds one.

The kubeconfig comes from the ``kubeconfig`` setting, else ``KUBECONFIG`` (a list of
files, merged), else ``~/.kube/config``, else the in-cluster service account. The
official client handles authentication (certificates, tokens, exec-credential plugins).
Every call goes through :meth:`KubeApi.call`, which bounds it in time and turns failures
a user can act on into :class:`~mirrord_target.local.kube_errors.KubeApiError`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from mirrord_target.local.kube_errors import (
    KubeConfigError,
    normalize_api_error,
    translate_api_error,
)

T = TypeVar("T")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Connect and read timeouts of one API request; a watch or log read is short as well.
REQUEST_TIMEOUT = (10.0, 30.0)
_CONTEXT_HINT = "kubectl config view shows what it holds"


@attrs.frozen(kw_only=True)
class KubeApi:
    """The API groups mirrord uses, with the namespace of the current context."""

    api_client: client.ApiClient
    default_namespace: str
    source: str

    @property
    def server(self) -> str:
        """The API server's URL."""
        return str(self.api_client.configuration.host)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api_client)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api_client)

    def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call one API ``method`` with a timeout; raise a user error when that is what
        the failure is (forbidden, unauthorized, unreachable), else the ApiException."""
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        try:
            return method(*args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
            translated = translate_api_error(self.server, err)
            if translated is not None:
                raise translated from None
            normalized = normalize_api_error(err)
            if normalized is err:
                raise
            raise normalized from None

    def fork(self) -> KubeApi:
        """Another client for the same cluster and credentials, with its own pool.

        ``kubernetes.stream`` swaps its client's ``call_api`` while it opens a websocket,
        so a client that opens websockets must not serve other requests meanwhile.
        """
        return attrs.evolve(self, api_client=client.ApiClient(self.api_client.configuration))

    def close(self) -> None:
        """Release the client's connection pool."""
        self.api_client.close()


def _kubeconfig_files(explicit: str | None, environ: dict[str, str]) -> tuple[list[str], str]:
    """The kubeconfig files to merge and a description of where they came from."""
    if explicit:
        path = os.path.expanduser(explicit)
        if not os.path.isfile(path):
            raise KubeConfigError(f"the kubeconfig file {path} (setting kubeconfig) does not exist")
        return [path], path
    listed = environ.get("KUBECONFIG", "")
    if listed:
        paths = [os.path.expanduser(p) for p in listed.split(os.pathsep) if p]
        existing = [p for p in paths if os.path.isfile(p)]
        if not existing:
            raise KubeConfigError(
                f"KUBECONFIG={listed} names no existing file; fix KUBECONFIG or set kubeconfig"
            )
        return existing, "KUBECONFIG"
    default = os.path.expanduser("~/.kube/config")
    return ([default], default) if os.path.isfile(default) else ([], "")


def _first_current_context(files: list[str]) -> str | None:
    """The current context as kubectl merges KUBECONFIG: the first file that sets it
    wins (the client's own merge would take the last one)."""
    for path in files:
        try:
            with open(path) as file:
                document = yaml.safe_load(file)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(document, dict) and document.get("current-context"):
            return str(document["current-context"])
    return None


def _in_cluster(configuration: client.Configuration) -> str:
    try:
        config.load_incluster_config(client_configuration=configuration)
    except ConfigException as err:
        raise KubeConfigError(
            f"no Kubernetes configuration found ({err}): set kubeconfig or KUBECONFIG, or "
            "create ~/.kube/config (kubectl config view shows what kubectl uses)"
        ) from None
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def connect_kube(
    kubeconfig: str | None,
    accept_invalid_certificates: bool,
    environ: dict[str, str] | None = None,
) -> KubeApi:
    """A client for the cluster of the current kubeconfig context (or in-cluster)."""
    environ = dict(os.environ if environ is None else environ)
    configuration = client.Configuration()
    files, source = _kubeconfig_files(kubeconfig, environ)
    if files:
        joined = os.pathsep.join(files)
        context = _first_current_context(files)
        try:
            # persist_config=False: refreshed credentials are never written back.
            config.load_kube_config(
                config_file=joined,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
            contexts, current = config.list_kube_config_contexts(config_file=joined)
            current = next((c for c in contexts if c.get("name") == context), current)
        except (ConfigException, OSError, ValueError, TypeError, KeyError) as err:
            raise KubeConfigError(
                f"cannot use the kubeconfig {source}: {err}; {_CONTEXT_HINT}"
            ) from None
        namespace = ((current or {}).get("context") or {}).get("namespace") or "default"
    elif environ.get("KUBERNETES_SERVICE_HOST"):
        namespace = _in_cluster(configuration)
        source = "in-cluster service account"
    else:
        raise KubeConfigError(
            "no Kubernetes configuration found: set kubeconfig or KUBECONFIG, or create "
            "~/.kube/config (kubectl config view shows what kubectl uses)"
        )
    if accept_invalid_certificates:
        configuration.verify_ssl = False
        # The user asked for it: do not warn on every request.
        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    return KubeApi(
        api_client=client.ApiClient(configuration), default_namespace=namespace, source=source
    )
