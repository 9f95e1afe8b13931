"""Periodic jobs, run as the owner role: daily partitions ahead and retention (native
partitioning; on TimescaleDB, chunk retention), the TimescaleDB policies from the settings,
the rollups' refresh (migrations/0012), expired refresh tokens, reject pruning, (every
half minute) the end of rotation grace periods, whose EMQX sessions are kicked, the expiry
of commands no device answered in time, and (every IOT_PRESENCE_CHECK_S) presence's
staleness rule: a device marked connected with no sign of life for IOT_PRESENCE_STALE_S is
marked offline, so that no device stays online for ever after a lost event or a crashed
broker."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from iotcore.commands.service import expire_commands
from iotcore.config import Settings
from iotcore.devices.presence import publish_expired
from iotcore.devices.sessions import SessionKicker
from iotcore.platform.db import init_connection
from iotcore.platform.metrics import (
    DEFAULT_PARTITION_ROWS,
    MAINTENANCE_LAST_SUCCESS,
    MAINTENANCE_RUNS,
    MAINTENANCE_SECONDS,
    devices_connected,
)
from iotcore.platform.redis import Redis
from iotcore.platform.sql import queries

log = logging.getLogger("iotcore.maintenance")
INTERVAL_S = 3600
RETRY_S = 60
GRACE_INTERVAL_S = 30
MARKS_PER_ROUND = 2000
MAX_ROUNDS = 50
# One refresher at a time (two could commit a day's rollup out of order).
REFRESH_LOCK = 0x10C0_0007
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class MaintenanceReport:
    partitions_created: int
    partitions_dropped: int
    rejects_pruned: int
    refresh_tokens_pruned: int
    default_partition_rows: int
    policies_changed: list[str]
    rollup_hours_refreshed: int


@dataclass
class MaintenanceStatus:
    """The outcome of the last pass, for `iotcore maintain`'s readiness check."""

    last_error: str | None = None

    async def check(self) -> None:
        if self.last_error is not None:
            raise RuntimeError(f"last maintenance pass failed: {self.last_error}")


async def _connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(settings.database_owner_url, timeout=settings.database_timeout_s)


async def run_once(settings: Settings) -> MaintenanceReport:
    sql = queries("telemetry", settings.sql_dir)
    report_sql = queries("maintenance", settings.sql_dir)
    conn = await _connect(settings)
    try:
        created = await conn.fetchval(sql["ensure_partitions"], settings.partitions_ahead_days + 1)
        dropped = await conn.fetchval(sql["drop_partitions"], settings.telemetry_retention_days)
        await conn.execute(sql["drop_rollups"], settings.telemetry_retention_days)
        changed = await conn.fetchval(
            sql["apply_policies"],
            settings.telemetry_retention_days,
            settings.telemetry_compress_after_days,
            settings.telemetry_rollup_refresh_s,
        )
        pruned = await conn.execute(sql["prune_rejects"], settings.reject_retention_days)
        tokens = await conn.execute(queries("auth", settings.sql_dir)["prune_refresh_tokens"])
        default_rows = 0
        if await conn.fetchval(report_sql["default_partition_exists"]):
            default_rows = await conn.fetchval(report_sql["default_partition_rows"])
        refreshed = await refresh_rollups(conn, settings)
    finally:
        await conn.close()
    if changed:
        log.info("telemetry policies applied", extra={"changed": list(changed)})
    report = MaintenanceReport(
        created,
        dropped,
        int(pruned.split()[-1]),
        int(tokens.split()[-1]),
        default_rows,
        list(changed),
        refreshed,
    )
    log.info("maintenance done", extra=report.__dict__)
    return report


def _ranges(starts: list[datetime], step: timedelta) -> list[tuple[datetime, datetime]]:
    """Contiguous [start, end) ranges covering the given bucket starts."""
    ranges: list[tuple[datetime, datetime]] = []
    for start in sorted(set(starts)):
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], start + step)
        else:
            ranges.append((start, start + step))
    return ranges


def _day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


async def refresh_rollups(conn: asyncpg.Connection, settings: Settings) -> int:
    """Refresh the hours marked by the writer (and purges, bulk loads, migrations), then
    unmark those no writer touched meanwhile. Returns how many marks were cleared."""
    sql = queries("telemetry", settings.sql_dir)
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REFRESH_LOCK):
        return 0  # another maintain is at it
    try:
        timescale = await conn.fetchval(sql["timescaledb"])
        cleared = 0
        for _ in range(MAX_ROUNDS):
            marks = await conn.fetch(sql["rollup_marks"], MARKS_PER_ROUND)
            if not marks:
                break
            tenants = [m["tenant_id"] for m in marks]
            hours = [m["hour"] for m in marks]
            if timescale:
                for start, end in _ranges(hours, HOUR):
                    await conn.execute(sql["refresh_hourly"], start, end)
                for start, end in _ranges([_day(h) for h in hours], DAY):
                    await conn.execute(sql["refresh_daily"], start, end)
            else:
                async with conn.transaction():
                    await conn.execute(sql["rollup_recompute"], tenants, hours)
            status = await conn.execute(
                sql["rollup_unmark"], tenants, hours, [m["version"] for m in marks]
            )
            cleared += int(status.split()[-1])
            if len(marks) < MARKS_PER_ROUND:
                break
        return cleared
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", REFRESH_LOCK)


