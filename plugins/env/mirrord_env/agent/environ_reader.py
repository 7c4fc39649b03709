"""Reading the target's environment from ``/proc/PID/environ``."""

from __future__ import annotations

import os


def parse_environ(raw: bytes) -> dict[str, str]:
    """Parse the NUL-separated ``NAME=value`` records of ``/proc/PID/environ``.

    Records without ``=`` (a process may write anything into its environment block) are
    skipped; bytes that are not UTF-8 are kept through ``surrogateescape``.
    """
    env: dict[str, str] = {}
    for record in raw.split(b"\0"):
        name, sep, value = record.partition(b"=")
        if not sep or not name:
            continue
        env[os.fsdecode(name)] = os.fsdecode(value)
    return env


def read_environ(pid: int) -> dict[str, str]:
    """The environment process ``pid`` started with."""
    with open(f"/proc/{pid}/environ", "rb") as environ:
        return parse_environ(environ.read())
