"""Waiting for something another task, thread or process makes true, without fixed sleeps."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _describe(condition: Callable[..., Any]) -> str:
    """The condition's source line (a lambda) or name, for a failure message."""
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return getattr(condition, "__qualname__", repr(condition))


async def poll(
    condition: Callable[[], T | Awaitable[T]],
    what: str | Callable[[], str] | None = None,
    *,
    timeout: float = 10.0,
    interval: float = 0.005,
) -> T:
    """Call ``condition`` (plain or async) until it returns something truthy; returns that.

    Fails the test after ``timeout`` seconds with ``what`` (a text, or a function called then
    that says what was seen) naming what never happened, and the last value seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        value = await result if inspect.isawaitable(result) else result
        if value:
            return value
        if loop.time() > deadline:
            if what is None:
                described = _describe(condition)
            else:
                described = what if isinstance(what, str) else what()
            raise AssertionError(
                f"timed out after {timeout} s waiting for {described} (last: {value!r})"
            )
        await asyncio.sleep(interval)
