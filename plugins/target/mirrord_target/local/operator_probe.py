"""Looking for the mirrord operator before taking the open-source path.

The operator registers the ``operator.metalbear.co`` API group. mirrord for Python has no
operator support: without the operator it goes on quietly (a debug line), with one it
says that it is not used, so nobody wonders why their operator features do not apply.
"""

from __future__ import annotations

import logging

from kubernetes import client

from mirrord_core.cli import output
from mirrord_target.local.kube_client import KubeApi

log = logging.getLogger("mirrord.target")

OPERATOR_API_GROUP = "operator.metalbear.co"


def operator_installed(api: KubeApi) -> bool:
    """Whether the cluster serves the operator's API group (``False`` when it cannot
    tell: discovery refused or failing is no reason to stop the session)."""
    try:
        groups = api.call(client.ApisApi(api.api_client).get_api_versions).groups or []
    except Exception as err:
        log.debug("API discovery failed (%s); assuming no mirrord operator", err)
        return False
    return any(group.name == OPERATOR_API_GROUP for group in groups)


def check_operator(api: KubeApi) -> None:
    """Look for the operator and say which path mirrord takes."""
    if operator_installed(api):
        output.warn(
            f"the mirrord operator ({OPERATOR_API_GROUP}) is installed in this cluster, but "
            "mirrord for Python does not use it; starting an agent directly (set operator = "
            "false to skip this check)"
        )
    else:
        log.debug(
            "no mirrord operator (API group %s) in the cluster: using the open-source path",
            OPERATOR_API_GROUP,
        )
