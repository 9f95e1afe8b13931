"""Polling observable state instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10, every_s: float = 0.05
) -> bool:
    """Whether `predicate` (plain or async) came true within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if await result if inspect.isawaitable(result) else result:
            return True
        await asyncio.sleep(every_s)
    return False
