"""The hello plugin's hook implementations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirrord_core.hookspecs import hookimpl
from mirrord_hello.config import HelloConfig


@hookimpl
def register_config_sections() -> Mapping[str, type]:
    return {"feature.hello": HelloConfig}


@hookimpl
def filter_env(config: Any, remote_env: Mapping[str, str]) -> Mapping[str, str] | None:
    hello: HelloConfig = config.feature.hello
    if not hello.enabled:
        return None
    return {**remote_env, "HELLO_GREETING": hello.greeting}
