"""Periodic jobs, run as the owner role: daily partitions ahead and retention (native
partitioning; on TimescaleDB, chunk retention), expired refresh tokens, reject pruning."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from iotcore.config import Settings
from iotcore.platform.sql import queries

log = logging.getLogger("iotcore.maintenance")
SQL = queries("telemetry")
AUTH_SQL = queries("auth")
INTERVAL_S = 3600


@dataclass(frozen=True)
class MaintenanceReport:
    partitions_created: int
    partitions_dropped: int
    rejects_pruned: int
    refresh_tokens_pruned: int


async def run_once(settings: Settings) -> MaintenanceReport:
    conn = await asyncpg.connect(settings.database_owner_url, timeout=settings.database_timeout_s)
    try:
        created = await conn.fetchval(SQL["ensure_partitions"], settings.partitions_ahead_days + 1)
        dropped = await conn.fetchval(SQL["drop_partitions"], settings.telemetry_retention_days)
        pruned = await conn.execute(SQL["prune_rejects"], settings.reject_retention_days)
        tokens = await conn.execute(AUTH_SQL["prune_refresh_tokens"])
    finally:
        await conn.close()
    report = MaintenanceReport(created, dropped, int(pruned.split()[-1]), int(tokens.split()[-1]))
    log.info("maintenance done", extra=report.__dict__)
    return report


async def run_forever(settings: Settings) -> None:
    while True:
        try:
            await run_once(settings)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("maintenance failed; will retry", extra={"error": str(exc)})
            await asyncio.sleep(60)
            continue
        await asyncio.sleep(INTERVAL_S)
