"""Aggregates of whole-hour buckets read TimescaleDB's hourly continuous aggregate through
its tenant-filtered view, with the partial hours at the window's edges from the raw rows.

On plain PostgreSQL (here) the first test stands in for the continuous aggregate with a table
of hourly rows behind a view of the same name and shape, filled once: a reading added later
inside a whole hour is then invisible to the hourly path, which proves which path answered.
The TimescaleDB test runs where the extension is installed (docker compose)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from tests.support.devices import DeviceCredentials, claimed_device
from tests.support.users import RegisteredUser, register

Client = TestClient  # type: ignore[type-arg]
BASE = datetime(2026, 2, 2, 0, 0, tzinfo=UTC)


async def timescale(owner_conn: Any) -> bool:
    return bool(
        await owner_conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = $1)", "timescaledb"
        )
    )


async def add_rows(
    owner_conn: Any, tenant: Any, device: str, points: list[tuple[datetime, float]]
) -> None:
    await owner_conn.executemany(
        "INSERT INTO telemetry VALUES ($1, $2, 'temp', $3, $4)",
        [(uuid.UUID(str(tenant)), uuid.UUID(device), ts, v) for ts, v in points],
    )


@pytest.fixture(scope="module")
async def device(
    client: Client, settings: Settings, owner_conn: Any
) -> tuple[RegisteredUser, DeviceCredentials]:
    owner = await register(client)
    claimed = await claimed_device(client, settings, owner)
    await owner_conn.execute("SELECT telemetry_ensure_partitions($1, 2)", BASE.date())
    # One point a minute for 4 hours: values 0..239.
    await add_rows(
        owner_conn,
        owner.tenant_id,
        claimed.device_id,
        [(BASE + timedelta(minutes=i), float(i)) for i in range(240)],
    )
    return owner, claimed


async def aggregate(
    client: Client, owner: RegisteredUser, device: DeviceCredentials, **params: str
) -> Any:
    response = await client.get(
        f"/api/v1/devices/{device.device_id}/telemetry/aggregate",
        params={"metric": "temp", **params},
        headers=owner.headers,
    )
    assert response.status == 200, await response.text()
    return (await response.json())["items"]


async def test_whole_hours_come_from_the_hourly_view_and_edges_from_raw_rows(
    client: Client, owner_conn: Any, device: Any
) -> None:
    if await timescale(owner_conn):
        pytest.skip("TimescaleDB present: the real continuous aggregate is tested below")
    owner, claimed = device
    await owner_conn.execute(
        """
        CREATE TABLE telemetry_hourly AS
            SELECT tenant_id, device_id, metric, date_bin('1 hour', ts, '2000-01-03') AS bucket,
                   sum(value) AS sum, count(*) AS count, min(value) AS min, max(value) AS max
            FROM telemetry GROUP BY 1, 2, 3, 4;
        CREATE VIEW telemetry_hourly_v WITH (security_barrier) AS
            SELECT * FROM telemetry_hourly WHERE tenant_id = app_tenant_id();
        GRANT SELECT ON telemetry_hourly_v TO iotcore_app;
        """
    )
    # Added after the "materialisation": inside a whole hour (01:30) and in the partial first
    # hour of the window below (00:30:30).
    await add_rows(
        owner_conn,
        owner.tenant_id,
        claimed.device_id,
        [
            (BASE + timedelta(hours=1, minutes=30, seconds=30), 1000.0),
            (BASE + timedelta(minutes=30, seconds=30), 500.0),
        ],
    )
    window = {
        "from": (BASE + timedelta(minutes=30)).isoformat(),
        "to": (BASE + timedelta(hours=3, minutes=30)).isoformat(),
    }
    hourly = await aggregate(
        client, owner, claimed, bucket="1h", fn="avg,min,max,sum,count", **window
    )
    assert hourly == [
        # 00:30..00:59 from the raw rows, including the late 500.0.
        {
            "ts": "2026-02-02T00:00:00.000Z",
            "avg": (sum(range(30, 60)) + 500) / 31,
            "min": 30.0,
            "max": 500.0,
            "sum": float(sum(range(30, 60)) + 500),
            "count": 31,
        },
        # Whole hours from the hourly rows: the late 1000.0 at 01:30:30 is not there.
        {
            "ts": "2026-02-02T01:00:00.000Z",
            "avg": sum(range(60, 120)) / 60,
            "min": 60.0,
            "max": 119.0,
            "sum": float(sum(range(60, 120))),
            "count": 60,
        },
        {
            "ts": "2026-02-02T02:00:00.000Z",
            "avg": sum(range(120, 180)) / 60,
            "min": 120.0,
            "max": 179.0,
            "sum": float(sum(range(120, 180))),
            "count": 60,
        },
        # 03:00..03:29 from the raw rows.
        {
            "ts": "2026-02-02T03:00:00.000Z",
            "avg": sum(range(180, 210)) / 30,
            "min": 180.0,
            "max": 209.0,
            "sum": float(sum(range(180, 210))),
            "count": 30,
        },
    ]
    two_hours = await aggregate(client, owner, claimed, bucket="PT2H", fn="count", **window)
    assert two_hours == [
        {"ts": "2026-02-02T00:00:00.000Z", "count": 31 + 60},
        {"ts": "2026-02-02T02:00:00.000Z", "count": 60 + 30},
    ]
    # Sub-hour buckets read the raw rows, late reading included.
    quarter = await aggregate(client, owner, claimed, bucket="15m", fn="max", **window)
    assert {"ts": "2026-02-02T01:30:00.000Z", "max": 1000.0} in quarter
    # A window shorter than one whole hour reads the raw rows only.
    short = await aggregate(
        client,
        owner,
        claimed,
        bucket="1h",
        fn="count",
        **{
            "from": (BASE + timedelta(hours=1, minutes=10)).isoformat(),
            "to": (BASE + timedelta(hours=1, minutes=50)).isoformat(),
        },
    )
    assert short == [{"ts": "2026-02-02T01:00:00.000Z", "count": 41}]


@pytest.mark.timescale
async def test_timescaledb_hourly_aggregate_is_tenant_filtered_and_used(
    client: Client, settings: Settings, owner_conn: Any, service_conn: Any, device: Any
) -> None:
    if not await timescale(owner_conn):
        pytest.skip("TimescaleDB is not installed on this PostgreSQL (stand-in tested above)")
    owner, claimed = device
    stranger = await register(client)
    other = await claimed_device(client, settings, stranger)
    await add_rows(owner_conn, stranger.tenant_id, other.device_id, [(BASE, 7.0)])
    await owner_conn.execute("CALL refresh_continuous_aggregate('telemetry_hourly', NULL, NULL)")
    # The service role has no privilege on the aggregate or its materialisation hypertable.
    materialization = await owner_conn.fetchval(
        "SELECT format('%I.%I', materialization_hypertable_schema, "
        "materialization_hypertable_name) FROM timescaledb_information.continuous_aggregates "
        "WHERE view_name = 'telemetry_hourly'"
    )
    for relation in ("telemetry_hourly", materialization):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await service_conn.fetch(f"SELECT * FROM {relation} LIMIT 1")
    async with service_conn.transaction():
        await service_conn.execute(
            "SELECT set_config('app.tenant_id', $1, true)", str(owner.tenant_id)
        )
        tenants = await service_conn.fetch("SELECT DISTINCT tenant_id FROM telemetry_hourly_v")
    assert [r[0] for r in tenants] == [uuid.UUID(str(owner.tenant_id))]
    # Policies: compression, retention of raw chunks and of the aggregate, refresh.
    procs = {
        r[0]
        for r in await owner_conn.fetch(
            "SELECT proc_name FROM timescaledb_information.jobs WHERE hypertable_name IN "
            "('telemetry', (SELECT materialization_hypertable_name FROM "
            "timescaledb_information.continuous_aggregates WHERE view_name = 'telemetry_hourly'))"
        )
    }
    assert {
        "policy_compression",
        "policy_retention",
        "policy_refresh_continuous_aggregate",
    } <= procs
    # A reading changed under a materialised whole hour is not seen until the next refresh:
    # proof that the whole hours come from the aggregate.
    await owner_conn.execute(
        "UPDATE telemetry SET value = 9999 WHERE device_id = $1 AND ts = $2",
        uuid.UUID(claimed.device_id),
        BASE + timedelta(hours=1, minutes=5),
    )
    window = {"from": BASE.isoformat(), "to": (BASE + timedelta(hours=4)).isoformat()}
    hourly = await aggregate(client, owner, claimed, bucket="1h", fn="max,count", **window)
    assert hourly[1] == {"ts": "2026-02-02T01:00:00.000Z", "max": 119.0, "count": 60}
