"""The shared-invalidation cache: an entry dropped on one replica is dropped on the others
through Redis, long before its TTL would have expired it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest_asyncio

from iotcore.config import Settings
from iotcore.platform.cache import SharedInvalidationCache
from iotcore.platform.redis import Redis


@pytest_asyncio.fixture
async def two_replicas(settings: Settings) -> AsyncIterator[list[SharedInvalidationCache[str]]]:
    clients = [Redis(settings), Redis(settings)]
    caches = [SharedInvalidationCache[str](r, "test", ttl_s=60) for r in clients]
    for cache in caches:
        await cache.start()
        await cache.wait_subscribed()
    try:
        yield caches
    finally:
        for cache, client in zip(caches, clients, strict=True):
            await cache.close()
            await client.close()


async def until(condition: object, within_s: float) -> float:
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - started < within_s, "not within the deadline"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_invalidation_reaches_the_other_replica(
    two_replicas: list[SharedInvalidationCache[str]],
) -> None:
    here, there = two_replicas
    now = time.monotonic()
    for cache in (here, there):
        cache.put("a", "A", now)
        cache.put("b", "B", now)
    await here.invalidate("a")
    assert here.get("a") == (False, None)
    elapsed = await until(lambda: there.get("a") == (False, None), within_s=1.0)
    assert elapsed < 1.0
    assert there.get("b") == (True, "B"), "only the named entry is dropped"
    await here.invalidate()
    await until(lambda: there.get("b") == (False, None), within_s=1.0)


async def test_entries_expire_after_the_ttl_counted_from_the_read(settings: Settings) -> None:
    redis = Redis(settings)
    cache = SharedInvalidationCache[str](redis, "ttl", ttl_s=0.2)
    try:
        cache.put("k", "v", time.monotonic() - 0.3)
        assert cache.get("k") == (False, None)
        cache.put("k", "v", time.monotonic())
        assert cache.get("k") == (True, "v")
    finally:
        await redis.close()
