"""Live streams are bounded: open streams are capped per user and per tenant (429 beyond, on
every replica alike), a closed stream frees its slot, and the streams of a tenant share one
Redis read drawn from a bounded pool instead of holding a connection each."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from iotcore.platform.context import SETTINGS_KEY
from tests.conftest import REDIS_URL, ApiFactory
from tests.support.devices import claimed_device
from tests.support.telemetry import post_telemetry
from tests.support.users import add_user, register

Client = TestClient  # type: ignore[type-arg]

STREAM = "/api/v1/telemetry/stream"


def _prefix() -> str:
    return f"iottest:{uuid.uuid4().hex}:"


async def _open(client: Client, headers: dict[str, str]) -> Any:
    return await client.get(STREAM, headers=headers)


async def _first_event(response: Any, timeout: float) -> bytes:
    async def read() -> bytes:
        async for line in response.content:
            if line.startswith(b"data: "):
                return bytes(line)
        return b""

    return await asyncio.wait_for(read(), timeout)


async def test_live_streams_are_capped_per_user_and_per_tenant(api_with: ApiFactory) -> None:
    client = await api_with(stream_max_per_user=2, stream_max_per_tenant=3, redis_prefix=_prefix())
    owner = await register(client)
    viewer = await add_user(client, owner, "viewer")
    stranger = await register(client)
    opened = [await _open(client, owner.headers), await _open(client, owner.headers)]
    assert [r.status for r in opened] == [200, 200]
    over_user = await _open(client, owner.headers)
    assert over_user.status == 429
    assert (await over_user.json())["error"]["code"] == "rate_limited"
    assert int(over_user.headers["Retry-After"]) >= 1
    opened.append(await _open(client, viewer.headers))
    assert opened[-1].status == 200
    over_tenant = await _open(client, viewer.headers)
    assert over_tenant.status == 429
    # Another tenant is not affected by this one's streams.
    opened.append(await _open(client, stranger.headers))
    assert opened[-1].status == 200
    # Closing a stream frees its slot (the server notices the closed connection).
    opened.pop(0).close()
    deadline = time.monotonic() + 30
    while True:
        again = await _open(client, owner.headers)
        if again.status == 200 or time.monotonic() > deadline:
            break
        again.close()
        await asyncio.sleep(0.5)
    assert again.status == 200
    opened.append(again)
    for response in opened:
        response.close()


async def test_streams_share_a_bounded_set_of_redis_connections(api_with: ApiFactory) -> None:
    prefix = _prefix()
    client = await api_with(
        stream_max_per_user=20,
        stream_max_per_tenant=20,
        stream_redis_connections=2,
        redis_prefix=prefix,
    )
    owner = await register(client)
    device = await claimed_device(client, client.app[SETTINGS_KEY], owner)
    streams = [await _open(client, owner.headers) for _ in range(8)]
    assert [s.status for s in streams] == [200] * 8
    redis = aioredis.from_url(REDIS_URL)
    try:
        clients = await redis.client_list()
    finally:
        await redis.aclose()
    mine = [c for c in clients if c.get("name") == f"{prefix}live"]
    # Eight viewers, one tenant: one shared blocking read, never more than the pool.
    assert 1 <= len(mine) <= 2, mine
    await post_telemetry(client, device, {"metrics": {"shared": 1}})
    events = await asyncio.gather(*(_first_event(s, 20) for s in streams))
    assert all(b'"shared":1' in e for e in events), events
    for response in streams:
        response.close()
