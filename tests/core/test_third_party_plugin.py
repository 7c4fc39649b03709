"""A third-party plugin: the separate distribution ``tests/plugins/mirrord-hello``.

It is installed for real (pip builds it with setuptools and writes its ``*.dist-info``):
when the environment already has it (``scripts/install.sh --with-tests`` installs it), that
installation is used; otherwise the session installs it into a private directory that only
these tests put on the path (``PYTHONPATH`` for the console script, ``sys.path`` in this
process), so the rest of the suite keeps seeing exactly the environment it was given.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest

from mirrord_core.config import ConfigError, resolve
from mirrord_core.plugin_manager import apply_env_filters, load_plugins, reset_plugins

HELLO_SOURCE = Path(__file__).resolve().parents[1] / "plugins" / "mirrord-hello"
HELLO_PROJECT = tomllib.loads((HELLO_SOURCE / "pyproject.toml").read_text())["project"]


@attrs.frozen
class HelloInstall:
    """Where the hello distribution is installed; ``site`` is ``None`` for the environment."""

    site: Path | None

    @property
    def cli_env(self) -> dict[str, str]:
        if self.site is None:
            return {}
        paths = [str(self.site), *filter(None, [os.environ.get("PYTHONPATH")])]
        return {"PYTHONPATH": os.pathsep.join(paths)}


def _installed_in_environment() -> bool:
    try:
        importlib.metadata.distribution(HELLO_PROJECT["name"])
    except importlib.metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("mirrord_hello") is not None


def _can_build_without_isolation() -> bool:
    """setuptools builds wheels by itself from 70.1 on; older ones need the wheel package."""
    version = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="session")
def hello(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HelloInstall]:
    if _installed_in_environment():
        yield HelloInstall(site=None)
        return
    work = tmp_path_factory.mktemp("hello")
    source = work / "src"  # a copy: the build writes build/ and *.egg-info next to the sources
    shutil.copytree(HELLO_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = work / "site"
    isolation = ["--no-build-isolation"] if _can_build_without_isolation() else []
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        *isolation,
        "--target",
        str(site),
        str(source),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"installing mirrord-hello failed:\n{result.stdout}\n{result.stderr}")
    yield HelloInstall(site=site)


@pytest.fixture
def hello_on_path(hello: HelloInstall, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make this process see the hello distribution too (for the duration of one test)."""
    if hello.site is not None:
        monkeypatch.syspath_prepend(str(hello.site))
    reset_plugins()
    yield
    reset_plugins()


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "mirrord.toml"
    file.write_text(text)
    return file


def test_hello_is_a_real_installed_distribution(hello: HelloInstall, hello_on_path) -> None:
    distribution = importlib.metadata.distribution("mirrord-hello")
    assert distribution.version == HELLO_PROJECT["version"]
    [entry_point] = [ep for ep in distribution.entry_points if ep.group == "mirrord"]
    assert (entry_point.name, entry_point.value) == ("hello", "mirrord_hello.plugin")
    if hello.site is not None:  # installed by this session: its files are in the site
        assert {p.parts[0] for p in distribution.files or ()} >= {"mirrord_hello"}
        assert (hello.site / "mirrord_hello" / "plugin.py").is_file()


def test_plugins_shows_hello(run_cli, hello: HelloInstall) -> None:
    listed = ok_json(run_cli("plugins", "--json", env=hello.cli_env))
    by_name = {p["name"]: p for p in listed["plugins"]}
    assert by_name["hello"] == {
        "name": "hello",
        "distribution": "mirrord-hello",
        "version": HELLO_PROJECT["version"],
        "sections": ["feature.hello"],
        "hooks": ["filter_env", "register_config_sections"],
    }
    assert {"env", "fs", "network", "target"} <= set(by_name)
    table = run_cli("plugins", env=hello.cli_env)
    assert table.returncode == 0
    [row] = [line for line in table.stdout.splitlines() if " hello " in line]
    for cell in ("mirrord-hello", HELLO_PROJECT["version"], "feature.hello"):
        assert cell in row


def test_hello_section_resolves(run_cli, hello: HelloInstall, tmp_path: Path) -> None:
    file = write(tmp_path, '[feature.hello]\ngreeting = "hi"\n[feature.fs]\nmode = "write"\n')
    config = ok_json(run_cli("verify-config", "--json", str(file), env=hello.cli_env))
    assert config["feature"]["hello"] == {"enabled": True, "greeting": "hi"}
    assert config["feature"]["fs"]["mode"] == "write"


