"""What the user sees while mirrord finds the target and starts the agent.

On a terminal, a spinner shows the current step (resolving the target, creating the
agent, waiting for it, port-forwarding) and each finished task leaves one line; otherwise
every step is a plain line on stderr, so logs and CI output stay readable.
``MIRRORD_PROGRESS_MODE=off`` silences it (mirrord's variable of the same name).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.status import Status

PROGRESS_MODE_ENV = "MIRRORD_PROGRESS_MODE"
SPINNER = "dots"


class Progress:
    """One task (e.g. "starting the agent") made of steps; a context manager.

    ``step(text)`` says what is happening now; leaving the ``with`` block prints the
    outcome given to :meth:`done` (nothing when the task failed: the error says it).
    """

    def __init__(self, task: str, stream: TextIO | None = None, mode: str | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        mode = (mode or os.environ.get(PROGRESS_MODE_ENV, "")).strip().lower()
        if mode not in ("off", "simple", "standard"):
            mode = "standard" if self._stream.isatty() else "simple"
        self.mode = mode
        self._task = task
        self._outcome: str | None = None
        self._console = Console(file=self._stream, highlight=False, soft_wrap=True)
        self._status: Status | None = None
        self._step: str | None = None

    def __enter__(self) -> Progress:
        if self.mode == "standard":
            self._status = self._console.status(escape(f"{self._task}…"), spinner=SPINNER)
            self._status.start()
            self._draw(f"{self._task}…")
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if exc_type is None and self._outcome is not None and self.mode != "off":
            if self.mode == "standard":
                self._console.print(f"[green]✓[/green] {escape(self._outcome)}", emoji=False)
            else:
                self._plain(self._outcome)

    def step(self, text: str) -> None:
        """Say what is happening now (saying it again changes nothing)."""
        if text == self._step:
            return
        self._step = text
        if self._status is not None:
            self._draw(f"{self._task}: {text}…")
        elif self.mode == "simple":
            self._plain(f"{self._task}: {text}")

    def done(self, outcome: str) -> None:
        """What to print when the task ends without an error."""
        self._outcome = outcome

    def _draw(self, text: str) -> None:
        assert self._status is not None
        # Passing the spinner makes rich draw at once (a text-only update waits for the
        # refresh thread), so even a step shorter than a frame is shown.
        self._status.update(escape(text), spinner=SPINNER)

    def _plain(self, text: str) -> None:
        self._console.print(f"mirrord: {text}", markup=False, emoji=False)


@contextlib.contextmanager
def progress(task: str) -> Iterator[Progress]:
    """A :class:`Progress` for ``task`` on stderr."""
    with Progress(task) as shown:
        yield shown
