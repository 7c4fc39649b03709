"""The ``feature.hello`` section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from mirrord_core.config import ConfigValueError, describe, setting


@attrs.frozen(kw_only=True)
class HelloConfig:
    """Greets the user's process through its environment."""

    enabled: bool = setting(
        default=True,
        env="MIRRORD_HELLO_ENABLED",
        doc="Whether the process gets the HELLO_GREETING variable.",
    )
    greeting: str = setting(
        default="hello",
        env="MIRRORD_HELLO_GREETING",
        doc="The value of HELLO_GREETING.",
    )

    @classmethod
    def from_shorthand(cls, value: Any) -> Mapping[str, Any]:
        """``hello = true/false`` toggles the feature."""
        if isinstance(value, Mapping):
            return value
        if isinstance(value, bool):
            return {"enabled": value}
        raise ConfigValueError(f"expected true/false or a table, got {describe(value)}")

    @classmethod
    def shorthand_schema(cls) -> list[dict[str, Any]]:
        return [{"type": "boolean"}]
