"""A second API replica: its own app, pools, Redis client and caches, sharing Postgres and
Redis with the module's `client`, as two `iotcore api` processes behind a load balancer do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp.test_utils import TestClient, TestServer

from iotcore.app import create_app
from iotcore.config import Settings
from iotcore.platform.context import Platform


@asynccontextmanager
async def second_replica(settings: Settings) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    platform = Platform.from_settings(settings)
    await platform.start()
    try:
        async with TestClient(TestServer(create_app(settings, platform))) as client:
            yield client
    finally:
        await platform.close()
