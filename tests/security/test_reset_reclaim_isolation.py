"""A device changes hands: tenant A's device sends readings, A resets it, tenant B claims it
and the device fetches a new secret. B must see nothing of A's (latest values, metric list,
raw pages, ETag'd aggregates, live stream); A keeps reading its own history through the raw
and aggregate endpoints, and nothing else of the device; the reset clears A's derived state
(latest-values rows, Redis hashes, cached ETags) but none of A's stored readings. Real HTTP,
real Redis, real Postgres (ARCHITECTURE.md, "Derived state belongs to a tenant").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import aiohttp
import orjson
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from iotcore.config import Settings
from iotcore.devices.registry import DeviceRegistry
from iotcore.platform.context import Platform
from tests.support.devices import (
    DeviceCredentials,
    ProvisionedDevice,
    claim_with_secret,
    provision,
)
from tests.support.telemetry import post_telemetry
from tests.support.users import RegisteredUser, register

Client = TestClient  # type: ignore[type-arg]
RESET = {"confirmation": "RESET"}


@dataclass
class HandOver:
    """A device that A used and reset, and B then claimed (with a fresh secret)."""

    a: RegisteredUser
    b: RegisteredUser
    device: ProvisionedDevice
    a_credentials: DeviceCredentials
    b_credentials: DeviceCredentials
    window: dict[str, str]  # wholly in the past: A's readings are in it, ETag'd
    a_etag: str


def ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def device_url(device: ProvisionedDevice | DeviceCredentials, tail: str = "") -> str:
    return f"/api/v1/devices/{device.device_id}{tail}"


async def a_uses_the_device(client: Client, settings: Settings) -> tuple[Any, ...]:
    """A claims a device, it sends readings an hour ago and now, A reads everything once
    (filling the latest-values cache and an ETag)."""
    a = await register(client)
    (device,) = await provision(client, settings)
    a_credentials = await claim_with_secret(client, a, device)
    hour_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    points = [
        {"ts": ms(hour_ago + timedelta(minutes=i)), "metrics": {"temp": 10.0 + i, "a_only": i}}
        for i in range(5)
    ]
    points.append({"ts": ms(datetime.now(UTC)), "metrics": {"temp": 99.0, "a_only": 99}})
    response = await post_telemetry(client, a_credentials, {"points": points})
    assert response.status == 202, await response.text()
    latest = await (
        await client.get(device_url(device, "/telemetry/latest"), headers=a.headers)
    ).json()
    assert set(latest["metrics"]) == {"temp", "a_only"}
    window = {
        "from": hour_ago.isoformat(),
        "to": (hour_ago + timedelta(minutes=10)).isoformat(),
        "metric": "temp",
        "bucket": "1h",
        "fn": "count,max",
    }
    aggregate = await client.get(
        device_url(device, "/telemetry/aggregate"), params=window, headers=a.headers
    )
    assert aggregate.status == 200
    assert sum(i["count"] for i in (await aggregate.json())["items"]) == 5
    return a, device, a_credentials, window, aggregate.headers["ETag"]


async def hand_over(client: Client, settings: Settings) -> HandOver:
    a, device, a_credentials, window, a_etag = await a_uses_the_device(client, settings)
    reset = await client.post(device_url(device, "/reset"), json=RESET, headers=a.headers)
    assert reset.status == 200, await reset.text()
    b = await register(client)
    b_credentials = await claim_with_secret(client, b, device)
    assert b_credentials.secret != a_credentials.secret
    return HandOver(a, b, device, a_credentials, b_credentials, window, a_etag)


async def read_sse(response: aiohttp.ClientResponse, until: Any, timeout: float) -> list[Any]:
    """The telemetry events' data until `until(data)` is true for one of them."""
    events: list[Any] = []

    async def collect() -> None:
        async for raw_line in response.content:
            line = raw_line.decode().rstrip("\n")
            if line.startswith("data: "):
                events.append(orjson.loads(line[6:]))
                if until(events[-1]):
                    return

    await asyncio.wait_for(collect(), timeout)
    return events


