"""Shared fixtures: the installed plugins' config layout, resolving configs, running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from mirrord_core.config import ConfigLayout, ResolvedConfig, resolve
from mirrord_core.plugin_manager import get_plugins, reset_plugins

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture(autouse=True)
def _clean_mirrord_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees MIRRORD_* variables of the machine running the suite."""
    for name in list(os.environ):
        if name.startswith("MIRRORD_"):
            monkeypatch.delenv(name)
    reset_plugins()


@pytest.fixture
def layout() -> ConfigLayout:
    """The config layout of the installed plugins (core + fs, env, network, target)."""
    return get_plugins().layout


ResolveFn = Callable[..., ResolvedConfig]


@pytest.fixture
def resolve_config(layout: ConfigLayout, tmp_path: Path) -> ResolveFn:
    """Resolve a config given as text: ``resolve_config(text, suffix=".toml", env=…, flags=…)``.

    ``text=None`` resolves with no file. The environment is exactly ``env`` (not the
    process environment).
    """

    def _resolve(
        text: str | None = None,
        suffix: str = ".toml",
        env: Mapping[str, str] | None = None,
        flags: Mapping[str, Any] | None = None,
    ) -> ResolvedConfig:
        file = None
        if text is not None:
            file = tmp_path / f"mirrord{suffix}"
            file.write_text(text)
        return resolve(layout, file=file, environ=dict(env or {}), flags=flags or {})

    return _resolve


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed ``mirrord`` console script as a user would."""

    def _run(
        *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORD_")}
        full_env.update(env or {})
        mirrord = Path(sys.executable).parent / "mirrord"
        return subprocess.run(
            [str(mirrord), *args],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd,
            timeout=120,
        )

    return _run


@pytest.fixture
def emulated_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The demo sandbox (pods ``web`` and ``api``) behind an emulated Kubernetes API.

    Yields the running ``EmulatedCluster`` (``.sandbox``, ``.kubeconfig_path``,
    ``.policy``, ``.images``; see docs/kubernetes-emulator.md); ``KUBECONFIG`` points at
    it for the test. Needs root, as the sandbox does. Everything is removed afterwards.
    """
    # Imported here: the emulator needs the sandbox extra and root, most tests neither.
    from mirrord_core.sandbox import Sandbox
    from mirrord_core.sandbox.demo import demo_pods
    from mirrord_core.sandbox.kube import EmulatedCluster

    with Sandbox.create(demo_pods()) as sandbox, EmulatedCluster(sandbox) as cluster:
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig_path))
        yield cluster
