"""Reading a config file: TOML, YAML (``.yaml``/``.yml``) or JSON (also without extension)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import yaml

from mirrord_core.config.errors import ConfigError, ConfigProblem

SUPPORTED_SUFFIXES = (".toml", ".yaml", ".yml", ".json", "")


def _fail(path: Path, message: str) -> ConfigError:
    return ConfigError([ConfigProblem("", message)], file=str(path))


def _parse_toml(text: str, path: Path) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # tomllib says "(at line L, column C)", except at the very end of the text.
        message = str(err)
        if message.endswith("(at end of document)"):
            line = text.count("\n") + 1
            column = len(text) - text.rfind("\n")
            message = message.removesuffix("(at end of document)")
            message += f"(at line {line}, column {column}, the end of the document)"
        raise _fail(path, f"TOML syntax error: {message}") from None


def _parse_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}"
            raise _fail(path, f"YAML syntax error at {where}: {problem}") from None
        raise _fail(path, f"YAML syntax error: {problem}") from None


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise _fail(path, f"JSON syntax error at {where}: {err.msg}") from None


_PARSERS = {
    ".toml": _parse_toml,
    ".yaml": _parse_yaml,
    ".yml": _parse_yaml,
    ".json": _parse_json,
    "": _parse_json,
}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a config file into a mapping, or raise :class:`ConfigError` saying why not."""
    path = Path(path)
    suffix = path.suffix.lower()
    parser = _PARSERS.get(suffix)
    if parser is None:
        raise _fail(
            path,
            f"unsupported config file format {suffix!r}: use .toml, .yaml, .yml or .json "
            "(a file without extension is read as JSON)",
        )
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _fail(path, f"cannot read the config file: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _fail(path, f"the config file is not UTF-8 text (byte {err.start})") from None
    document = parser(text, path)
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise _fail(path, "the config file must contain a table/object at the top level")
    return document
