"""Errors of the configuration layer, always phrased in config key names."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from mirrord_core.user_errors import UserError


@attrs.frozen
class ConfigProblem:
    """One problem with the configuration: where it is and what is wrong.

    ``path`` is the dotted config key (``feature.fs.mode``), never a Python attribute name;
    ``source`` names where the value came from (a file, an environment variable, a flag).
    """

    path: str
    message: str
    source: str | None = None

    def __str__(self) -> str:
        suffix = f" (from {self.source})" if self.source else ""
        if not self.path:
            return f"{self.message}{suffix}"
        return f"{self.path}: {self.message}{suffix}"


class ConfigError(UserError):
    """The configuration is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: Iterable[ConfigProblem], file: str | None = None) -> None:
        self.problems: list[ConfigProblem] = list(problems)
        self.file = file
        super().__init__(self.render())

    def render(self) -> str:
        """A human-readable report: a heading and one ``key.path: message`` line per problem."""
        head = (
            f"invalid mirrord configuration in {self.file}"
            if self.file
            else ("invalid mirrord configuration")
        )
        lines = [f"{head}:"]
        lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)


class ConfigValueError(ValueError):
    """Raised by value parsers and structure hooks; the resolver adds the key path."""
