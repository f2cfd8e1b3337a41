"""Waiting on a condition with a deadline: the one way tests synchronise (never a bare sleep).

`eventually` for async tests (the check may be a plain function or a coroutine function),
`wait_for` for synchronous code such as the e2e harness. Both poll every `every` seconds and
fail with `what` and the last value seen when the deadline passes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    within: float = 60.0,
    *,
    what: str = "",
    every: float = 0.02,
) -> T:
    """Return the first truthy value of `condition()`; AssertionError after `within` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"not within {within:g}s: {what or condition!r} (last: {value!r})")
        await asyncio.sleep(every)  # polling interval, not a synchronisation


# What a check of files another process writes may raise meanwhile (a file not there yet, a
# document without the key yet): the condition is just not met.
NOT_YET: tuple[type[Exception], ...] = (OSError, KeyError, TypeError, ValueError)


def wait_for(
    what: str,
    check: Callable[[], T],
    timeout: float = 60.0,
    every: float = 0.05,
    *,
    not_yet: tuple[type[Exception], ...] = NOT_YET,
) -> T:
    """The synchronous `eventually`: the first truthy `check()` (an exception in `not_yet`
    counts as not yet), or AssertionError naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value: object = check()
        except not_yet as e:
            value = e
        if value and not isinstance(value, Exception):
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(every)  # polling interval, not a synchronisation
