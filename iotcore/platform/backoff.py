"""Exponential backoff with jitter, for loops that retry a dependency until it answers."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Waits of `first_s`, then twice as long each time up to `max_s`, each drawn from half to
    one and a half of its step, so that replicas retrying together drift apart."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self._first_s = first_s
        self._max_s = max_s
        self._step_s = first_s

    def reset(self) -> None:
        """After a success: the next failure waits `first_s` again."""
        self._step_s = self._first_s

    def next_delay(self) -> float:
        delay = self._step_s * (0.5 + random.random())
        self._step_s = min(self._step_s * 2, self._max_s)
        return delay

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())
