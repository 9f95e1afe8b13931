"""The shared-invalidation cache: an entry dropped on one replica is dropped on the others
through Redis, long before its TTL would have expired it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest_asyncio

from iotcore.config import Settings
from iotcore.platform.cache import EVERYTHING, SharedInvalidationCache
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


async def test_a_value_read_while_an_invalidation_came_is_not_kept(settings: Settings) -> None:
    redis = Redis(settings)
    cache = SharedInvalidationCache[str](redis, "race", ttl_s=60)
    try:
        read_started = time.monotonic()
        await cache.invalidate("k")  # the change lands while the read is under way
        cache.put("k", "as read before the change", read_started)
        assert cache.get("k") == (False, None)
        cache.put("k", "as read after it", time.monotonic())
        assert cache.get("k") == (True, "as read after it")
    finally:
        await redis.close()


async def test_a_confirmed_subscription_drops_what_was_kept_before_it(
    settings: Settings,
) -> None:
    """Invalidations published while no listener ran are lost: what was cached then goes."""
    redis = Redis(settings)
    cache = SharedInvalidationCache[str](redis, "resubscribe", ttl_s=60)
    dropped: list[str] = []
    cache.listeners.append(dropped.append)
    try:
        cache.put("k", "v", time.monotonic())
        assert cache.get("k") == (True, "v")
        await cache.start()
        await cache.wait_subscribed()
        assert cache.get("k") == (False, None)
        assert dropped == [EVERYTHING]
    finally:
        await cache.close()
        await redis.close()
