"""Running ``async def`` tests: a fresh event loop each, a hard timeout, no silent errors."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any


def async_test(timeout: float = 10.0) -> Callable[..., Callable[..., None]]:
    """Run an ``async def`` test in a fresh loop with a hard timeout.

    Errors the event loop would only log (a task's exception nobody retrieved, a failing
    callback) fail the test.
    """

    def decorate(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            problems: list[dict[str, Any]] = []

            async def main() -> None:
                loop = asyncio.get_running_loop()
                loop.set_exception_handler(lambda _loop, context: problems.append(context))
                await asyncio.wait_for(fn(*args, **kwargs), timeout)

            asyncio.run(main())
            assert not problems, f"unhandled errors in the event loop: {problems}"

        return wrapper

    return decorate
