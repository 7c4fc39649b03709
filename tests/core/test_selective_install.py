"""A selective install: a fresh venv with only the core (``mirrord``) and ``mirrord-env``.

The venv is built once per session from a copy of this checkout (the build writes
``build/`` and ``*.egg-info`` next to the sources, and other tests may be reading them);
pip fetches the core's dependencies from the package index. It has no access to this
interpreter's site-packages, so the other plugins cannot leak in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "tests",
)
Run = Callable[..., subprocess.CompletedProcess[str]]


def _environment() -> dict[str, str]:
    """This process's environment without anything that points Python elsewhere."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE"}
    return {
        k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("MIRRORD_")
    }


@pytest.fixture(scope="session")
def core_and_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with mirrord and mirrord-env installed from this checkout; returns its bin/."""
    work = tmp_path_factory.mktemp("selective")
    source = work / "src"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_COPIED, symlinks=True)
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    bin_dir = env_dir / "bin"
    install = subprocess.run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(source),
            str(source / "plugins" / "env"),
        ],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=600,
    )
    if install.returncode != 0:
        pytest.fail(f"installing core + env into a venv failed:\n{install.stdout}{install.stderr}")
    return bin_dir


@pytest.fixture
def venv_cli(core_and_env: Path) -> Run:
    """Run the venv's ``mirrord``; fails the test on any traceback."""

    def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(core_and_env / "mirrord"), *args],
            capture_output=True,
            text=True,
            env={**_environment(), **(env or {})},
            timeout=120,
        )
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
        return result

    return _run


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_venv_has_only_core_and_env(core_and_env: Path) -> None:
    script = (
        "import importlib.metadata, importlib.util, json;"
        "print(json.dumps({"
        "'dists': sorted(d.metadata['Name'] for d in importlib.metadata.distributions()"
        " if d.metadata['Name'].startswith('mirrord')),"
        "'modules': {m: importlib.util.find_spec(m) is not None for m in "
        "['mirrord_core', 'mirrord_env', 'mirrord_fs', 'mirrord_network', 'mirrord_target']}}))"
    )
    result = subprocess.run(
        [str(core_and_env / "python"), "-c", script],
        capture_output=True,
        text=True,
        env=_environment(),
        check=True,
        cwd=core_and_env,
    )
    assert json.loads(result.stdout) == {
        "dists": ["mirrord", "mirrord-env"],
        "modules": {
            "mirrord_core": True,
            "mirrord_env": True,
            "mirrord_fs": False,
            "mirrord_network": False,
            "mirrord_target": False,
        },
    }


def test_plugins_lists_only_env(venv_cli: Run) -> None:
    listed = ok_json(venv_cli("plugins", "--json"))
    assert [(p["name"], p["distribution"], p["sections"]) for p in listed["plugins"]] == [
        ("env", "mirrord-env", ["feature.env"])
    ]
    assert listed["failed"] == []
    table = venv_cli("plugins")
    assert table.returncode == 0
    assert "mirrord-env" in table.stdout
    for missing in ("mirrord-fs", "mirrord-network", "mirrord-target"):
        assert missing not in table.stdout


@pytest.mark.parametrize(
    ("text", "section", "distribution"),
    [
        ('[feature.fs]\nmode = "read"\n', "feature.fs", "mirrord-fs"),
        ("[feature]\nfs = false\n", "feature.fs", "mirrord-fs"),
        ("[feature.network]\ndns = false\n", "feature.network", "mirrord-network"),
        ('target = "pod/web"\n', "target", "mirrord-target"),
    ],
)
def test_a_missing_plugins_section_names_its_distribution(
    venv_cli: Run, tmp_path: Path, text: str, section: str, distribution: str
) -> None:
    file = tmp_path / "mirrord.toml"
    file.write_text(text)
    result = venv_cli("verify-config", str(file))
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"  {section}: " in result.stderr
    assert f"needs the {distribution} plugin" in result.stderr
    assert f"pip install {distribution}" in result.stderr


def test_every_missing_section_is_listed(venv_cli: Run, tmp_path: Path) -> None:
    file = tmp_path / "mirrord.json"
    file.write_text(
        json.dumps(
            {
                "target": "pod/web",
                "feature": {"fs": "write", "network": {"dns": False}, "env": {"include": "A"}},
            }
        )
    )
    result = venv_cli("verify-config", "--json", str(file))
    assert result.returncode == 1
    errors = json.loads(result.stdout)["errors"]
    assert [e.split(": ")[0] for e in errors] == ["feature.fs", "feature.network", "target"]


def test_a_config_of_installed_sections_verifies(venv_cli: Run, tmp_path: Path) -> None:
    file = tmp_path / "mirrord.toml"
    file.write_text(
        'skip_processes = "ide"\n'
        '[agent]\nttl = 5\nlog_level = "debug"\n'
        '[feature.env]\ninclude = "A;B"\n[feature.env.override]\nX = "1"\n'
    )
    config = ok_json(venv_cli("verify-config", "--json", str(file)))
    assert config["agent"]["ttl"] == 5
    assert config["agent"]["log_level"] == "debug"
    assert config["feature"] == {
        "capture_error_trace": False,
        "env": {"include": ["A", "B"], "exclude": [], "override": {"X": "1"}},
    }
    assert "target" not in config
    assert config["skip_processes"] == ["ide"]


def test_schema_works(venv_cli: Run) -> None:
    schema = ok_json(venv_cli("schema"))
    jsonschema.Draft7Validator.check_schema(schema)
    [feature] = [o for o in schema["properties"]["feature"]["anyOf"] if o.get("type") == "object"]
    assert set(feature["properties"]) == {"capture_error_trace", "env"}
    assert "target" not in schema["properties"]
    validator = jsonschema.Draft7Validator(schema)
    assert validator.is_valid({"feature": {"env": {"include": "A"}}, "agent": {"ttl": 5}})
    assert not validator.is_valid({"feature": {"fs": "read"}})


def test_run_help_shows_only_installed_flags(venv_cli: Run) -> None:
    result = venv_cli("run", "--help")
    assert result.returncode == 0, result.stderr
    for present in ("--override-env-vars-include", "--override-env-vars-exclude", "--agent-ttl"):
        assert present in result.stdout
    for absent in ("--fs-mode", "--steal", "--target", "--no-outgoing", "--no-remote-dns"):
        assert absent not in result.stdout


def test_run_dry_run_with_installed_flags(venv_cli: Run) -> None:
    config = ok_json(venv_cli("run", "--dry-run", "-x", "SECRET", "--agent-ttl", "2"))
    assert config["feature"]["env"]["exclude"] == ["SECRET"]
    assert config["agent"]["ttl"] == 2


def test_flag_of_a_missing_plugin_is_rejected(venv_cli: Run) -> None:
    result = venv_cli("run", "--dry-run", "--fs-mode", "write")
    assert result.returncode != 0
    assert "--fs-mode" in result.stderr