def test_hello_section_defaults_env_and_shorthand(
    run_cli, hello: HelloInstall, tmp_path: Path
) -> None:
    empty = write(tmp_path, "")
    config = ok_json(run_cli("verify-config", "--json", str(empty), env=hello.cli_env))
    assert config["feature"]["hello"] == {"enabled": True, "greeting": "hello"}
    env = {**hello.cli_env, "MIRRORD_HELLO_GREETING": "bonjour"}
    config = ok_json(run_cli("verify-config", "--json", str(empty), env=env))
    assert config["feature"]["hello"]["greeting"] == "bonjour"
    off = write(tmp_path, "[feature]\nhello = false\n")
    config = ok_json(run_cli("verify-config", "--json", str(off), env=hello.cli_env))
    assert config["feature"]["hello"] == {"enabled": False, "greeting": "hello"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[feature.hello]\ngreeting = 3\n", "feature.hello.greeting: expected a string"),
        ("[feature.hello]\nenabled = 'yes'\n", "feature.hello.enabled: expected true or false"),
        (
            "[feature.hello]\ngreting = 'hi'\n",
            "feature.hello.greting: unknown key; did you mean greeting?",
        ),
        ("[feature]\nhello = 'loud'\n", "feature.hello: expected true/false or a table"),
    ],
)
def test_hello_section_errors(
    run_cli, hello: HelloInstall, tmp_path: Path, text: str, problem: str
) -> None:
    result = run_cli("verify-config", str(write(tmp_path, text)), env=hello.cli_env)
    assert result.returncode == 1
    assert f"  {problem}" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_without_hello_its_section_is_an_error(
    run_cli, hello: HelloInstall, tmp_path: Path
) -> None:
    file = write(tmp_path, '[feature.hello]\ngreeting = "hi"\n')
    env = {**hello.cli_env, "MIRRORD_DISABLE_PLUGINS": "hello"}
    listed = ok_json(run_cli("plugins", "--json", env=env))
    assert listed["disabled"] == ["hello"]
    assert "hello" not in [p["name"] for p in listed["plugins"]]
    result = run_cli("verify-config", str(file), env=env)
    assert result.returncode == 1
    assert "  feature.hello: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    dry = run_cli("run", "--dry-run", env={**env, "MIRRORD_HELLO_GREETING": "hi"})
    assert "hello" not in ok_json(dry)["feature"]


def test_schema_includes_hello(run_cli, hello: HelloInstall) -> None:
    schema = ok_json(run_cli("schema", env=hello.cli_env))
    jsonschema.Draft7Validator.check_schema(schema)
    [feature] = [o for o in schema["properties"]["feature"]["anyOf"] if o.get("type") == "object"]
    section = feature["properties"]["hello"]
    [obj] = [o for o in section["anyOf"] if o.get("type") == "object"]
    assert set(obj["properties"]) == {"enabled", "greeting"}
    assert obj["properties"]["greeting"]["default"] == "hello"
    assert "MIRRORD_HELLO_GREETING" in obj["properties"]["greeting"]["description"]
    validator = jsonschema.Draft7Validator(schema)
    assert validator.is_valid({"feature": {"hello": {"greeting": "hi"}}})
    assert validator.is_valid({"feature": {"hello": False}})
    assert not validator.is_valid({"feature": {"hello": {"greeting": 3}}})
    assert not validator.is_valid({"feature": {"hello": {"greting": "hi"}}})

    without = ok_json(run_cli("schema", env={**hello.cli_env, "MIRRORD_DISABLE_PLUGINS": "hello"}))
    [feature] = [o for o in without["properties"]["feature"]["anyOf"] if o.get("type") == "object"]
    assert "hello" not in feature["properties"]


REMOTE = {"PATH": "/pod/bin", "DATABASE_URL": "postgres://db", "SECRET": "s3cr3t", "PORT": "80"}


def test_env_filters_chain_env_then_hello(hello_on_path, tmp_path: Path) -> None:
    loaded = load_plugins(environ={}, warn=pytest.fail)
    names = [p.name for p in loaded.plugins]
    assert names.index("env") < names.index("hello")
    file = write(
        tmp_path,
        '[feature.env]\nexclude = ["SECRET", "HELLO_*"]\n[feature.env.override]\nPORT = "8080"\n'
        '[feature.hello]\ngreeting = "hi"\n',
    )
    config = resolve(loaded.layout, file=file, environ={}).config
    # env drops PATH (a default exclude) and SECRET and overrides PORT; hello, next in the
    # chain, adds its variable to what env returned (env's HELLO_* exclude ran before it).
    assert apply_env_filters(loaded.manager, config, REMOTE) == {
        "DATABASE_URL": "postgres://db",
        "PORT": "8080",
        "HELLO_GREETING": "hi",
    }

    disabled = resolve(loaded.layout, file=file, environ={"MIRRORD_HELLO_ENABLED": "false"})
    assert apply_env_filters(loaded.manager, disabled.config, REMOTE) == {
        "DATABASE_URL": "postgres://db",
        "PORT": "8080",
    }


def test_env_filters_without_hello(hello_on_path, tmp_path: Path) -> None:
    loaded = load_plugins(environ={"MIRRORD_DISABLE_PLUGINS": "hello"}, warn=pytest.fail)
    config = resolve(loaded.layout, environ={}).config
    assert apply_env_filters(loaded.manager, config, REMOTE) == {
        "DATABASE_URL": "postgres://db",
        "SECRET": "s3cr3t",
        "PORT": "80",
    }
    file = write(tmp_path, '[feature.hello]\ngreeting = "hi"\n')
    with pytest.raises(ConfigError) as caught:
        resolve(loaded.layout, file=file, environ={})
    assert [str(p) for p in caught.value.problems] == ["feature.hello: unknown key"]
