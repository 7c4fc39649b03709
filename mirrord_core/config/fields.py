"""The field factory every config class uses, and the metadata it records.

A config field says where else its value may come from: an environment variable
(``env``) and ``mirrord run`` flags (``flags``). The resolver, the CLI, the JSON schema
and the docs all read this metadata, so a plugin declares a key once and gets all four.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

_META_KEY = "mirrord"


class _NoConst:
    """Marks a flag that takes an argument instead of storing a constant."""

    def __repr__(self) -> str:
        return "NO_CONST"


NO_CONST = _NoConst()


@attrs.frozen(kw_only=True)
class Flag:
    """A ``mirrord run`` flag that sets this field.

    ``names`` are argparse option strings (``("-t", "--target")``). With ``const`` set the
    flag takes no argument and stores that value; otherwise it takes one string argument
    that is parsed exactly like the field's environment variable.
    """

    names: tuple[str, ...]
    help: str
    const: Any = NO_CONST
    metavar: str | None = None

    @property
    def takes_argument(self) -> bool:
        return self.const is NO_CONST

    @property
    def dest(self) -> str:
        longest = max(self.names, key=len)
        return longest.lstrip("-").replace("-", "_")


@attrs.frozen(kw_only=True)
class FieldMeta:
    """What the config layer knows about a field besides its type and default."""

    doc: str
    env: str | None = None
    env_parser: Callable[[str], Any] | None = None
    flags: tuple[Flag, ...] = ()


def setting(
    *,
    doc: str,
    default: Any = attrs.NOTHING,
    factory: Callable[[], Any] | None = None,
    env: str | None = None,
    env_parser: Callable[[str], Any] | None = None,
    flags: tuple[Flag, ...] = (),
) -> Any:
    """Declare a config key: its documentation, default and other sources.

    ``env_parser`` replaces the type's own text parser for mirrord variables whose text
    form differs from the file form (``MIRRORD_AGENT_TCP_STEAL_TRAFFIC=true`` means steal).
    """
    meta = FieldMeta(doc=doc, env=env, env_parser=env_parser, flags=flags)
    if factory is not None:
        return attrs.field(factory=factory, metadata={_META_KEY: meta})
    return attrs.field(default=default, metadata={_META_KEY: meta})


def field_meta(field: attrs.Attribute) -> FieldMeta:
    """The metadata of a config field; a field declared without :func:`setting` is a bug."""
    try:
        return field.metadata[_META_KEY]
    except KeyError:
        raise TypeError(
            f"config field {field.name!r} must be declared with mirrord_core.config.setting()"
        ) from None
