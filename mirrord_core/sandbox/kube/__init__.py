"""An emulated Kubernetes API over sandbox pods, for testing mirrord without a cluster.

The official ``kubernetes`` client talks to it over real HTTP with a kubeconfig; its pods
are sandbox pods (with real container ids, as cgroups), its agent Jobs and ephemeral
containers run ``mirrord agent`` as local processes, and port-forwards reach into the
pods' network namespaces. See docs/kubernetes-emulator.md.

    with Sandbox.create(demo_pods()) as sandbox, EmulatedCluster(sandbox) as cluster:
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig_path)
"""

from __future__ import annotations

from .access import AccessPolicy
from .cluster import EmulatedCluster, default_agent_image

__all__ = ["AccessPolicy", "EmulatedCluster", "default_agent_image"]
