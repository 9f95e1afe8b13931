"""The latest-values read answers from the writer's Redis hash through connections of its
own (HashReads), and those connections survive callers that go away mid-command."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer

from iotcore.app import create_app
from iotcore.config import Settings
from iotcore.platform.context import Platform
from iotcore.telemetry.derived import HashReads
from iotcore.telemetry.read.service import LATEST_READ_CONNECTIONS
from tests.conftest import free_port
from tests.support.devices import claimed_device
from tests.support.telemetry import post_telemetry
from tests.support.users import register

Client = TestClient  # type: ignore[type-arg]


async def test_latest_answers_from_the_hash_even_past_its_connections(
    client: Client, settings: Settings, platform: Platform
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    assert (await post_telemetry(client, device, {"metrics": {"v": 1.0}})).status == 202
    key = platform.redis.key("latest", str(owner.tenant_id), device.device_id)
    # A value only the hash has: an answer from the database would not show it.
    await platform.redis.client.hset(key, "w", orjson.dumps([1_767_225_600_000, 7.5]))
    url = f"/api/v1/devices/{device.device_id}/telemetry/latest"

    async def latest() -> Any:
        response = await client.get(url, headers=owner.headers)
        assert response.status == 200
        return await response.json()

    answers = await asyncio.gather(*(latest() for _ in range(3 * LATEST_READ_CONNECTIONS)))
    for answer in answers:
        assert list(answer["metrics"]) == ["v", "w"]
        assert answer["metrics"]["w"] == {"ts": "2026-01-01T00:00:00.000Z", "value": 7.5}


async def test_with_redis_down_latest_reads_the_database(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    assert (await post_telemetry(client, device, {"metrics": {"v": 3.0}})).status == 202
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with TestClient(TestServer(create_app(down))) as replica:
        response = await replica.get(
            f"/api/v1/devices/{device.device_id}/telemetry/latest", headers=owner.headers
        )
        assert response.status == 200, await response.text()
        assert (await response.json())["metrics"]["v"]["value"] == 3.0


async def test_a_read_cancelled_mid_reply_leaves_nothing_behind(platform: Platform) -> None:
    """A caller that goes away while a long reply streams in (a client disconnecting): the
    one connection must not hand the rest of that reply to the next caller."""
    reads = HashReads(platform.redis, 1)
    small, big = platform.redis.key("test-hash", "small"), platform.redis.key("test-hash", "big")
    await platform.redis.client.hset(small, "x", b"1")
    await platform.redis.client.hset(big, mapping={f"f{i}": b"v" * 100 for i in range(100_000)})
    try:
        for delay in (0.0, 0.001, 0.003, 0.01):
            assert await reads.hgetall(small) == {b"x": b"1"}  # connected, idle
            cancelled = asyncio.ensure_future(reads.hgetall(big))
            await asyncio.sleep(delay)
            cancelled.cancel()
            await asyncio.gather(cancelled, return_exceptions=True)
            assert await reads.hgetall(small) == {b"x": b"1"}, f"cancelled after {delay} s"
    finally:
        await reads.close()
        await platform.redis.client.delete(small, big)
