"""The fs plugin's hook implementations."""

from __future__ import annotations

from collections.abc import Mapping

from mirrord_core.hookspecs import hookimpl
from mirrord_fs.config import FsConfig


@hookimpl
def register_config_sections() -> Mapping[str, type]:
    return {"feature.fs": FsConfig}