async def test_new_owner_sees_nothing_of_the_former_owner(
    client: Client, settings: Settings
) -> None:
    h = await hand_over(client, settings)
    b = h.b.headers

    latest = await client.get(device_url(h.device, "/telemetry/latest"), headers=b)
    assert latest.status == 200
    assert (await latest.json())["metrics"] == {}, "A's latest values shown to B"
    metrics = await client.get(device_url(h.device, "/metrics"), headers=b)
    assert (await metrics.json())["items"] == []
    raw = await client.get(
        device_url(h.device, "/telemetry"),
        params={"from": h.window["from"], "to": h.window["to"]},
        headers=b,
    )
    assert (await raw.json())["items"] == []
    aggregate = await client.get(
        device_url(h.device, "/telemetry/aggregate"),
        params=h.window,
        headers={**b, "If-None-Match": h.a_etag},
    )
    assert aggregate.status == 200, "A's cached ETag answered B's request"
    assert (await aggregate.json())["items"] == []

    # The device, now B's, reports the same metric names: B's values only, everywhere.
    now = datetime.now(UTC).replace(microsecond=0)
    sent = await post_telemetry(client, h.b_credentials, {"ts": ms(now), "metrics": {"temp": -1.5}})
    assert sent.status == 202, await sent.text()
    latest_body = await (
        await client.get(device_url(h.device, "/telemetry/latest"), headers=b)
    ).json()
    assert latest_body["metrics"] == {
        "temp": {"ts": now.isoformat().replace("+00:00", ".000Z"), "value": -1.5}
    }
    metric_list = await (await client.get(device_url(h.device, "/metrics"), headers=b)).json()
    assert [(m["metric"], m["last_value"]) for m in metric_list["items"]] == [("temp", -1.5)]

    # B's live stream, replayed from its very beginning, carries B's point and nothing of A's.
    stream = await client.get(
        "/api/v1/telemetry/stream",
        params={"device_id": h.device.device_id},
        headers={**b, "Last-Event-ID": "0-0"},
    )
    assert stream.status == 200
    events = await read_sse(stream, lambda data: data["metrics"].get("temp") == -1.5, 10)
    stream.close()
    assert [e["metrics"] for e in events] == [{"temp": -1.5}]


async def test_reclaimed_device_may_report_older_readings_than_the_former_owners(
    client: Client, settings: Settings
) -> None:
    """B's newest value is B's, even when A's was newer: the latest-values row of another
    tenant neither blocks B's write nor wins over it."""
    h = await hand_over(client, settings)
    older = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    sent = await post_telemetry(
        client, h.b_credentials, {"ts": ms(older), "metrics": {"temp": 7.0}}
    )
    assert sent.status == 202, await sent.text()
    latest = await (
        await client.get(device_url(h.device, "/telemetry/latest"), headers=h.b.headers)
    ).json()
    assert latest["metrics"] == {
        "temp": {"ts": older.isoformat().replace("+00:00", ".000Z"), "value": 7.0}
    }


async def test_former_owner_keeps_its_history_and_nothing_else(
    client: Client, settings: Settings
) -> None:
    h = await hand_over(client, settings)
    a = h.a.headers
    in_window = datetime.fromisoformat(h.window["from"]) + timedelta(minutes=7)
    sent = await post_telemetry(
        client, h.b_credentials, {"ts": ms(in_window), "metrics": {"temp": 1000.0}}
    )
    assert sent.status == 202, await sent.text()

    raw = await client.get(
        device_url(h.device, "/telemetry"),
        params={"from": h.window["from"], "to": h.window["to"], "metric": "temp"},
        headers=a,
    )
    assert raw.status == 200, await raw.text()
    assert [i["value"] for i in (await raw.json())["items"]] == [10.0, 11.0, 12.0, 13.0, 14.0]
    aggregate = await client.get(
        device_url(h.device, "/telemetry/aggregate"), params=h.window, headers=a
    )
    assert aggregate.status == 200
    # The window may straddle an hour boundary: the highest bucket maximum is A's highest.
    highest = max(i["max"] for i in (await aggregate.json())["items"])
    assert highest == 14.0, "B's reading reached A"
    # ...while B sees its own reading of that window only.
    b_raw = await client.get(
        device_url(h.device, "/telemetry"),
        params={"from": h.window["from"], "to": h.window["to"]},
        headers=h.b.headers,
    )
    assert [i["value"] for i in (await b_raw.json())["items"]] == [1000.0]

    # The device itself is no longer A's: not listed, and its current state is 404.
    listed = await (await client.get("/api/v1/devices", headers=a)).json()
    assert h.device.device_id not in {d["device_id"] for d in listed["items"]}
    for tail in ("", "/metrics", "/telemetry/latest"):
        response = await client.get(device_url(h.device, tail), headers=a)
        assert response.status == 404, tail
    stream = await client.get(
        "/api/v1/telemetry/stream", params={"device_id": h.device.device_id}, headers=a
    )
    assert stream.status == 404
    # A tenant that never held the device reads nothing of it.
    stranger = await register(client)
    for tail in ("/telemetry", "/telemetry/aggregate"):
        response = await client.get(
            device_url(h.device, tail), params=h.window, headers=stranger.headers
        )
        assert response.status == 404, tail


