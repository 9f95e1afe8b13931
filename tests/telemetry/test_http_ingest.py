"""POST /api/v1/telemetry: durable 202s, the payload rules, rejects, limits, failure modes."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from tests.conftest import ApiFactory, free_port
from tests.support.devices import claimed_device
from tests.support.telemetry import basic, post_telemetry, rejects, stored_rows
from tests.support.users import register

Client = TestClient  # type: ignore[type-arg]
NOW_MS = lambda: int(time.time() * 1000)  # noqa: E731


async def test_accepted_readings_are_durable_before_202(
    client: Client, settings: Settings, owner_conn: Any
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    ts = NOW_MS()
    response = await post_telemetry(
        client, device, {"ts": ts, "metrics": {"temp": 21.5, "on": True}}
    )
    body = await response.json()
    assert response.status == 202, body
    assert body == {"accepted": 1, "stored": 2, "duplicates": 0, "rejected": 0}
    rows = await stored_rows(owner_conn, device.device_id)
    assert [(m, v) for m, _, v in rows] == [("on", 1.0), ("temp", 21.5)]
    assert int(rows[0][1].timestamp() * 1000) == ts


async def test_replayed_points_are_stored_once(
    client: Client, settings: Settings, owner_conn: Any
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    body = {"points": [{"ts": NOW_MS() - i * 1000, "metrics": {"a": i}} for i in range(5)]}
    first = await (await post_telemetry(client, device, body)).json()
    again = await (await post_telemetry(client, device, body)).json()
    assert first["stored"] == 5 and first["duplicates"] == 0
    assert again["stored"] == 0 and again["duplicates"] == 5
    assert len(await stored_rows(owner_conn, device.device_id)) == 5


async def test_first_telemetry_makes_the_device_active(client: Client, settings: Settings) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    await post_telemetry(client, device, {"metrics": {"x": 1}})
    info = await (
        await client.get(f"/api/v1/devices/{device.device_id}", headers=owner.headers)
    ).json()
    assert info["status"] == "active"
    assert info["last_seen_at"] is not None


@pytest.mark.parametrize(
    ("point", "reason"),
    [
        ({"metrics": {"bad name!": 1}}, "invalid_metric_name"),
        ({"metrics": {"x": "hot"}}, "invalid_value"),
        ({"metrics": {"x": 1}, "ts": "yesterday"}, "invalid_ts"),
        ({"metrics": {"x": 1}, "ts": 946684800000}, "ts_out_of_range"),
        ({"metrics": {f"m{i}": i for i in range(101)}}, "too_many_metrics"),
        ({"metrics": {}}, "invalid_shape"),
        ({"ts": NOW_MS()}, "invalid_shape"),
        (5, "invalid_shape"),
    ],
)
async def test_each_bad_point_is_rejected_with_its_reason_and_the_rest_stored(
    client: Client, settings: Settings, owner_conn: Any, point: Any, reason: str
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    good = {"ts": NOW_MS(), "metrics": {"ok": 1}}
    response = await post_telemetry(client, device, {"points": [point, good]})
    body = await response.json()
    assert response.status == 202, body
    assert body["accepted"] == 1 and body["rejected"] == 1 and body["stored"] == 1
    assert await rejects(owner_conn, device.device_id) == [reason]
    metrics = await (await client.get("/metrics")).text()
    assert f'iotcore_ingest_rejects_total{{reason="{reason}"}}' in metrics


async def test_whole_body_problems(client: Client, settings: Settings, owner_conn: Any) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    headers = {**basic(device.device_id, device.secret), "Content-Type": "application/json"}
    malformed = await client.post("/api/v1/telemetry", data=b"{nope", headers=headers)
    assert malformed.status == 400
    too_many = await post_telemetry(
        client, device, {"points": [{"metrics": {"a": 1}}] * (settings.telemetry_max_points + 1)}
    )
    assert too_many.status == 422
    all_bad = await post_telemetry(client, device, {"metrics": {"x": None}})
    assert all_bad.status == 422
    wrong_type = await client.post(
        "/api/v1/telemetry",
        data=b"a=1",
        headers={**basic(device.device_id, device.secret), "Content-Type": "text/plain"},
    )
    assert wrong_type.status == 415
    big = await client.post(
        "/api/v1/telemetry",
        data=b'{"metrics": {"a": 1}, "pad": "' + b"x" * 1_100_000 + b'"}',
        headers=headers,
    )
    assert big.status == 413
    await asyncio.sleep(0.2)
    assert {"malformed_json", "too_many_points", "invalid_value"} <= set(
        await rejects(owner_conn, device.device_id)
    )
    assert await stored_rows(owner_conn, device.device_id) == []


async def test_content_type_parameters_are_accepted(client: Client, settings: Settings) -> None:
    device = await claimed_device(client, settings, await register(client))
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        response = await client.post(
            "/api/v1/telemetry",
            data=b'{"metrics": {"a": 1}}',
            headers={**basic(device.device_id, device.secret), "Content-Type": content_type},
        )
        assert response.status == 202, content_type


async def test_malformed_basic_credentials_are_401(client: Client, settings: Settings) -> None:
    device = await claimed_device(client, settings, await register(client))
    good = basic(device.device_id, device.secret)["Authorization"].removeprefix("Basic ")
    for token in ("!!!", good + "=", good.rstrip("=") + "=A", "=" + good, good[:-2]):
        response = await client.post(
            "/api/v1/telemetry",
            json={"metrics": {"a": 1}},
            headers={"Authorization": f"Basic {token}"},
        )
        assert response.status == 401, token
    # The same credentials, well formed, are fine: only the encoding was refused.
    assert (await post_telemetry(client, device, {"metrics": {"a": 1}})).status == 202


async def test_tenant_mismatch_is_403(client: Client, settings: Settings, owner_conn: Any) -> None:
    alice, bob = await register(client), await register(client)
    device = await claimed_device(client, settings, alice)
    response = await post_telemetry(
        client, device, {"tenant_id": str(bob.tenant_id), "metrics": {"a": 1}}
    )
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "tenant_mismatch"
    same = await post_telemetry(
        client, device, {"tenant_id": str(alice.tenant_id), "metrics": {"a": 1}}
    )
    assert same.status == 202
    await asyncio.sleep(0.2)
    assert "tenant_mismatch" in await rejects(owner_conn, device.device_id)


async def test_unknown_wrong_and_reset_devices_are_401(client: Client, settings: Settings) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    body = {"metrics": {"a": 1}}
    unknown = await client.post(
        "/api/v1/telemetry", json=body, headers=basic(str(uuid.uuid4()), "x")
    )
    wrong = await client.post("/api/v1/telemetry", json=body, headers=basic(device.device_id, "x"))
    none = await client.post("/api/v1/telemetry", json=body)
    assert [unknown.status, wrong.status, none.status] == [401, 401, 401]
    await client.post(
        f"/api/v1/devices/{device.device_id}/reset",
        json={"confirmation": "RESET"},
        headers=owner.headers,
    )
    after_reset = await post_telemetry(client, device, body)
    assert after_reset.status == 401


async def test_rate_limit_429_with_retry_after_then_accepted(api_with: ApiFactory) -> None:
    client = await api_with(
        rate_limit_device_per_s=1, rate_limit_device_burst=3, rate_limit_request_floor=1
    )
    owner = await register(client)
    device = await claimed_device(client, client.settings, owner)
    statuses = [
        (await post_telemetry(client, device, {"ts": NOW_MS() - i, "metrics": {"a": i}})).status
        for i in range(4)
    ]
    assert statuses == [202, 202, 202, 429]
    limited = await post_telemetry(client, device, {"metrics": {"a": 9}})
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1
    await asyncio.sleep(1.2)
    assert (await post_telemetry(client, device, {"metrics": {"a": 10}})).status == 202


async def test_rate_limits_charge_each_reading_with_a_floor_per_request(
    api_with: ApiFactory,
) -> None:
    """Every reading costs a token (1,000 points x 100 metrics are not one request's
    worth), and a request carrying fewer than the floor still costs the floor."""
    client = await api_with(
        rate_limit_device_per_s=0.001, rate_limit_device_burst=20, rate_limit_request_floor=4
    )
    owner = await register(client)
    device = await claimed_device(client, client.settings, owner)

    def body(readings: int) -> dict[str, Any]:
        return {"ts": NOW_MS(), "metrics": {f"m{i}": i for i in range(readings)}}

    assert (await post_telemetry(client, device, body(12))).status == 202  # 20 - 12 = 8 left
    assert (await post_telemetry(client, device, body(9))).status == 429  # 9 > 8
    assert (await post_telemetry(client, device, body(1))).status == 202  # the floor: 4 left
    assert (await post_telemetry(client, device, body(1))).status == 202  # 0 left
    assert (await post_telemetry(client, device, body(1))).status == 429


async def test_tenant_rate_limit_counts_readings_across_devices(api_with: ApiFactory) -> None:
    client = await api_with(
        rate_limit_tenant_per_s=0.001, rate_limit_tenant_burst=30, rate_limit_request_floor=1
    )
    owner = await register(client)
    first = await claimed_device(client, client.settings, owner)
    second = await claimed_device(client, client.settings, owner)
    metrics = {"ts": NOW_MS(), "metrics": {f"m{i}": i for i in range(20)}}
    assert (await post_telemetry(client, first, metrics)).status == 202
    limited = await post_telemetry(client, second, metrics)
    assert limited.status == 429
    assert (await limited.json())["error"]["code"] == "rate_limited"


async def _device_on_dead_redis(api_with: Any, fail_open: bool) -> tuple[Client, Any]:
    """A device provisioned normally; then an app for it whose Redis is a dead port."""
    healthy = await api_with()
    owner = await register(healthy)
    device = await claimed_device(healthy, healthy.settings, owner)
    broken = await api_with(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        rate_limit_fail_open=fail_open,
        redis_timeout_s=0.3,
    )
    return broken, device


async def test_redis_down_fails_open_when_configured(api_with: Any, owner_conn: Any) -> None:
    client, device = await _device_on_dead_redis(api_with, fail_open=True)
    response = await post_telemetry(client, device, {"metrics": {"a": 1}})
    assert response.status == 202, await response.text()
    assert len(await stored_rows(owner_conn, device.device_id)) == 1


async def test_redis_down_fails_closed_when_configured(api_with: Any, owner_conn: Any) -> None:
    client, device = await _device_on_dead_redis(api_with, fail_open=False)
    response = await post_telemetry(client, device, {"metrics": {"a": 1}})
    assert response.status == 503
    assert "Retry-After" in response.headers
    assert await stored_rows(owner_conn, device.device_id) == []


async def test_full_write_queue_is_503_overloaded(api_with: ApiFactory) -> None:
    client = await api_with(writer_queue_rows=3, writer_batch_age_ms=1000, writer_batch_rows=3)
    owner = await register(client)
    device = await claimed_device(client, client.settings, owner)
    points = {"points": [{"ts": NOW_MS() - i, "metrics": {"a": i}} for i in range(2)]}
    first = asyncio.create_task(post_telemetry(client, device, points))
    await asyncio.sleep(0.2)  # the first request's 2 rows wait for a batch of 3 to fill
    second = await post_telemetry(client, device, {"metrics": {"b": 1, "c": 2}})
    assert second.status == 503
    assert (await second.json())["error"]["code"] == "overloaded"
    assert "Retry-After" in second.headers
    assert (await first).status == 202
