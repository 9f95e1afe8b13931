"""Periodic jobs, run as the owner role: daily partitions ahead and retention (native
partitioning; on TimescaleDB, chunk retention), expired refresh tokens, reject pruning."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import asyncpg

from iotcore.config import Settings
from iotcore.platform.metrics import (
    DEFAULT_PARTITION_ROWS,
    MAINTENANCE_LAST_SUCCESS,
    MAINTENANCE_RUNS,
    MAINTENANCE_SECONDS,
)
from iotcore.platform.sql import queries

log = logging.getLogger("iotcore.maintenance")
SQL = queries("telemetry")
AUTH_SQL = queries("auth")
REPORT_SQL = queries("maintenance")
INTERVAL_S = 3600
RETRY_S = 60


@dataclass(frozen=True)
class MaintenanceReport:
    partitions_created: int
    partitions_dropped: int
    rejects_pruned: int
    refresh_tokens_pruned: int
    default_partition_rows: int


@dataclass
class MaintenanceStatus:
    """The outcome of the last pass, for `iotcore maintain`'s readiness check."""

    last_error: str | None = None

    async def check(self) -> None:
        if self.last_error is not None:
            raise RuntimeError(f"last maintenance pass failed: {self.last_error}")


async def run_once(settings: Settings) -> MaintenanceReport:
    conn = await asyncpg.connect(settings.database_owner_url, timeout=settings.database_timeout_s)
    try:
        created = await conn.fetchval(SQL["ensure_partitions"], settings.partitions_ahead_days + 1)
        dropped = await conn.fetchval(SQL["drop_partitions"], settings.telemetry_retention_days)
        pruned = await conn.execute(SQL["prune_rejects"], settings.reject_retention_days)
        tokens = await conn.execute(AUTH_SQL["prune_refresh_tokens"])
        default_rows = 0
        if await conn.fetchval(REPORT_SQL["default_partition_exists"]):
            default_rows = await conn.fetchval(REPORT_SQL["default_partition_rows"])
    finally:
        await conn.close()
    report = MaintenanceReport(
        created, dropped, int(pruned.split()[-1]), int(tokens.split()[-1]), default_rows
    )
    log.info("maintenance done", extra=report.__dict__)
    return report


async def run_observed(settings: Settings, status: MaintenanceStatus) -> MaintenanceReport | None:
    """One pass, counted in the metrics and remembered in `status`; a failure is logged, not
    raised, so the loop (and the process) keeps going."""
    started = time.monotonic()
    try:
        report = await run_once(settings)
    except Exception as exc:  # any failure is one failed pass; the next one may succeed
        MAINTENANCE_RUNS.labels("failed").inc()
        status.last_error = f"{type(exc).__name__}: {exc}"[:200]
        log.warning("maintenance failed; will retry", extra={"error": status.last_error})
        return None
    finally:
        MAINTENANCE_SECONDS.set(time.monotonic() - started)
    MAINTENANCE_RUNS.labels("ok").inc()
    MAINTENANCE_LAST_SUCCESS.set(time.time())
    DEFAULT_PARTITION_ROWS.set(report.default_partition_rows)
    status.last_error = None
    return report


async def run_forever(settings: Settings, status: MaintenanceStatus | None = None) -> None:
    status = status or MaintenanceStatus()
    for outcome in ("ok", "failed"):
        MAINTENANCE_RUNS.labels(outcome)  # both series exist from the start, at 0
    while True:
        report = await run_observed(settings, status)
        await asyncio.sleep(INTERVAL_S if report is not None else RETRY_S)