async def refresh_rollups_once(settings: Settings) -> None:
    """Between full passes: only the rollups (a failure waits for the next round)."""
    try:
        conn = await _connect(settings)
        try:
            await refresh_rollups(conn, settings)
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("rollup refresh failed; will retry", extra={"error": str(exc)})


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


async def end_expired_rotations(settings: Settings) -> int:
    """Forget old secrets whose rotation grace has passed and kick their devices off EMQX:
    a session opened with an old secret must not outlive it. (The embedded broker ends such
    sessions itself when the grace ends.)"""
    conn = await asyncpg.connect(settings.database_owner_url, timeout=settings.database_timeout_s)
    try:
        rows = await conn.fetch(queries("devices", settings.sql_dir)["expire_rotation_grace"])
    finally:
        await conn.close()
    await SessionKicker(settings).kick([row["device_id"] for row in rows])
    if rows:
        log.info("rotation grace ended", extra={"devices": len(rows)})
    return len(rows)


async def expire_due_commands(settings: Settings) -> int:
    """Commands past their expiry end `expired`, each a `command` event on its tenant's live
    stream. (Delivery and replies check the expiry themselves: this makes it visible.)"""
    conn = await _connect(settings)
    redis = Redis(settings)
    try:
        await init_connection(conn)  # jsonb as Python values, as in the service's pools
        expired = await expire_commands(conn, redis, queries("commands", settings.sql_dir))
    finally:
        await conn.close()
        await redis.close()
    if expired:
        log.info("commands expired", extra={"commands": expired})
    return expired


async def _end_expired_rotations_logged(settings: Settings) -> None:
    try:
        await end_expired_rotations(settings)
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("rotation grace check failed; will retry", extra={"error": str(exc)})
    try:
        await expire_due_commands(settings)
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("command expiry failed; will retry", extra={"error": str(exc)})


async def expire_stale_presence(settings: Settings, redis: Redis) -> int:
    """The staleness rule: connected devices with no sign of life (connect, status, telemetry,
    the embedded broker's heartbeat) for IOT_PRESENCE_STALE_S go offline, each a presence
    event; and the devices-connected gauge. Returns how many went offline."""
    sql = queries("presence", settings.sql_dir)
    conn = await _connect(settings)
    try:
        rows = await conn.fetch(
            sql["expire"], None, timedelta(seconds=settings.presence_stale_s), "stale"
        )
        connected = await conn.fetchval(sql["connected_count"])
    finally:
        await conn.close()
    devices_connected().set(connected)
    await publish_expired(redis, rows, "stale")
    if rows:
        log.info("stale devices marked offline", extra={"devices": len(rows)})
    return len(rows)


async def _expire_stale_presence_logged(settings: Settings, redis: Redis) -> None:
    try:
        await expire_stale_presence(settings, redis)
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("presence staleness check failed; will retry", extra={"error": str(exc)})


async def run_forever(settings: Settings, status: MaintenanceStatus | None = None) -> None:
    redis = Redis(settings)
    try:
        await _run_forever(settings, redis, status or MaintenanceStatus())
    finally:
        await redis.close()


async def _run_forever(settings: Settings, redis: Redis, status: MaintenanceStatus) -> None:
    for outcome in ("ok", "failed"):
        MAINTENANCE_RUNS.labels(outcome)  # both series exist from the start, at 0
    devices_connected()  # exported from the start by this process, and by no other role
    next_grace = 0.0
    next_presence = 0.0
    while True:
        report = await run_observed(settings, status)
        # Until the next full pass, the rollups every IOT_TELEMETRY_ROLLUP_REFRESH_S and the
        # rotation graces every GRACE_INTERVAL_S.
        next_pass = time.monotonic() + (INTERVAL_S if report is not None else RETRY_S)
        next_refresh = time.monotonic() + settings.telemetry_rollup_refresh_s
        while (now := time.monotonic()) < next_pass:
            if now >= next_grace:
                await _end_expired_rotations_logged(settings)
                next_grace = time.monotonic() + GRACE_INTERVAL_S
            if now >= next_presence:
                await _expire_stale_presence_logged(settings, redis)
                next_presence = time.monotonic() + settings.presence_check_s
            if now >= next_refresh:
                await refresh_rollups_once(settings)
                next_refresh = time.monotonic() + settings.telemetry_rollup_refresh_s
            await asyncio.sleep(
                max(
                    0.0,
                    min(next_pass, next_grace, next_presence, next_refresh) - time.monotonic(),
                )
            )
