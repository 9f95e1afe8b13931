"""The device cache is keyed by the id's text where a caller has it (the webhook's Basic
user name, the read path's URL): an attacker's other spelling of the same id must not reach
a cache entry of its own that the reset's invalidation (keyed by the canonical text) would
miss, and a reset must end both the device's cached credentials and its former owner's
cached latest values at once."""

from __future__ import annotations

import time
from typing import Any

from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from tests.support.devices import claimed_device
from tests.support.telemetry import basic, post_telemetry
from tests.support.users import register

Client = TestClient  # type: ignore[type-arg]
RESET = {"confirmation": "RESET"}


def spellings(device_id: str) -> list[str]:
    """The same UUID written otherwise than canonically."""
    return [
        device_id.upper(),
        device_id.replace("-", ""),
        "{" + device_id + "}",
    ]


async def test_other_spellings_of_a_device_id_are_refused_by_the_webhook(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    reading = {"ts": int(time.time() * 1000), "metrics": {"x": 1}}
    accepted = await post_telemetry(client, device, reading)
    assert accepted.status == 202  # the canonical id authenticates (the cache is warm now)
    for spelling in spellings(device.device_id):
        response = await client.post(
            "/api/v1/telemetry",
            json={"ts": int(time.time() * 1000), "metrics": {"x": 1}},
            headers=basic(spelling, device.secret),
        )
        assert response.status == 401, spelling


async def test_a_reset_ends_cached_credentials_and_the_former_owners_latest_values(
    client: Client, settings: Settings, owner_conn: Any
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    now_ms = int(time.time() * 1000)
    for n in (1, 2):  # the second post is answered from the warm credentials cache
        posted = await post_telemetry(client, device, {"ts": now_ms + n, "metrics": {"t": n}})
        assert posted.status == 202
    latest_url = f"/api/v1/devices/{device.device_id}/telemetry/latest"
    before = await client.get(latest_url, headers=owner.headers)
    assert before.status == 200
    assert (await before.json())["metrics"]["t"]["value"] == 2  # the latest-values hash is warm
    for spelling in spellings(device.device_id):
        other = await client.get(
            f"/api/v1/devices/{spelling}/telemetry/latest", headers=owner.headers
        )
        assert other.status == 404, spelling

    reset = await client.post(
        f"/api/v1/devices/{device.device_id}/reset", json=RESET, headers=owner.headers
    )
    assert reset.status == 200

    refused = await post_telemetry(client, device, {"ts": now_ms + 3, "metrics": {"t": 3}})
    assert refused.status == 401
    gone = await client.get(latest_url, headers=owner.headers)
    assert gone.status == 404
    rows = await owner_conn.fetchval(
        "SELECT count(*) FROM telemetry WHERE device_id = $1", device.device_id
    )
    assert rows == 2
