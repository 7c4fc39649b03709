"""The ``mirrord`` command line."""

from mirrord_core.cli.main import main

__all__ = ["main"]
