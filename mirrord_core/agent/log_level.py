"""Turning mirrord's ``RUST_LOG``-style ``agent.log_level`` into Python logging levels."""

from __future__ import annotations

import logging

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}


def python_level(log_level: str) -> int:
    """The most verbose level named in ``log_level`` (``"mirrord=trace,warn"`` → DEBUG).

    RUST_LOG directives are ``[target=]level`` separated by commas; targets mean nothing
    to a Python agent, so the most verbose level any directive asks for applies.
    """
    levels = []
    for directive in log_level.split(","):
        name = directive.rpartition("=")[2].strip().lower()
        if name in _LEVELS:
            levels.append(_LEVELS[name])
    return min(levels) if levels else logging.INFO
