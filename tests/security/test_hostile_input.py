"""Hostile input gets a 4xx with the error envelope, never a 500: NUL characters in any string
(PostgreSQL text cannot hold one), times outside the supported range in windows and forged
cursors, bucket durations that overflow, trailing newlines after names (full-match patterns),
and a flood of unknown keys (the details list is capped)."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.tools import factory_client
from tests.support.devices import claimed_device, factory_key
from tests.support.telemetry import post_telemetry
from tests.support.users import add_user, register

Client = TestClient  # type: ignore[type-arg]


async def _refused(response: Any, *statuses: int) -> dict[str, Any]:
    body = await response.read()
    assert response.status in (statuses or (400, 401, 403, 404, 422)), (
        response.method,
        response.url,
        response.status,
        body[:300],
    )
    error: dict[str, Any] = orjson.loads(body)["error"]
    return error


def _cursor(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


async def test_nul_characters_in_any_string_field_are_refused(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    nul = "a\x00b"
    posts = [
        (
            "/api/v1/auth/register",
            {"email": f"x{nul}@example.com", "password": "p" * 16, "tenant_name": "T"},
            None,
        ),
        (
            "/api/v1/auth/register",
            {"email": "nul-tenant@example.com", "password": "p" * 16, "tenant_name": nul},
            None,
        ),
        (
            "/api/v1/auth/login",
            {"email": f"x{nul}@example.com", "password": "whatever-password"},
            None,
        ),
        ("/api/v1/auth/login", {"email": owner.email, "password": nul}, None),
        ("/api/v1/auth/refresh", {"refresh_token": nul}, None),
        (
            "/api/v1/users",
            {"email": f"u{nul}@example.com", "password": "p" * 16, "role": "viewer"},
            owner.headers,
        ),
        (
            "/api/v1/devices/claim",
            {"serial_number": f"SN{nul}", "claim_code": "AAAAA-AAAAA"},
            owner.headers,
        ),
        (
            "/api/v1/devices/claim",
            {"serial_number": device.serial_number, "claim_code": nul},
            owner.headers,
        ),
    ]
    for path, body, headers in posts:
        error = await _refused(await client.post(path, json=body, headers=headers), 422)
        assert error["code"] == "validation_error"
        assert any("NUL" in d["problem"] for d in error["details"]), (path, error)
    patches = [{"name": nul}, {"labels": {"room": nul}}, {"labels": {nul: "x"}}]
    for body in patches:
        await _refused(
            await client.patch(
                f"/api/v1/devices/{device.device_id}", json=body, headers=owner.headers
            ),
            422,
        )
    # Factory provisioning, signed, with a NUL in the serial and the model.
    key_id, secret = factory_key(settings)
    for item in (
        {"serial_number": f"SN{nul}", "model": "m"},
        {"serial_number": "SN-NUL-1", "model": nul},
    ):
        path, raw, headers = factory_client.factory_request(key_id, secret, [item])
        await _refused(await client.post(path, data=raw, headers=headers), 422)
    # Telemetry: a metric name with a NUL is a rejected point, not a database error.
    await _refused(await post_telemetry(client, device, {"metrics": {nul: 1}}), 422)
    # Query parameters.
    base = f"/api/v1/devices/{device.device_id}/telemetry"
    for query in ("metric=a%00b", "cursor=a%00b", "from=2026-01-01T00:00:00Z%00"):
        await _refused(await client.get(f"{base}?{query}", headers=owner.headers), 422)
    await _refused(await client.get("/api/v1/devices?status=a%00", headers=owner.headers), 422)


async def test_times_outside_the_supported_range_are_refused(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    base = f"/api/v1/devices/{device.device_id}/telemetry"
    windows = [
        "from=0001-01-01T00:00:00Z&to=0001-01-02T00:00:00Z",
        "from=0001-01-01T00:30:00%2B01:00",
        "to=9999-12-31T23:59:59Z&from=9999-12-31T00:00:00Z",
        "from=-62135596800000",
        "from=-99999999999999&to=-99999999999000",
        "to=253402300799999",
        "from=99999999999999999999999",
    ]
    for window in windows:
        for path in (base, f"{base}/aggregate?metric=t&bucket=1h&"):
            url = f"{path}{'&' if '?' in path else '?'}{window}"
            await _refused(await client.get(url, headers=owner.headers), 422)
    forged_raw = [
        {"t": "0001-01-01T00:00:00+00:00", "m": "t", "o": "asc"},
        {"t": "0001-01-01T00:00:00+01:00", "m": "t", "o": "asc"},
        {"t": "9999-12-31T23:59:59+00:00", "m": "t", "o": "asc"},
        {"t": "2026-01-01T00:00:00+00:00", "m": "t\x00", "o": "asc"},
        {"t": "2026-01-01T00:00:00", "m": "t", "o": "asc"},
    ]
    for position in forged_raw:
        url = f"{base}?cursor={quote(_cursor(position))}"
        await _refused(await client.get(url, headers=owner.headers), 422)
    forged_keyset = [
        {"t": "0001-01-01T00:00:00+00:00", "id": device.device_id},
        {"t": "0001-01-01T00:00:00-01:00", "id": device.device_id},
        {"t": "9999-12-31T23:59:59.999999-10:00", "id": device.device_id},
    ]
    for position in forged_keyset:
        url = f"/api/v1/devices?cursor={quote(_cursor(position))}"
        await _refused(await client.get(url, headers=owner.headers), 422)


async def test_overflowing_bucket_durations_are_refused(client: Client, settings: Settings) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    base = f"/api/v1/devices/{device.device_id}/telemetry/aggregate?metric=t&bucket="
    for bucket in (
        "P999999999W",
        "P99999999999999999999D",
        "PT99999999999999999999H",
        "P" + "9" * 5000 + "D",
        "P100000W",
        "P1D\n",
    ):
        await _refused(await client.get(base + quote(bucket), headers=owner.headers), 422)


async def test_names_with_a_trailing_newline_are_refused(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    base = f"/api/v1/devices/{device.device_id}"
    await _refused(await post_telemetry(client, device, {"metrics": {"temp\n": 1}}), 422)
    await _refused(
        await client.patch(base, json={"labels": {"room\n": "kitchen"}}, headers=owner.headers),
        422,
    )
    for query in ("telemetry?metric=temp%0A", "telemetry/aggregate?metric=temp%0A&bucket=1h"):
        await _refused(await client.get(f"{base}/{query}", headers=owner.headers), 422)
    # The same names without the newline are fine: the refusals were about the newline.
    assert (await post_telemetry(client, device, {"metrics": {"temp": 1}})).status == 202
    ok = await client.patch(base, json={"labels": {"room": "kitchen"}}, headers=owner.headers)
    assert ok.status == 200


async def test_a_flood_of_unknown_keys_gets_a_capped_details_list(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    body = {f"k{i}": i for i in range(60_000)}
    response = await client.patch(
        f"/api/v1/devices/{device.device_id}", json=body, headers=owner.headers
    )
    error = await _refused(response, 422)
    assert len(error["details"]) <= 21
    assert error["details"][-1]["problem"] == "59980 more problems not shown"


async def test_ids_in_paths_are_taken_in_canonical_form_only(
    client: Client, settings: Settings
) -> None:
    """One id, one spelling: an upper-case or dash-less UUID names nothing (404), for users
    and jobs as for devices."""
    owner = await register(client)
    viewer = await add_user(client, owner, "viewer")
    device = await claimed_device(client, settings, owner)
    purge = await client.post(
        f"/api/v1/devices/{device.device_id}/purge",
        json={"confirmation": "PURGE"},
        headers=owner.headers,
    )
    assert purge.status == 202, await purge.text()
    job_id = (await purge.json())["job_id"]
    for spell in (str.upper, lambda text: text.replace("-", "")):
        user = await client.patch(
            f"/api/v1/users/{spell(str(viewer.user_id))}",
            json={"role": "admin"},
            headers=owner.headers,
        )
        assert user.status == 404, await user.text()
        job = await client.get(f"/api/v1/jobs/{spell(job_id)}", headers=owner.headers)
        assert job.status == 404
        got = await client.get(f"/api/v1/devices/{spell(device.device_id)}", headers=owner.headers)
        assert got.status == 404
    assert (await client.get(f"/api/v1/jobs/{job_id}", headers=owner.headers)).status == 200
    changed = await client.patch(
        f"/api/v1/users/{viewer.user_id}", json={"role": "admin"}, headers=owner.headers
    )
    assert changed.status == 200
