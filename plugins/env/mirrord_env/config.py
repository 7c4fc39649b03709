"""The ``feature.env`` section: which of the target's environment variables the process gets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from mirrord_core.config import ConfigValueError, Flag, SemicolonList, describe, setting


@attrs.frozen(kw_only=True)
class EnvConfig:
    """Controls the environment variables feature: include, exclude and override."""

    include: SemicolonList = setting(
        default=SemicolonList(["*"]),
        env="MIRRORD_OVERRIDE_ENV_VARS_INCLUDE",
        flags=(
            Flag(
                names=("-s", "--override-env-vars-include"),
                help="remote environment variables to include, separated by ';' (default '*')",
            ),
        ),
        doc="Remote variables the process gets (names or wildcards, ';'-separated or a "
        "list); default '*', everything but the variables excluded by default.",
    )
    exclude: SemicolonList = setting(
        factory=SemicolonList,
        env="MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE",
        flags=(
            Flag(
                names=("-x", "--override-env-vars-exclude"),
                help="remote environment variables to leave out, separated by ';'",
            ),
        ),
        doc="Remote variables the process does not get (names or wildcards).",
    )
    override: dict[str, str] = setting(
        factory=dict,
        doc="Variables set locally to these values whatever the target has.",
    )

    @classmethod
    def from_shorthand(cls, value: Any) -> Mapping[str, Any]:
        """``env = true`` is the default; ``env = false`` takes no remote variables."""
        if isinstance(value, Mapping):
            return value
        if isinstance(value, bool):
            return {} if value else {"include": [], "exclude": ["*"]}
        raise ConfigValueError(f"expected true/false or a table, got {describe(value)}")

    @classmethod
    def shorthand_schema(cls) -> list[dict[str, Any]]:
        return [{"type": "boolean"}]
