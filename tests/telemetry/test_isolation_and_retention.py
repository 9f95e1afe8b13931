"""Telemetry isolation at the SQL level (views, base table, partitions or chunks) and
retention, on both storages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from iotcore.config import Settings
from iotcore.maintenance.jobs import run_once

A, B = uuid.uuid4(), uuid.uuid4()


async def _seed(owner_conn: Any) -> None:
    now = datetime.now(UTC)
    rows = [
        (t, uuid.uuid4(), "m", now - timedelta(minutes=i), float(i))
        for t in (A, B)
        for i in range(3)
    ]
    await owner_conn.executemany(
        "INSERT INTO telemetry (tenant_id, device_id, metric, ts, value) VALUES ($1,$2,$3,$4,$5)",
        rows,
    )


async def test_view_shows_only_the_tenant_set(owner_conn: Any, service_conn: Any) -> None:
    await _seed(owner_conn)
    async with service_conn.transaction():
        await service_conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(A))
        tenants = {r[0] for r in await service_conn.fetch("SELECT tenant_id FROM telemetry_v")}
    assert tenants == {A}
    async with service_conn.transaction():
        count = await service_conn.fetchval("SELECT count(*) FROM telemetry_v")
    assert count == 0, "no tenant set: nothing visible"


async def test_latest_table_is_isolated_by_rls(owner_conn: Any, service_conn: Any) -> None:
    rows = [(t, uuid.uuid4(), "m", datetime.now(UTC), 1.0) for t in (A, B)]
    await owner_conn.executemany("INSERT INTO telemetry_latest VALUES ($1,$2,$3,$4,$5)", rows)
    async with service_conn.transaction():
        await service_conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(A))
        seen = {r[0] for r in await service_conn.fetch("SELECT tenant_id FROM telemetry_latest")}
        assert seen == {A}
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await service_conn.execute(
                "INSERT INTO telemetry_latest VALUES ($1, $2, 'm', now(), 1)", B, uuid.uuid4()
            )


async def test_insert_for_another_tenant_through_the_view_fails(service_conn: Any) -> None:
    with pytest.raises(asyncpg.exceptions.WithCheckOptionViolationError):
        async with service_conn.transaction():
            await service_conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(A))
            await service_conn.execute(
                "INSERT INTO telemetry_v VALUES ($1, $2, 'm', now(), 1)", B, uuid.uuid4()
            )


async def timescale(owner_conn: Any) -> bool:
    return bool(
        await owner_conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')"
        )
    )


async def test_base_table_and_every_partition_are_permission_denied(
    owner_conn: Any, service_conn: Any
) -> None:
    # A row on each of six days: TimescaleDB makes their chunks (native partitions exist
    # ahead of time; older days go to the default partition).
    now = datetime.now(UTC)
    await owner_conn.executemany(
        "INSERT INTO telemetry VALUES ($1, $2, 'm', $3, 1)",
        [(A, uuid.uuid4(), now - timedelta(days=d)) for d in range(6)],
    )
    partitions = [
        r[0]
        for r in await owner_conn.fetch(
            "SELECT i.inhrelid::regclass::text FROM pg_inherits i "
            "WHERE i.inhparent = 'telemetry'::regclass"
        )
    ]
    assert len(partitions) >= 5
    for table in ["telemetry", *partitions]:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await service_conn.fetch(f"SELECT * FROM {table} LIMIT 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await service_conn.execute(
                f"INSERT INTO {table} VALUES ($1, $2, 'm', now(), 1)",
                A,
                uuid.uuid4(),
            )


async def test_retention_drops_old_partitions_and_keeps_the_window(
    settings: Settings, owner_conn: Any
) -> None:
    today = datetime.now(UTC).date()
    old_day = today - timedelta(days=40)
    name = f"telemetry_{old_day:%Y%m%d}"
    await owner_conn.execute("SELECT telemetry_ensure_partitions($1, 1)", old_day)
    old_ts = datetime(old_day.year, old_day.month, old_day.day, 12, tzinfo=UTC)
    recent_ts = datetime.now(UTC) - timedelta(days=2)
    device = uuid.uuid4()
    await owner_conn.executemany(
        "INSERT INTO telemetry VALUES ($1, $2, 'm', $3, 1)",
        [(A, device, old_ts), (A, device, recent_ts)],
    )
    report = await run_once(settings.model_copy(update={"telemetry_retention_days": 30}))
    assert report.partitions_dropped >= 1
    assert await owner_conn.fetchval("SELECT to_regclass($1)", name) is None
    remaining = await owner_conn.fetch("SELECT ts FROM telemetry WHERE device_id = $1", device)
    assert [r["ts"] for r in remaining] == [recent_ts]
    if await timescale(owner_conn):
        # drop_chunks: no chunk holds the old day any more (TimescaleDB makes chunks itself).
        assert not await owner_conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = "
            "'telemetry' AND range_start <= $1 AND range_end > $1",
            old_ts,
        )
    else:
        ahead = today + timedelta(days=settings.partitions_ahead_days)
        assert await owner_conn.fetchval("SELECT to_regclass($1)", f"telemetry_{ahead:%Y%m%d}")


@pytest.mark.timescale
async def test_timescaledb_chunks_are_permission_denied(owner_conn: Any, service_conn: Any) -> None:
    if not await timescale(owner_conn):
        pytest.skip(
            "TimescaleDB is not installed on this PostgreSQL: native partitions tested above"
        )
    await _seed(owner_conn)
    chunks = await owner_conn.fetch(
        "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks "
        "WHERE hypertable_name = 'telemetry'"
    )
    assert chunks
    for (chunk,) in chunks:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await service_conn.fetch(f"SELECT * FROM {chunk} LIMIT 1")