async def test_reset_clears_the_former_owners_derived_state_and_keeps_its_readings(
    client: Client, settings: Settings, platform: Platform, owner_conn: Any
) -> None:
    a, device, _, _, _ = await a_uses_the_device(client, settings)
    device_id = UUID(device.device_id)
    keys_before = await _keys_about(platform, device_id, a.tenant_id)
    assert keys_before, "reading filled the latest-values cache and an ETag"

    reset = await client.post(device_url(device, "/reset"), json=RESET, headers=a.headers)
    assert reset.status == 200

    left = await _keys_about(platform, device_id, a.tenant_id)
    assert [k for k in left if ":tb:" not in k] == [], "only rate-limit buckets may remain"
    latest_rows = await owner_conn.fetchval(
        "SELECT count(*) FROM telemetry_latest WHERE device_id = $1", device_id
    )
    assert latest_rows == 0
    kept = await owner_conn.fetchval(
        "SELECT count(*) FROM telemetry WHERE device_id = $1 AND tenant_id = $2",
        device_id,
        a.tenant_id,
    )
    assert kept == 12, "stored telemetry stays with the tenant that owned it"


async def test_derived_redis_keys_name_the_tenant_and_expire(
    client: Client, settings: Settings, platform: Platform
) -> None:
    a, device, _, _, _ = await a_uses_the_device(client, settings)
    keys = await _keys_about(platform, UUID(device.device_id), a.tenant_id)
    live = platform.redis.key("live", str(a.tenant_id))
    assert keys, "the latest-values hash and the ETag are there"
    for key in [*keys, live]:
        assert str(a.tenant_id) in key, key
        assert await platform.redis.client.ttl(key) > 0, f"{key} never expires"


async def test_a_write_racing_the_reset_leaves_no_latest_values_behind(
    client: Client, settings: Settings, platform: Platform, owner_conn: Any
) -> None:
    """A batch that waits on the device row while the reset commits stores A's readings
    (the device sent them under A's credentials) but keeps no latest values for A."""
    a, device, a_credentials, _, _ = await a_uses_the_device(client, settings)
    device_id = UUID(device.device_id)
    lock = owner_conn.transaction()
    await lock.start()
    await owner_conn.execute("SELECT 1 FROM devices WHERE device_id = $1 FOR UPDATE", device_id)
    reset = asyncio.create_task(
        client.post(device_url(device, "/reset"), json=RESET, headers=a.headers)
    )
    sent: asyncio.Task[Any] | None = None
    try:
        await _wait_for_lock_waiters(platform, 1)
        late = datetime.now(UTC) + timedelta(seconds=1)
        sent = asyncio.create_task(
            post_telemetry(client, a_credentials, {"ts": ms(late), "metrics": {"late": 1}})
        )
        await _wait_for_lock_waiters(platform, 2)
    finally:
        await lock.rollback()
    assert (await reset).status == 200
    assert sent is not None and (await sent).status == 202
    rows = await owner_conn.fetch(
        "SELECT tenant_id, metric FROM telemetry_latest WHERE device_id = $1", device_id
    )
    assert rows == []
    assert (
        await platform.redis.client.exists(
            platform.redis.key("latest", str(a.tenant_id), str(device_id))
        )
        == 0
    )
    stored = await owner_conn.fetchval(
        "SELECT tenant_id FROM telemetry WHERE device_id = $1 AND metric = 'late'", device_id
    )
    assert stored == a.tenant_id


