"""The shared infrastructure one process holds: settings, database pools, Redis and the
named queries, built once at start and handed to every service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from iotcore.config import Settings
from iotcore.platform.db import Database
from iotcore.platform.redis import Redis
from iotcore.platform.sql import queries

ReadinessCheck = Callable[[], Awaitable[None]]


@dataclass
class Platform:
    settings: Settings
    db: Database
    redis: Redis
    # Extra readiness checks registered by roles running in this process (e.g. ingest).
    readiness_checks: dict[str, ReadinessCheck] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Platform:
        return cls(settings=settings, db=Database(settings), redis=Redis(settings))

    def queries(self, domain: str) -> dict[str, str]:
        """The named queries of sql/<domain>.sql, from the settings' `sql_dir`."""
        return queries(domain, self.settings.sql_dir)

    async def start(self) -> None:
        await self.db.connect()

    async def close(self) -> None:
        await self.db.close()
        await self.redis.close()


PLATFORM_KEY = web.AppKey("platform", Platform)
SETTINGS_KEY = web.AppKey("settings", Settings)
