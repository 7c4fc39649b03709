"""The agent image used when ``agent.image`` is not set.

Its tag is the version of the installed mirrord-target package, so a client always asks
for the agent built from the same release; ``agent-image/Dockerfile`` builds this image
(``docs/kubernetes.md`` says how to build and push it).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

AGENT_IMAGE_REPOSITORY = "ghcr.io/metalbear-co/mirrord-python-agent"


def _package_version() -> str:
    try:
        return version("mirrord-target")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.1.0"


DEFAULT_AGENT_IMAGE = f"{AGENT_IMAGE_REPOSITORY}:{_package_version()}"
