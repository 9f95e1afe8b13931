"""The writer's cache update after a commit: latest values per (tenant, device) in Redis."""

from __future__ import annotations

import uuid

import orjson

from iotcore.platform.context import Platform
from iotcore.telemetry.cache import TelemetryCache
from iotcore.telemetry.derived import latest_key


async def _latest(platform: Platform, tenant: str, device: str) -> dict[str, list[float]]:
    stored = await platform.redis.client.hgetall(latest_key(platform.redis, tenant, device))
    return {k.decode(): orjson.loads(v) for k, v in stored.items()}


async def test_latest_values_of_many_devices_in_one_call_and_never_an_older_one(
    platform: Platform,
) -> None:
    cache = TelemetryCache(platform.redis)
    tenant, first, second = (str(uuid.uuid4()) for _ in range(3))
    await cache.after_commit(
        [],
        [
            [tenant, first, "a", 2_000, 1.5],
            [tenant, first, "b", 2_000, 0.1 + 0.2],
            [tenant, second, "a", 3_000, -1.0],
        ],
    )
    # A batch committed later that carries an older reading of first.a (batches race):
    # the newer value stays; a newer one of second.a replaces its value.
    await cache.after_commit(
        [], [[tenant, first, "a", 1_000, 9.0], [tenant, second, "a", 4_000, 7.25]]
    )
    assert await _latest(platform, tenant, first) == {"a": [2_000, 1.5], "b": [2_000, 0.1 + 0.2]}
    assert await _latest(platform, tenant, second) == {"a": [4_000, 7.25]}


async def test_latest_values_still_kept_after_redis_lost_its_scripts(platform: Platform) -> None:
    cache = TelemetryCache(platform.redis)
    tenant, device = str(uuid.uuid4()), str(uuid.uuid4())
    await cache.after_commit([], [[tenant, device, "a", 1_000, 1.0]])
    await platform.redis.client.script_flush()  # as after a Redis restart
    await cache.after_commit([], [[tenant, device, "a", 2_000, 2.0]])
    assert await _latest(platform, tenant, device) == {"a": [2_000, 2.0]}
