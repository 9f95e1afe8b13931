"""Bulk seeding for the read benchmark: devices, and telemetry COPYed in as the owner.

Native partitions (no TimescaleDB): each day of the range is loaded into a bare table
without indexes, by binary COPY, and then attached as that day's partition, which builds its
indexes in one sorted pass (much faster than maintaining them row by row). Rows go in in
time order, every device interleaved, as the writer stores them in production: one device's
readings are spread over the whole partition, not clustered (which would flatter the reads).
With TimescaleDB the rows are COPYed into the hypertable.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import asyncpg

METRICS = ("temp", "hum", "volt", "rssi")


async def insert_devices(conn: asyncpg.Connection, tenant_id: uuid.UUID, count: int) -> list[str]:
    """Claimed devices of `tenant_id` (rows as the claim leaves them; no secrets needed)."""
    devices = [uuid.uuid4() for _ in range(count)]
    # devices has FORCEd row-level security, which refuses COPY: plain INSERTs for 500 rows.
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))
        await conn.executemany(
            "INSERT INTO devices (device_id, tenant_id, serial_number, model, key_id, status) "
            "VALUES ($1, $2, $3, 'bench', 'mk1', 'active')",
            [(d, tenant_id, f"RB-{d.hex[:16]}") for d in devices],
        )
    return [str(d) for d in devices]


def _rows(
    tenant_id: uuid.UUID,
    devices: list[uuid.UUID],
    start: datetime,
    end: datetime,
) -> Iterator[tuple[uuid.UUID, uuid.UUID, str, datetime, float]]:
    minute = timedelta(minutes=1)
    ts = start
    n = 0
    while ts < end:
        for device in devices:
            for metric in METRICS:
                n += 1
                yield (tenant_id, device, metric, ts, float(n % 1000) / 10)
        ts += minute


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def seed_telemetry(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    device_ids: list[str],
    start: datetime,
    end: datetime,
    *,
    quiet: bool = False,
) -> int:
    """One point a minute per device and metric in [start, end); returns the rows loaded."""
    devices = [uuid.UUID(d) for d in device_ids]
    columns = ["tenant_id", "device_id", "metric", "ts", "value"]
    timescale = await conn.fetchval(
        "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')"
    )
    await conn.execute("SET maintenance_work_mem = '512MB'")
    if timescale:
        await conn.copy_records_to_table(
            "telemetry", records=_rows(tenant_id, devices, start, end), columns=columns
        )
    else:
        day = start.date()
        while _midnight(day) < end:
            lo, hi = max(start, _midnight(day)), min(end, _midnight(day + timedelta(days=1)))
            name = f"telemetry_{day:%Y%m%d}"
            started = time.perf_counter()
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
                empty = await conn.fetchval(f"SELECT NOT EXISTS (SELECT FROM {name})")
                if not empty:
                    raise RuntimeError(f"{name} already holds rows: seed a fresh database")
                await conn.execute(f"ALTER TABLE telemetry DETACH PARTITION {name}")
                await conn.execute(f"DROP TABLE {name}")
            await conn.execute(f"CREATE TABLE {name} (LIKE telemetry INCLUDING DEFAULTS)")
            await conn.copy_records_to_table(
                name, records=_rows(tenant_id, devices, lo, hi), columns=columns
            )
            day_lo, day_hi = _midnight(day), _midnight(day + timedelta(days=1))
            # The CHECK lets ATTACH skip its validation scan; the indexes are built here.
            await conn.execute(
                f"ALTER TABLE {name} ADD CONSTRAINT {name}_range "
                f"CHECK (ts >= '{day_lo.isoformat()}' AND ts < '{day_hi.isoformat()}')"
            )
            await conn.execute(
                f"ALTER TABLE telemetry ATTACH PARTITION {name} "
                f"FOR VALUES FROM ('{day_lo.isoformat()}') TO ('{day_hi.isoformat()}')"
            )
            await conn.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_range")
            if not quiet:
                print(f"  {name}: {time.perf_counter() - started:.1f} s", flush=True)
            day += timedelta(days=1)
    # What the writer keeps beside the readings (the seed bypasses the writer): the newest
    # values, and the hours the rollups must refresh.
    await conn.execute("SELECT telemetry_rollup_mark($1, $2)", start, end)
    await conn.execute(
        "INSERT INTO telemetry_latest SELECT DISTINCT ON (device_id, metric) tenant_id, "
        "device_id, metric, ts, value FROM telemetry "
        "WHERE ts >= $1::timestamptz - interval '1 hour' ORDER BY device_id, metric, ts DESC",
        end,
    )
    await conn.execute("VACUUM ANALYZE telemetry")
    return int(await conn.fetchval("SELECT count(*) FROM telemetry"))
