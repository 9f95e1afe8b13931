"""Token buckets against the real Redis: concurrent takes coalesced into one script call
are charged exactly as separate calls would be."""

from __future__ import annotations

import asyncio
import time
import uuid

from iotcore.platform.context import Platform
from iotcore.platform.ratelimit import Bucket, TokenBuckets


async def test_coalesced_takes_allow_exactly_the_burst_and_charge_every_bucket(
    platform: Platform,
) -> None:
    redis = platform.redis
    device = Bucket(redis.key("tb", "test-device", uuid.uuid4().hex), 1, 3)
    tenant = Bucket(redis.key("tb", "test-tenant", uuid.uuid4().hex), 1, 100)
    other = Bucket(redis.key("tb", "test-device", uuid.uuid4().hex), 1, 3)
    buckets = TokenBuckets(redis)
    now = int(time.time() * 1000)
    waits = await asyncio.gather(
        *(buckets.take([device, tenant], now) for _ in range(10)),
        *(buckets.take([other, tenant], now) for _ in range(2)),
    )
    # Three fit the first device's burst; the refused ones are told to wait about a second
    # (1 token a second); the other device's two both fit.
    assert waits[:3] == [0, 0, 0]
    assert all(0.9 <= w <= 1.0 for w in waits[3:10])
    assert waits[10:] == [0, 0]
    # Only the five allowed takes were charged to the shared tenant bucket.
    tokens = float(await redis.client.hget(tenant.key, "t"))
    assert 94.9 <= tokens <= 95.1
    # A take on its own (another instance, nothing to coalesce with) agrees: it is empty.
    assert await TokenBuckets(redis).take([device, tenant], now) > 0


async def test_a_redis_error_reaches_every_coalesced_caller(platform: Platform) -> None:
    redis = platform.redis
    buckets = TokenBuckets(redis)
    # A key of the wrong type makes the script fail: Redis answers with an error.
    broken = Bucket(redis.key("tb", "test-broken", uuid.uuid4().hex), 1, 3)
    await redis.client.set(broken.key, "not a hash")
    results = await asyncio.gather(
        *(buckets.take([broken], 0, cost=1) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, Exception) for r in results)
