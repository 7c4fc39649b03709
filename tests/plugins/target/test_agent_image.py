"""The agent image's Dockerfile stays true to the code: its documented tag is the default
``agent.image``, it installs the core and every first-party plugin from sources that
exist, and it has the tools the agent runs (nft) or loads (libfuse). Docker is not
needed: these read the files a build would use."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from mirrord_target.agent_image import AGENT_IMAGE_REPOSITORY, DEFAULT_AGENT_IMAGE

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "agent-image" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def test_documented_tag_is_the_default_agent_image_of_this_version() -> None:
    version = tomllib.loads((REPO / "plugins/target/pyproject.toml").read_text())["project"][
        "version"
    ]
    assert f"{AGENT_IMAGE_REPOSITORY}:{version}" == DEFAULT_AGENT_IMAGE
    assert f"-t {DEFAULT_AGENT_IMAGE} ." in " ".join(DOCKERFILE.read_text().split())
    assert DEFAULT_AGENT_IMAGE.split(":")[0] in (REPO / "docs" / "kubernetes.md").read_text()


def test_every_copied_source_exists_and_every_plugin_is_installed() -> None:
    instructions = _instructions()
    copied = [args.split()[0] for kind, args in instructions if kind == "COPY"]
    for source in copied:
        assert (REPO / source).exists(), source
    plugins = sorted(p.parent.name for p in (REPO / "plugins").glob("*/pyproject.toml"))
    install = next(args for kind, args in instructions if kind == "RUN" and "pip install" in args)
    for plugin in plugins:
        assert f"plugins/{plugin}" in copied
        assert f"/src/plugins/{plugin}" in install.split()
    assert "/src" in install.split()


def test_base_and_system_packages() -> None:
    instructions = _instructions()
    assert any(kind == "FROM" and "-slim" in args for kind, args in instructions)
    apt = next(args for kind, args in instructions if kind == "RUN" and "apt-get" in args)
    for package in ("nftables", "iptables", "libfuse3-3"):
        assert package in apt.split()
