"""The read endpoints against rows the test inserted: values, buckets, pagination, latest,
ETags, errors, tenant isolation, and query plans."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.platform.context import Platform
from iotcore.telemetry.read.service import RollupSpan, TimeRange, aggregate_sources
from tests.conftest import REPO_ROOT
from tests.support.devices import DeviceCredentials, claimed_device
from tests.support.telemetry import load_readings, post_telemetry
from tests.support.users import RegisteredUser, register

Client = TestClient  # type: ignore[type-arg]
BASE = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # a Monday, wholly in the past


@pytest.fixture(scope="module")
async def seeded(
    client: Client, settings: Settings, owner_conn: Any
) -> tuple[RegisteredUser, DeviceCredentials]:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    await owner_conn.execute("SELECT telemetry_ensure_partitions($1, 1)", BASE.date())
    # temp: one point a minute for 2 hours; hum: every 10 minutes.
    await load_readings(
        owner_conn,
        owner.tenant_id,
        device.device_id,
        "temp",
        [(BASE + timedelta(minutes=i), float(i)) for i in range(120)],
        latest=True,
    )
    await load_readings(
        owner_conn,
        owner.tenant_id,
        device.device_id,
        "hum",
        [(BASE + timedelta(minutes=10 * i), 50.0 + i) for i in range(12)],
        latest=True,
    )
    return owner, device


def url(device: DeviceCredentials, tail: str) -> str:
    return f"/api/v1/devices/{device.device_id}{tail}"


WINDOW = {"from": BASE.isoformat(), "to": (BASE + timedelta(hours=2)).isoformat()}


async def test_metric_list_has_last_values(client: Client, seeded: Any) -> None:
    owner, device = seeded
    body = await (await client.get(url(device, "/metrics"), headers=owner.headers)).json()
    assert body["items"] == [
        {"metric": "hum", "last_ts": "2026-01-05T01:50:00.000Z", "last_value": 61.0},
        {"metric": "temp", "last_ts": "2026-01-05T01:59:00.000Z", "last_value": 119.0},
    ]


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_pagination_visits_every_row_once(client: Client, seeded: Any, order: str) -> None:
    owner, device = seeded
    seen: list[tuple[str, str]] = []
    cursor = None
    while True:
        params = {**WINDOW, "order": order, "limit": "7", **({"cursor": cursor} if cursor else {})}
        page = await (
            await client.get(url(device, "/telemetry"), params=params, headers=owner.headers)
        ).json()
        seen.extend((i["ts"], i["metric"]) for i in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 132
    assert seen == sorted(seen, reverse=(order == "desc"))


async def test_raw_filters_by_metric_and_window(client: Client, seeded: Any) -> None:
    owner, device = seeded
    params = {
        "metric": "temp",
        "from": (BASE + timedelta(minutes=5)).isoformat(),
        "to": str(int((BASE + timedelta(minutes=8)).timestamp() * 1000)),
        "limit": "1000",
    }
    body = await (
        await client.get(url(device, "/telemetry"), params=params, headers=owner.headers)
    ).json()
    assert [(i["ts"], i["value"]) for i in body["items"]] == [
        ("2026-01-05T00:05:00.000Z", 5.0),
        ("2026-01-05T00:06:00.000Z", 6.0),
        ("2026-01-05T00:07:00.000Z", 7.0),
    ]


async def test_aggregate_buckets_and_values(client: Client, seeded: Any) -> None:
    owner, device = seeded
    params = {**WINDOW, "metric": "temp", "bucket": "15m", "fn": "avg,min,max,sum,count"}
    body = await (
        await client.get(url(device, "/telemetry/aggregate"), params=params, headers=owner.headers)
    ).json()
    assert len(body["items"]) == 8
    first = body["items"][0]
    assert first == {
        "ts": "2026-01-05T00:00:00.000Z",
        "avg": 7.0,
        "min": 0.0,
        "max": 14.0,
        "sum": 105.0,
        "count": 15,
    }
    assert body["items"][1]["ts"] == "2026-01-05T00:15:00.000Z"
    iso = {**WINDOW, "metric": "temp", "bucket": "PT1H", "fn": "count"}
    hourly = await (
        await client.get(url(device, "/telemetry/aggregate"), params=iso, headers=owner.headers)
    ).json()
    assert hourly["items"] == [
        {"ts": "2026-01-05T00:00:00.000Z", "count": 60},
        {"ts": "2026-01-05T01:00:00.000Z", "count": 60},
    ]


async def test_aggregate_edges_count_only_points_inside_the_window(
    client: Client, seeded: Any
) -> None:
    owner, device = seeded
    params = {
        "metric": "temp",
        "from": (BASE + timedelta(minutes=7)).isoformat(),
        "to": str(int((BASE + timedelta(minutes=31)).timestamp() * 1000)),
        "bucket": "15m",
        "fn": "min,max,count",
    }
    body = await (
        await client.get(url(device, "/telemetry/aggregate"), params=params, headers=owner.headers)
    ).json()
    assert body == {
        "metric": "temp",
        "bucket": "15m",
        "items": [
            {"ts": "2026-01-05T00:00:00.000Z", "min": 7.0, "max": 14.0, "count": 8},
            {"ts": "2026-01-05T00:15:00.000Z", "min": 15.0, "max": 29.0, "count": 15},
            {"ts": "2026-01-05T00:30:00.000Z", "min": 30.0, "max": 30.0, "count": 1},
        ],
    }


async def test_pagination_of_one_metric_with_epoch_ms_window(client: Client, seeded: Any) -> None:
    owner, device = seeded
    window = {
        "metric": "hum",
        "from": str(int(BASE.timestamp() * 1000)),
        "to": str(int((BASE + timedelta(hours=2)).timestamp() * 1000)),
    }
    for order, expected in (("asc", list(range(12))), ("desc", list(range(11, -1, -1)))):
        values: list[float] = []
        cursor = None
        while True:
            params = {
                **window,
                "order": order,
                "limit": "5",
                **({"cursor": cursor} if cursor else {}),
            }
            page = await (
                await client.get(url(device, "/telemetry"), params=params, headers=owner.headers)
            ).json()
            assert {i["metric"] for i in page["items"]} <= {"hum"}
            values.extend(i["value"] for i in page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert values == [50.0 + i for i in expected], order


async def test_a_cursor_of_the_other_order_is_422(client: Client, seeded: Any) -> None:
    owner, device = seeded
    page = await (
        await client.get(
            url(device, "/telemetry"), params={**WINDOW, "limit": "2"}, headers=owner.headers
        )
    ).json()
    response = await client.get(
        url(device, "/telemetry"),
        params={**WINDOW, "order": "desc", "cursor": page["next_cursor"]},
        headers=owner.headers,
    )
    assert response.status == 422
    assert (await response.json())["error"]["details"][0]["field"] == "cursor"


async def test_week_buckets_start_on_monday(client: Client, seeded: Any) -> None:
    owner, device = seeded
    params = {
        "from": (BASE - timedelta(days=3)).isoformat(),
        "to": WINDOW["to"],
        "metric": "hum",
        "bucket": "P1W",
        "fn": "count",
    }
    body = await (
        await client.get(url(device, "/telemetry/aggregate"), params=params, headers=owner.headers)
    ).json()
    assert body["items"] == [{"ts": "2026-01-05T00:00:00.000Z", "count": 12}]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"from": "not a time"}, "from"),
        ({"fn": "median"}, "fn"),
        ({"bucket": "3 fortnights"}, "bucket"),
        ({"bucket": "1m", "from": "2025-11-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "bucket"),
    ],
)
async def test_bad_aggregate_queries_name_the_field(
    client: Client, seeded: Any, params: dict[str, str], field: str
) -> None:
    owner, device = seeded
    response = await client.get(
        url(device, "/telemetry/aggregate"),
        params={"metric": "temp", **params},
        headers=owner.headers,
    )
    body = await response.json()
    assert response.status == 422, body
    assert body["error"]["details"][0]["field"] == field


async def test_past_window_gets_an_etag_and_304(
    client: Client, seeded: Any, platform: Platform
) -> None:
    owner, device = seeded
    params = {**WINDOW, "metric": "temp", "bucket": "1h"}
    first = await client.get(
        url(device, "/telemetry/aggregate"), params=params, headers=owner.headers
    )
    etag = first.headers["ETag"]
    assert etag.startswith('"')
    again = await client.get(
        url(device, "/telemetry/aggregate"),
        params=params,
        headers={**owner.headers, "If-None-Match": etag},
    )
    assert again.status == 304
    assert again.headers["ETag"] == etag
    recent = await client.get(url(device, "/telemetry"), headers=owner.headers)
    assert "ETag" not in recent.headers, "a window reaching now has no ETag"


async def test_304_comes_from_redis_without_reading_the_database(
    client: Client, seeded: Any, owner_conn: Any
) -> None:
    """The ETag cached in Redis answers: a reading that landed in the window meanwhile is not
    read (the cached tag lives ETAG_TTL_S); a request without the tag sees it."""
    owner, device = seeded
    params = {**WINDOW, "metric": "late", "bucket": "1h", "fn": "count"}
    first = await client.get(
        url(device, "/telemetry/aggregate"), params=params, headers=owner.headers
    )
    assert (await first.json())["items"] == []
    await load_readings(
        owner_conn, owner.tenant_id, device.device_id, "late", [(BASE, 1.0)], latest=True
    )
    again = await client.get(
        url(device, "/telemetry/aggregate"),
        params=params,
        headers={**owner.headers, "If-None-Match": first.headers["ETag"]},
    )
    assert again.status == 304
    fresh = await client.get(
        url(device, "/telemetry/aggregate"), params=params, headers=owner.headers
    )
    assert (await fresh.json())["items"] == [{"ts": "2026-01-05T00:00:00.000Z", "count": 1}]
    assert fresh.headers["ETag"] != first.headers["ETag"]


async def test_etag_of_a_raw_page_matches_without_the_redis_entry(
    client: Client, seeded: Any, platform: Platform
) -> None:
    owner, device = seeded
    params = {**WINDOW, "limit": "3"}
    first = await client.get(url(device, "/telemetry"), params=params, headers=owner.headers)
    etag = first.headers["ETag"]
    async for key in platform.redis.client.scan_iter(match=platform.redis.key("etag", "*")):
        await platform.redis.client.delete(key)
    again = await client.get(
        url(device, "/telemetry"), params=params, headers={**owner.headers, "If-None-Match": etag}
    )
    assert again.status == 304, "the recomputed body has the same strong tag"


async def test_latest_from_cache_and_after_a_flush(
    client: Client, settings: Settings, platform: Platform
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    now = datetime.now(UTC).replace(microsecond=0)
    for offset, value in ((60, 1.0), (0, 2.0), (120, 0.5)):
        ts = int((now - timedelta(seconds=offset)).timestamp() * 1000)
        assert (
            await post_telemetry(client, device, {"ts": ts, "metrics": {"v": value}})
        ).status == 202
    expected = {"v": {"ts": now.isoformat().replace("+00:00", ".000Z"), "value": 2.0}}
    cached = await (
        await client.get(url(device, "/telemetry/latest"), headers=owner.headers)
    ).json()
    assert cached == {"device_id": device.device_id, "metrics": expected}
    await platform.redis.client.delete(
        platform.redis.key("latest", str(owner.tenant_id), device.device_id)
    )
    fallback = await (
        await client.get(url(device, "/telemetry/latest"), headers=owner.headers)
    ).json()
    assert fallback == cached
    refilled = await platform.redis.client.hgetall(
        platform.redis.key("latest", str(owner.tenant_id), device.device_id)
    )
    assert set(refilled) == {b"v"}, "the database answer refills the cache"


async def test_another_tenants_device_is_404_on_every_read(client: Client, seeded: Any) -> None:
    _, device = seeded
    stranger = await register(client)
    for tail, params in (
        ("/metrics", {}),
        ("/telemetry", {}),
        ("/telemetry/latest", {}),
        ("/telemetry/aggregate", {"metric": "temp"}),
    ):
        response = await client.get(url(device, tail), params=params, headers=stranger.headers)
        assert response.status == 404, tail
    missing = f"/api/v1/devices/{uuid.uuid4()}/metrics"
    assert (await client.get(missing, headers=stranger.headers)).status == 404


async def test_no_read_plans_a_sequential_scan(
    seeded: Any, owner_conn: Any, service_conn: Any
) -> None:
    owner, _ = seeded
    devices = [uuid.uuid4() for _ in range(200)]
    start = datetime.now(UTC) - timedelta(hours=6)
    await owner_conn.execute(
        "INSERT INTO telemetry SELECT $1, d, m, $2::timestamptz + make_interval(mins => i), i "
        "FROM unnest($3::uuid[]) d, unnest(ARRAY['a','b']) m, generate_series(0, 299) i",
        owner.tenant_id,
        start,
        devices,
    )
    await owner_conn.execute("SELECT telemetry_rollup_mark($1, NULL)", start)
    await owner_conn.execute("ANALYZE telemetry")
    from iotcore.platform.sql import queries

    sql = queries("telemetry_read", REPO_ROOT / "sql")
    now = datetime.now(UTC)
    hour = start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    # Whole hours from the hourly rollup, but the second one marked: raw edges, a raw hour,
    # two hourly ranges.
    sources = aggregate_sources(
        TimeRange(start, now),
        RollupSpan(hour, hour + timedelta(hours=5), hour, hour),
        [(hour + timedelta(hours=1), hour + timedelta(hours=2))],
    )
    assert (len(sources.raw), len(sources.hourly), len(sources.daily)) == (3, 2, 0)
    ranges = [
        [r[i] for r in group]
        for group in (sources.raw, sources.hourly, sources.daily)
        for i in (0, 1)
    ]
    shapes = {
        "metrics": (sql["metrics"], [devices[0]]),
        "raw_asc": (sql["raw_asc"], [devices[0], start, now, start, "", 101, None]),
        "raw_desc": (sql["raw_desc"], [devices[0], start, now, now, "", 101, None]),
        "raw_metric_asc": (sql["raw_asc"], [devices[0], start, now, start, "", 101, "a"]),
        "raw_metric_desc": (sql["raw_desc"], [devices[0], start, now, now, "", 101, "a"]),
        "aggregate": (
            sql["aggregate"],
            [devices[0], "a", timedelta(minutes=5), start, now, True, True, True, True, True],
        ),
        "aggregate_rollup": (
            sql["aggregate_rollup"],
            [devices[0], "a", timedelta(hours=1), *[True] * 5, *ranges],
        ),
    }
    # Empty or tiny partitions (days ahead, a few test rows) are rightly read sequentially;
    # what matters is that no partition large enough for the planner to care is.
    populated = [
        r[0]
        for r in await owner_conn.fetch(
            "SELECT tableoid::regclass::text FROM telemetry GROUP BY 1 HAVING count(*) > 10000"
        )
    ]
    assert populated
    async with service_conn.transaction():
        await service_conn.execute(
            "SELECT set_config('app.tenant_id', $1, true)", str(owner.tenant_id)
        )
        for name, (query, args) in shapes.items():
            plan = "\n".join(r[0] for r in await service_conn.fetch(f"EXPLAIN {query}", *args))
            for partition in populated:
                assert f"Seq Scan on {partition} " not in plan, f"{name}:\n{plan}"
