"""How the CLI talks to the user: warnings and errors on stderr, results on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

_stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """Print a warning line on stderr."""
    _stderr.print(f"[yellow]mirrord: warning:[/yellow] {message}", markup=True, emoji=False)


def error(message: str) -> None:
    """Print an error (possibly several lines) on stderr."""
    _stderr.print("[red]mirrord: error:[/red] ", end="", markup=True)
    _stderr.print(message, markup=False, emoji=False)


def print_json(document: Any) -> None:
    """Print a JSON document on stdout (plain, so it can be piped)."""
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()
