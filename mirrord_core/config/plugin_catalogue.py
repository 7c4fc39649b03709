"""Which first-party distribution provides which config section.

The core knows no feature's behaviour, but when a config names a section whose plugin is
not installed, the user needs to be told what to install; this table is only that.
"""

from __future__ import annotations

FIRST_PARTY_SECTIONS = {
    "feature.fs": "mirrord-fs",
    "feature.env": "mirrord-env",
    "feature.network": "mirrord-network",
    "target": "mirrord-target",
}


def distribution_for_section(path: str) -> str | None:
    """The distribution that provides the section at ``path``, if it is a first-party one."""
    return FIRST_PARTY_SECTIONS.get(path)