async def test_a_replica_that_missed_the_invalidation_never_resolves_to_the_former_owner(
    client: Client, settings: Settings, platform: Platform
) -> None:
    """Another replica, with a long cache TTL, looks the device up under A and is not
    listening while the device changes hands: once its listener subscribes, it answers B."""
    replica_platform = Platform.from_settings(
        settings.model_copy(update={"device_cache_ttl_s": 300.0})
    )
    await replica_platform.start()
    replica = DeviceRegistry(replica_platform)
    try:
        a, device, _, _, _ = await a_uses_the_device(client, settings)
        device_id = UUID(device.device_id)
        before = await replica.resolve(device_id)
        assert before is not None and before.tenant_id == a.tenant_id
        reset = await client.post(device_url(device, "/reset"), json=RESET, headers=a.headers)
        assert reset.status == 200
        b = await register(client)
        await claim_with_secret(client, b, device)
        await replica.start()
        deadline = time.monotonic() + 15
        now = await replica.resolve(device_id)
        while (now is None or now.tenant_id != b.tenant_id) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            now = await replica.resolve(device_id)
        assert now is not None and now.tenant_id == b.tenant_id, "stale tenant from the cache"
    finally:
        await replica.close()
        await replica_platform.close()


async def test_a_look_up_straddling_an_invalidation_is_not_cached(
    client: Client, settings: Settings, platform: Platform, owner_conn: Any
) -> None:
    """The look-up read the row before the change, the invalidation came before it was
    stored: caching its answer would keep the former tenant for a whole TTL."""
    a, device_id = await _claimed_device(client, settings)
    registry = DeviceRegistry(platform)
    async with _devices_locked(owner_conn):
        look_up = asyncio.create_task(registry.resolve(device_id))
        await _wait_for_lock_waiters(platform, 1)
        await registry.invalidate(device_id)
    identity = await look_up
    assert identity is not None and identity.tenant_id == a.tenant_id
    found, _ = registry.cached(device_id)
    assert not found


async def test_concurrent_misses_for_one_device_share_one_look_up(
    client: Client, settings: Settings, platform: Platform, owner_conn: Any
) -> None:
    """Every connection of a device missing the cache at once (a cold start, an expired
    entry) asks the database once, not once per connection."""
    a, device_id = await _claimed_device(client, settings)
    registry = DeviceRegistry(platform)
    before = device_lookups()
    async with _devices_locked(owner_conn):
        look_ups = [asyncio.create_task(registry.resolve(device_id)) for _ in range(20)]
        await _wait_for_lock_waiters(platform, 1)
        abandoned = asyncio.create_task(registry.resolve(device_id))
        await asyncio.sleep(0)
        abandoned.cancel()  # a caller going away does not cancel the others' look-up
    identities = await asyncio.gather(*look_ups)
    assert {i.tenant_id if i else None for i in identities} == {a.tenant_id}
    assert device_lookups() - before == 1
    assert registry.cached(device_id)[0]


async def test_a_miss_after_an_invalidation_does_not_join_the_earlier_look_up(
    client: Client, settings: Settings, platform: Platform, owner_conn: Any
) -> None:
    _, device_id = await _claimed_device(client, settings)
    registry = DeviceRegistry(platform)
    before = device_lookups()
    async with _devices_locked(owner_conn):
        earlier = asyncio.create_task(registry.resolve(device_id))
        await _wait_for_lock_waiters(platform, 1)
        await registry.invalidate(device_id)
        later = asyncio.create_task(registry.resolve(device_id))
        await _wait_for_lock_waiters(platform, 2)
    await asyncio.gather(earlier, later)
    assert device_lookups() - before == 2
    assert registry.cached(device_id)[0]  # the later look-up's answer is cached


async def _claimed_device(client: Client, settings: Settings) -> tuple[RegisteredUser, UUID]:
    a = await register(client)
    (device,) = await provision(client, settings)
    await claim_with_secret(client, a, device)
    return a, UUID(device.device_id)


@contextlib.asynccontextmanager
async def _devices_locked(owner_conn: Any) -> AsyncIterator[None]:
    """Every look-up of a device waits while this holds the table (rolled back after)."""
    lock = owner_conn.transaction()
    await lock.start()
    try:
        await owner_conn.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        await lock.rollback()


def device_lookups() -> float:
    return REGISTRY.get_sample_value("iotcore_device_credential_lookups_total") or 0.0


async def _wait_for_lock_waiters(platform: Platform, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with platform.db.primary.acquire() as conn:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        if waiting >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} sessions waited on the device row")


async def _keys_about(platform: Platform, device_id: UUID, tenant_id: UUID) -> list[str]:
    """Redis keys of this test run that hold derived state of the device: any key naming
    the device, and ETags of the tenant (their key hashes the path, device included)."""
    found = []
    async for raw in platform.redis.client.scan_iter(match=platform.redis.prefix + "*"):
        key = raw.decode()
        if str(device_id) in key or key.startswith(platform.redis.key("etag", str(tenant_id))):
            found.append(key)
    return sorted(found)
