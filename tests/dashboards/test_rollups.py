"""Hourly and daily rollups (migrations/0012), on both storages: the aggregate endpoint reads
them for whole hours and days, the raw rows for the edges and for every hour written since
its last refresh, and after `maintain` they equal date_bin over the raw rows, whatever
happened: history present when the migration ran (down/up), late readings through the
writer (into a compressed chunk on TimescaleDB), a purge."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.maintenance.jobs import refresh_rollups, run_once
from iotcore.platform.migrations import Migrator
from iotcore.platform.sql import queries
from iotcore.telemetry.read.service import (
    DAILY_RANGES,
    HOURLY_RANGES,
    RAW_RANGES,
    TimeRange,
    aggregate_sources,
    rollup_span,
)
from iotcore.telemetry.read.service import ORIGIN as ORIGIN_TS
from tests.conftest import OWNER_URL, REPO_ROOT, with_database
from tests.support.devices import DeviceCredentials, claimed_device
from tests.support.telemetry import load_readings, post_telemetry
from tests.support.users import RegisteredUser, register

Client = TestClient  # type: ignore[type-arg]
SQL = queries("telemetry_read", REPO_ROOT / "sql")
ORIGIN = "TIMESTAMPTZ '2000-01-03 00:00:00+00'"
# Three whole days, 20 days ago: inside the 30 accepted days, older than compression's 7.
DAY0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=20)


async def is_timescale(conn: Any) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')"
        )
    )


async def aggregate(
    client: Client, owner: RegisteredUser, device: DeviceCredentials, **params: str
) -> Any:
    response = await client.get(
        f"/api/v1/devices/{device.device_id}/telemetry/aggregate",
        params={"metric": "temp", "fn": "sum,count,min,max", **params},
        headers=owner.headers,
    )
    assert response.status == 200, await response.text()
    return (await response.json())["items"]


async def raw_buckets(
    owner_conn: Any, device: str, bucket: str, start: datetime, end: datetime
) -> Any:
    """What the endpoint must answer: date_bin over the raw rows."""
    rows = await owner_conn.fetch(
        f"SELECT date_bin($2::text::interval, ts, {ORIGIN}) AS b, sum(value) AS sum, "
        "count(*) AS count, min(value) AS min, max(value) AS max FROM telemetry "
        "WHERE device_id = $1 AND metric = 'temp' AND ts >= $3 AND ts < $4 GROUP BY 1 ORDER BY 1",
        uuid.UUID(device),
        bucket,
        start,
        end,
    )
    return [
        {
            "ts": r["b"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "sum": r["sum"],
            "count": r["count"],
            "min": r["min"],
            "max": r["max"],
        }
        for r in rows
    ]


async def rollups_match_raw(owner_conn: Any) -> None:
    """Every materialised hourly and daily row equals date_bin over the raw rows, both ways."""
    for table, width in (("telemetry_hourly", "1 hour"), ("telemetry_daily", "1 day")):
        diff = await owner_conn.fetch(
            f"""
            WITH raw AS (
                SELECT tenant_id, device_id, metric, date_bin('{width}', ts, {ORIGIN}) AS bucket,
                       sum(value) AS sum, count(*) AS count, min(value) AS min, max(value) AS max
                FROM telemetry GROUP BY 1, 2, 3, 4
            ), rolled AS (
                SELECT tenant_id, device_id, metric, bucket, sum, count, min, max FROM {table}
            )
            (SELECT 'missing' AS what, * FROM (TABLE raw EXCEPT TABLE rolled) a)
            UNION ALL
            (SELECT 'extra', * FROM (TABLE rolled EXCEPT TABLE raw) b)
            LIMIT 5
            """
        )
        assert diff == [], f"{table}: {[dict(r) for r in diff]}"


@pytest.fixture(scope="module")
async def device(
    client: Client, settings: Settings, owner_conn: Any
) -> tuple[RegisteredUser, DeviceCredentials]:
    owner = await register(client)
    claimed = await claimed_device(client, settings, owner)
    await owner_conn.execute("SELECT telemetry_ensure_partitions($1, 4)", DAY0.date())
    # One point every 10 minutes for 3 days; integer values, so sums are exact.
    await load_readings(
        owner_conn,
        owner.tenant_id,
        claimed.device_id,
        "temp",
        [(DAY0 + timedelta(minutes=10 * i), float(i)) for i in range(3 * 144)],
    )
    assert await refresh_rollups(owner_conn, settings) >= 72
    return owner, claimed


async def test_whole_hours_and_days_come_from_the_rollups_and_the_rest_from_raw_rows(
    client: Client, settings: Settings, owner_conn: Any, device: Any
) -> None:
    owner, claimed = device
    window = {
        "from": (DAY0 + timedelta(minutes=30)).isoformat(),
        "to": (DAY0 + timedelta(days=2, hours=23, minutes=30)).isoformat(),
    }
    start, end = DAY0 + timedelta(minutes=30), DAY0 + timedelta(days=2, hours=23, minutes=30)
    for bucket, iso in (("1 hour", "1h"), ("1 day", "1d"), ("3 hours", "PT3H")):
        assert await aggregate(client, owner, claimed, bucket=iso, **window) == await raw_buckets(
            owner_conn, claimed.device_id, bucket, start, end
        ), bucket
    # A row slipped in without a mark (nothing in the service does this) inside a whole hour
    # of a whole day: the hourly and daily answers do not see it, which proves they came from
    # the rollups; sub-hour buckets read the raw rows and do.
    slipped = DAY0 + timedelta(days=1, hours=5, minutes=5)
    await load_readings(
        owner_conn, owner.tenant_id, claimed.device_id, "temp", [(slipped, 1000.0)], mark=False
    )
    hourly = await aggregate(client, owner, claimed, bucket="1h", **window)
    daily = await aggregate(client, owner, claimed, bucket="1d", **window)
    assert max(b["max"] for b in hourly) < 1000 and max(b["max"] for b in daily) < 1000
    quarter = await aggregate(client, owner, claimed, bucket="15m", **window)
    assert max(b["max"] for b in quarter) == 1000.0
    # Once its hour is marked (as every write path does), the raw rows answer that hour and
    # that day at once, before any refresh.
    await owner_conn.execute(
        "SELECT telemetry_rollup_mark($1, $2)", slipped, slipped + timedelta(microseconds=1)
    )
    for bucket, iso in (("1 hour", "1h"), ("1 day", "1d")):
        expected = await raw_buckets(owner_conn, claimed.device_id, bucket, start, end)
        assert await aggregate(client, owner, claimed, bucket=iso, **window) == expected
        assert max(b["max"] for b in expected) == 1000.0
    # The refresh takes the hour into the rollups and clears the mark.
    assert await refresh_rollups(owner_conn, settings) >= 1
    assert not await owner_conn.fetchval(
        "SELECT count(*) FROM telemetry_rollup_dirty WHERE tenant_id = $1", owner.tenant_id
    )
    for bucket, iso in (("1 hour", "1h"), ("1 day", "1d")):
        expected = await raw_buckets(owner_conn, claimed.device_id, bucket, start, end)
        assert await aggregate(client, owner, claimed, bucket=iso, **window) == expected
    await rollups_match_raw(owner_conn)


async def test_rollups_equal_raw_rows_after_history_late_readings_and_a_purge(
    client: Client, settings: Settings, database: str, owner_conn: Any, device: Any
) -> None:
    owner, claimed = device
    # History: the rollup migration rolled back and applied again over the rows already there.
    migrator = Migrator(with_database(OWNER_URL, database), REPO_ROOT / "migrations")
    later = [m for m in migrator.status() if m.applied and m.migration_id >= "0012"]
    await asyncio.to_thread(migrator.down, len(later))
    await asyncio.to_thread(migrator.up)
    window = {"from": DAY0.isoformat(), "to": (DAY0 + timedelta(days=3)).isoformat()}
    expected_daily = await raw_buckets(
        owner_conn, claimed.device_id, "1 day", DAY0, DAY0 + timedelta(days=3)
    )
    # Every hour is marked: the endpoint answers from the raw rows until the refresh.
    assert await aggregate(client, owner, claimed, bucket="1d", **window) == expected_daily
    await run_once(settings)
    await rollups_match_raw(owner_conn)
    assert await aggregate(client, owner, claimed, bucket="1d", **window) == expected_daily

    timescale = await is_timescale(owner_conn)
    if timescale:
        compressed = await owner_conn.fetchval(
            "SELECT count(compress_chunk(c, if_not_compressed => true)) "
            "FROM show_chunks('telemetry', older_than => now() - INTERVAL '7 days') c"
        )
        assert compressed >= 3
    # Late readings through the writer, 19 days old: a new one and a replay of a stored one.
    late = DAY0 + timedelta(days=1, hours=7, minutes=3)
    replay = DAY0 + timedelta(days=1, hours=7)  # stored above with value 186
    body = {
        "points": [
            {"ts": late.isoformat(), "metrics": {"temp": 5000}},
            {"ts": replay.isoformat(), "metrics": {"temp": 7}},
        ]
    }
    response = await post_telemetry(client, claimed, body)
    assert response.status == 202, await response.text()
    result = await response.json()
    assert (result["stored"], result["duplicates"]) == (1, 1)
    stored = await owner_conn.fetch(
        "SELECT ts, value FROM telemetry WHERE device_id = $1 AND ts IN ($2, $3) ORDER BY ts",
        uuid.UUID(claimed.device_id),
        replay,
        late,
    )
    assert [(r["ts"], r["value"]) for r in stored] == [(replay, 186.0), (late, 5000.0)]
    if timescale:
        chunk_compressed = await owner_conn.fetchval(
            "SELECT is_compressed FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'telemetry' AND range_start <= $1 AND range_end > $1",
            late,
        )
        assert chunk_compressed, "the late reading was meant to land in a compressed chunk"
    # The writer marked the hour in the same transaction: answered from raw rows at once.
    hour = late.replace(minute=0)
    assert await owner_conn.fetchval(
        "SELECT count(*) FROM telemetry_rollup_dirty WHERE tenant_id = $1 AND hour = $2",
        owner.tenant_id,
        hour,
    )
    expected_daily = await raw_buckets(
        owner_conn, claimed.device_id, "1 day", DAY0, DAY0 + timedelta(days=3)
    )
    assert max(b["max"] for b in expected_daily) == 5000.0
    assert await aggregate(client, owner, claimed, bucket="1d", **window) == expected_daily
    await refresh_rollups(owner_conn, settings)
    await rollups_match_raw(owner_conn)
    assert await aggregate(client, owner, claimed, bucket="1d", **window) == expected_daily

    # A purge of another device of the tenant: its rows leave the rollups with the refresh.
    second = uuid.uuid4()
    await load_readings(
        owner_conn, owner.tenant_id, str(second), "temp", [(DAY0 + timedelta(hours=2), 3.0)]
    )
    await refresh_rollups(owner_conn, settings)
    assert (
        await owner_conn.fetchval(
            "SELECT count(*) FROM telemetry_hourly WHERE device_id = $1", second
        )
        == 1
    )
    # The device purge's own batch statement (iotcore purge device, the API's purge job).
    purged = await owner_conn.fetchrow(
        queries("purge", settings.sql_dir)["delete_device_telemetry"],
        owner.tenant_id,
        second,
        None,
        5000,
    )
    assert purged["deleted"] == 1
    await refresh_rollups(owner_conn, settings)
    assert (
        await owner_conn.fetchval(
            "SELECT count(*) FROM telemetry_hourly WHERE device_id = $1", second
        )
        == 0
    )
    await rollups_match_raw(owner_conn)


def test_a_window_is_split_into_disjoint_ranges_that_cover_it_and_keep_marked_hours_raw() -> None:
    """aggregate_sources, over random windows and marks: the raw, hourly and daily ranges
    are disjoint and cover the window exactly; every marked hour and both edges are raw;
    no daily range holds a raw hour; hourly and daily ranges are whole hours and days; and
    there are never more ranges than the query has arms."""
    rng = random.Random(12)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    hour, day = timedelta(hours=1), timedelta(days=1)
    for case in range(2000):
        start = base + timedelta(minutes=rng.randrange(0, 3 * 1440))
        span = TimeRange(start, start + timedelta(minutes=rng.randrange(1, 40 * 1440)))
        width = rng.choice([hour, day, 3 * hour, 7 * day])
        rollups = rollup_span(span, width, 3650)
        if rollups is None:
            continue
        hours = int((rollups.last_hour - rollups.first_hour) / hour)
        marked = sorted(
            {
                rollups.first_hour + rng.randrange(hours) * hour
                for _ in range(rng.choice([0, 1, 3, 12, 200]))
            }
        )
        sources = aggregate_sources(span, rollups, [(h, h + hour) for h in marked])
        assert len(sources.raw) <= RAW_RANGES, case
        assert len(sources.hourly) <= HOURLY_RANGES, case
        assert len(sources.daily) <= DAILY_RANGES, case
        pieces = sorted(sources.raw + sources.hourly + sources.daily)
        assert pieces[0][0] == span.start and pieces[-1][1] == span.end, case
        assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces)), f"{case}: gap or overlap"
        assert all(lo < hi for lo, hi in pieces), case
        for h in marked:
            assert any(lo <= h and h + hour <= hi for lo, hi in sources.raw), case
        for lo, hi in sources.hourly:
            assert (lo - ORIGIN_TS) % hour == (hi - ORIGIN_TS) % hour == timedelta(0), case
            assert rollups.first_hour <= lo and hi <= rollups.last_hour, case
        for lo, hi in sources.daily:
            assert (lo - ORIGIN_TS) % day == (hi - ORIGIN_TS) % day == timedelta(0), case
            assert rollups.first_day <= lo and hi <= rollups.last_day, case
            for raw_lo, raw_hi in sources.raw:
                assert raw_hi <= lo or raw_lo >= hi, f"{case}: a raw hour in a daily range"


async def test_marked_hours_scattered_over_the_window_are_answered_from_raw_rows(
    client: Client, settings: Settings, owner_conn: Any, device: Any
) -> None:
    """More marked hours, further apart, than the rollup query has raw arms: they are all
    answered from the raw rows, the clean hours and days still from the rollups."""
    owner, claimed = device
    await refresh_rollups(owner_conn, settings)
    start, end = DAY0 + timedelta(minutes=30), DAY0 + timedelta(days=2, hours=23, minutes=30)
    window = {"from": start.isoformat(), "to": end.isoformat()}
    # Rows slipped in without marks (the rollups do not know them), then their hours marked.
    hours = [DAY0 + timedelta(hours=h) for h in (2, 9, 20, 31, 40, 47, 55, 66)]
    slipped = [(h + timedelta(minutes=7), 9000.0 + i) for i, h in enumerate(hours)]
    await load_readings(owner_conn, owner.tenant_id, claimed.device_id, "temp", slipped, mark=False)
    for h in hours:
        await owner_conn.execute("SELECT telemetry_rollup_mark($1, $2)", h, h + timedelta(hours=1))
    expected = {
        bucket: await raw_buckets(owner_conn, claimed.device_id, bucket, start, end)
        for bucket in ("1 hour", "1 day", "3 hours")
    }
    # One more without a mark, in a clean hour: answered from the rollup, it must not show.
    clean = DAY0 + timedelta(hours=60, minutes=7)
    await load_readings(
        owner_conn, owner.tenant_id, claimed.device_id, "temp", [(clean, 3000.0)], mark=False
    )
    for bucket, iso in (("3 hours", "PT3H"), ("1 day", "1d"), ("1 hour", "1h")):
        answer = await aggregate(client, owner, claimed, bucket=iso, **window)
        assert answer == expected[bucket], bucket
    # Each marked hour's own maximum is its slipped row: read from the raw rows.
    assert {9000.0 + i for i in range(len(hours))} <= {b["max"] for b in answer}
    # Back to rows the rollups know, for the other tests.
    await owner_conn.execute(
        "DELETE FROM telemetry WHERE device_id = $1 AND value IN (3000, 9000, 9001, 9002, "
        "9003, 9004, 9005, 9006, 9007)",
        uuid.UUID(claimed.device_id),
    )
    await owner_conn.execute("SELECT telemetry_rollup_mark($1, $2)", DAY0, DAY0 + timedelta(days=3))
    await refresh_rollups(owner_conn, settings)
    await rollups_match_raw(owner_conn)


async def test_the_rollup_query_plans_only_the_partitions_or_chunks_it_reads_raw(
    settings: Settings, owner_conn: Any, service_conn: Any, device: Any
) -> None:
    """Raw rows are read with constant bounds: of the window's three days, only the one
    with a marked hour has its partition (chunk) in the plan; before, every partition of
    the table was planned for the marked hours' join (85-840 ms of planning a year)."""
    owner, claimed = device
    await refresh_rollups(owner_conn, settings)
    marked = DAY0 + timedelta(days=1, hours=5)
    await owner_conn.execute(
        "SELECT telemetry_rollup_mark($1, $2)", marked, marked + timedelta(hours=1)
    )
    span = TimeRange(DAY0, DAY0 + timedelta(days=3))
    rollups = rollup_span(span, timedelta(days=1), 3650)
    assert rollups is not None
    if await is_timescale(owner_conn):
        chunks = {
            r["chunk_name"]: r["range_start"] <= marked < r["range_end"]
            for r in await owner_conn.fetch(
                "SELECT chunk_name, range_start, range_end FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'telemetry'"
            )
        }
    else:
        chunks = {
            r[0]: r[0] == f"telemetry_{marked:%Y%m%d}"
            for r in await owner_conn.fetch(
                "SELECT inhrelid::regclass::text FROM pg_inherits "
                "WHERE inhparent = 'telemetry'::regclass"
            )
        }
    assert sum(chunks.values()) == 1 and len(chunks) >= 3
    async with service_conn.transaction(isolation="repeatable_read", readonly=True):
        await service_conn.execute(
            "SELECT set_config('app.tenant_id', $1, true)", str(owner.tenant_id)
        )
        dirty = await service_conn.fetch(
            SQL["rollup_dirty_ranges"], rollups.first_hour, rollups.last_hour
        )
        assert [(r["lo"], r["hi"]) for r in dirty] == [(marked, marked + timedelta(hours=1))]
        sources = aggregate_sources(span, rollups, [(r["lo"], r["hi"]) for r in dirty])
        assert sources.raw == [(marked, marked + timedelta(hours=1))]
        bounds = [
            [r[i] for r in part]
            for part in (sources.raw, sources.hourly, sources.daily)
            for i in (0, 1)
        ]
        plan = "\n".join(
            r[0]
            for r in await service_conn.fetch(
                "EXPLAIN " + SQL["aggregate_rollup"],
                uuid.UUID(claimed.device_id),
                "temp",
                timedelta(days=1),
                *[True] * 5,
                *bounds,
            )
        )
    planned = {name for name in chunks if re.search(rf"\b{name}\b", plan)}
    assert planned == {name for name, wanted in chunks.items() if wanted}, plan
    await refresh_rollups(owner_conn, settings)
