"""The ``feature.fs`` section: which file operations go to the target."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from mirrord_core.config import ConfigValueError, Flag, RegexList, describe, setting


class FsMode(enum.Enum):
    """Default behaviour for paths no pattern or built-in list decides."""

    LOCAL = "local"
    LOCAL_WITH_OVERRIDES = "localwithoverrides"
    READ = "read"
    WRITE = "write"

    @classmethod
    def _missing_(cls, value: object) -> FsMode | None:
        # mirrord's own CLI spells the mode "local-with-overrides" (clap's value names).
        if value == "local-with-overrides":
            return cls.LOCAL_WITH_OVERRIDES
        return None


MODE_NAMES = tuple(mode.value for mode in FsMode)


@attrs.frozen(kw_only=True)
class FsConfig:
    """Controls the file operations feature: which paths are read (or written) remotely."""

    mode: FsMode = setting(
        default=FsMode.READ,
        env="MIRRORD_FILE_MODE",
        flags=(
            Flag(
                names=("--fs-mode",),
                help="default file system behaviour: " + ", ".join(MODE_NAMES),
                metavar="MODE",
            ),
        ),
        doc="local: everything local; localwithoverrides: local except the patterns and "
        "built-in lists; read: read remotely, writes to remote paths fail with EROFS "
        "(default); write: read and "
        "write remotely.",
    )
    read_write: RegexList = setting(
        factory=RegexList,
        env="MIRRORD_FILE_READ_WRITE_PATTERN",
        doc="Regexes of paths read and written remotely.",
    )
    read_only: RegexList = setting(
        factory=RegexList,
        env="MIRRORD_FILE_READ_ONLY_PATTERN",
        doc="Regexes of paths read remotely; opening them for writing opens them locally.",
    )
    local: RegexList = setting(
        factory=RegexList,
        env="MIRRORD_FILE_LOCAL_PATTERN",
        doc="Regexes of paths that are always opened locally.",
    )

    @classmethod
    def from_shorthand(cls, value: Any) -> Mapping[str, Any]:
        """``fs = "write"`` is ``fs = {mode = "write"}``; ``true``/``false`` toggle it."""
        if isinstance(value, Mapping):
            return value
        if isinstance(value, bool):
            return {} if value else {"mode": FsMode.LOCAL.value}
        if isinstance(value, str):
            return {"mode": value}
        raise ConfigValueError(
            f"expected a mode ({', '.join(MODE_NAMES)}), true/false or a table, "
            f"got {describe(value)}"
        )

    @classmethod
    def shorthand_schema(cls) -> list[dict[str, Any]]:
        return [{"type": "boolean"}, {"type": "string", "enum": list(MODE_NAMES)}]
