"""A short in-process cache that every replica empties together, through a Redis channel.

Used for what must stop being believed everywhere within a second (a removed user, a revoked
API key, a reset device): `invalidate()` drops the entry here and publishes it; each
replica's listener drops it too. The TTL bounds staleness when a message is missed (Redis
away, listener restarting). Two rules keep a stale entry from surviving an invalidation: the
whole cache is dropped each time the listener's subscription is confirmed (whatever was
published while it was not listening is lost), and a value read while an invalidation
arrived is not stored (it may have been read before the change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from iotcore.platform.redis import Redis
from iotcore.platform.shutdown import cancelling, stop_task

V = TypeVar("V")
EVERYTHING = "*"
log = logging.getLogger("iotcore.cache")


class SharedInvalidationCache(Generic[V]):
    def __init__(self, redis: Redis, name: str, ttl_s: float, max_entries: int = 100_000) -> None:
        self._redis = redis
        self._ttl = ttl_s
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, V]] = {}
        self._dropped_at = 0.0  # time.monotonic() of the last drop
        self._channel = redis.key("invalidate", name)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        # Called with the key (or EVERYTHING) on every drop, local or from another replica.
        self.listeners: list[Callable[[str], None]] = []

    async def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name=f"{self._channel}-listener")

    async def close(self) -> None:
        if self._listener is not None:
            await stop_task(self._listener)
            self._listener = None

    async def wait_subscribed(self, timeout_s: float = 5.0) -> None:
        """For tests and start-up: the listener is receiving invalidations."""
        await asyncio.wait_for(self._subscribed.wait(), timeout_s)

    async def _listen(self) -> None:
        while not cancelling():  # see platform/shutdown.py
            pubsub = self._redis.client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                async for message in pubsub.listen():
                    kind = message.get("type")
                    if kind == "subscribe":
                        self._drop(EVERYTHING)  # listening from now on; before, missed
                        self._subscribed.set()
                    elif kind == "message":
                        self._drop(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: the TTL still bounds staleness; retry soon
                self._subscribed.clear()
                self._drop(EVERYTHING, notify=False)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _drop(self, key: str, notify: bool = True) -> None:
        self._dropped_at = time.monotonic()
        if key == EVERYTHING:
            self._entries.clear()
        else:
            self._entries.pop(key, None)
        if notify:
            for listener in self.listeners:
                try:
                    listener(key)
                except Exception:
                    log.exception("invalidation listener failed", extra={"cache": self._channel})

    def get(self, key: str) -> tuple[bool, V | None]:
        """(found, value) while the entry is fresh; (False, None) otherwise."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, key: str, value: V, fetched_at: float) -> None:
        """Store a value read at `fetched_at` (time.monotonic() taken before the read), unless
        something was dropped since: the read may predate that change."""
        if fetched_at <= self._dropped_at:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[key] = (fetched_at + self._ttl, value)

    async def invalidate(self, key: str = EVERYTHING) -> None:
        self._drop(key)
        with contextlib.suppress(Exception):
            await self._redis.client.publish(self._channel, key)
