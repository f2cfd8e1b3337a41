"""Run the daemons' event loop: uvloop where it is installed, asyncio's own otherwise.

Used by `erel-sync agent` and `publisher` (and the scale benchmark's agent workers). uvloop
(libuv) takes about a sixth off the agent's CPU per snapshot (AMQP frames, tasks, thread
hand-offs; docs/performance.md); nothing in erel-sync depends on it, so a platform without it
runs unchanged on asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
M_ARENA_MAX = -8  # mallopt parameter (malloc.h)


def name() -> str:
    """`uvloop` when installed, unless EREL_EVENT_LOOP=asyncio asks for asyncio's own loop."""
    if os.environ.get("EREL_EVENT_LOOP", "").lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: PLC0415, F401 - optional
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(coro: Coroutine[Any, Any, T]) -> T:
    if name() == "uvloop":
        import uvloop  # noqa: PLC0415

        return uvloop.run(coro)
    return asyncio.run(coro)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own arena and keeps their freed pages; a
    long-lived daemon with a few helper threads then carries several partly used arenas.
    Call before any thread starts."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
