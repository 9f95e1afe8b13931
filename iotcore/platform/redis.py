"""The Redis client, with every key under one configurable prefix."""

from __future__ import annotations

import redis.asyncio as aioredis

from iotcore.config import Settings


class Redis:
    """A thin holder: the client plus the key prefix that keeps deployments and test runs apart."""

    def __init__(self, settings: Settings) -> None:
        self.prefix = settings.redis_prefix
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            health_check_interval=15,
            decode_responses=False,
        )

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def close(self) -> None:
        await self.client.aclose()
