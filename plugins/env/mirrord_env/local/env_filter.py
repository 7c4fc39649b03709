"""Choosing which of the target's environment variables the local process gets.

mirrord's rules: a variable is taken when it matches an ``include`` pattern and no
``exclude`` pattern; patterns are wildcards (``*`` any run of characters, ``?`` one
character), case-sensitive. A few variables that describe the machine rather than the
app are excluded by default (``DEFAULT_EXCLUDES``); naming one in ``include`` exactly
takes it anyway. ``override`` values are set last, whatever the target has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import attrs

from mirrord_env.config import EnvConfig

#: Excluded unless named exactly in ``include``: they describe the target machine's
#: layout (search paths, home directories, runtimes), not the app's configuration.
DEFAULT_EXCLUDES = frozenset({"PATH", "HOME", "HOMEPATH", "CLASSPATH", "JAVA_EXE", "JAVA_HOME"})


def _wildcard(pattern: str) -> re.Pattern[str]:
    body = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    return re.compile(f"^{body}$", re.DOTALL)


@attrs.frozen
class EnvFilter:
    """Compiled include/exclude patterns and overrides of one ``feature.env`` section."""

    include: tuple[re.Pattern[str], ...]
    exclude: tuple[re.Pattern[str], ...]
    exact_includes: frozenset[str]
    override: Mapping[str, str]

    @classmethod
    def from_config(cls, config: EnvConfig) -> EnvFilter:
        return cls.from_patterns(config.include, config.exclude, config.override)

    @classmethod
    def from_patterns(
        cls, include: Iterable[str], exclude: Iterable[str], override: Mapping[str, str]
    ) -> EnvFilter:
        include = tuple(include)
        return cls(
            include=tuple(_wildcard(p) for p in include),
            exclude=tuple(_wildcard(p) for p in exclude),
            exact_includes=frozenset(p for p in include if "*" not in p and "?" not in p),
            override=dict(override),
        )

    def takes(self, name: str) -> bool:
        """Whether the remote variable ``name`` reaches the local process."""
        if any(p.match(name) for p in self.exclude):
            return False
        if name in self.exact_includes:
            return True
        if name in DEFAULT_EXCLUDES:
            return False
        return any(p.match(name) for p in self.include)

    def apply(self, remote_env: Mapping[str, str]) -> dict[str, str]:
        """The remote variables to set in the local process, overrides included."""
        chosen = {name: value for name, value in remote_env.items() if self.takes(name)}
        chosen.update(self.override)
        return chosen
