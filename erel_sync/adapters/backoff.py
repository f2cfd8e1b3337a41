"""Backoff for the daemons' in-process retry loops: doubling delays, optional jitter, a sleep
that a stop event cuts short.

Used by the broker connection (`adapters.broker.messages.connect`), the session loop
(`adapters.broker.session.keep_session`), the publisher's publishing loop and the agent's
snapshot store retry: one rule instead of four hand-written loops. The persisted backoff of a
failed release (`core.reconcile.retry_backoff`) is another thing: pure, and it survives restarts.
Lives in `adapters` because it sleeps on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random


class Backoff:
    """Delays from `first` doubling up to `most`. `jitter` spreads each delay over
    [1 - jitter, 1 + jitter) times its value, so that a hundred agents retrying after one outage
    do not do it in lock step."""

    def __init__(self, first: float, most: float, *, jitter: float = 0.0) -> None:
        self.first, self.most, self.jitter = first, most, jitter
        self._next = first

    def next(self) -> float:
        """The delay to wait now; the one after it doubles."""
        delay = self._next
        self._next = min(self.most, delay * 2)
        if self.jitter:
            delay *= 1 - self.jitter + 2 * self.jitter * random.random()
        return delay

    def reset(self) -> None:
        """Back to `first` (after a success)."""
        self._next = self.first

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Sleep the next delay, or less if `stop` is set meanwhile; True when it was."""
        return await pause(self.next(), stop)


async def pause(seconds: float, stop: asyncio.Event | None = None) -> bool:
    """Sleep `seconds`, or until `stop` is set; True when `stop` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()
