"""mirrord's configuration: attrs classes, strict cattrs structuring, mirrord's sources.

Plugins declare their sections with :func:`setting` fields on ``@attrs.frozen(kw_only=True)``
classes and return them from ``register_config_sections``; :func:`resolve` turns a file,
the environment and run flags into one frozen tree.
"""

from mirrord_core.config.core_sections import AgentConfig
from mirrord_core.config.errors import ConfigError, ConfigProblem, ConfigValueError
from mirrord_core.config.fields import FieldMeta, Flag, field_meta, setting
from mirrord_core.config.layout import ConfigLayout, LayoutError, SectionSpec
from mirrord_core.config.resolver import CONFIG_FILE_ENV, ResolvedConfig, resolve
from mirrord_core.config.values import (
    ChoiceString,
    ConfigValue,
    HostPort,
    PortList,
    PortMapping,
    Regex,
    RegexList,
    SemicolonList,
    StringList,
    UInt16,
    UInt64,
    describe,
    parse_bool_text,
)

__all__ = [
    "CONFIG_FILE_ENV",
    "AgentConfig",
    "ChoiceString",
    "ConfigError",
    "ConfigLayout",
    "ConfigProblem",
    "ConfigValue",
    "ConfigValueError",
    "FieldMeta",
    "Flag",
    "HostPort",
    "LayoutError",
    "PortList",
    "PortMapping",
    "Regex",
    "RegexList",
    "ResolvedConfig",
    "SectionSpec",
    "SemicolonList",
    "StringList",
    "UInt16",
    "UInt64",
    "describe",
    "field_meta",
    "parse_bool_text",
    "resolve",
    "setting",
]
