"""The target plugin's hook implementations."""

from __future__ import annotations

from collections.abc import Mapping

from mirrord_core.hookspecs import hookimpl
from mirrord_target.config import TargetConfig


@hookimpl
def register_config_sections() -> Mapping[str, type]:
    return {"target": TargetConfig}
