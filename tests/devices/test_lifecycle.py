"""The whole life of a device through the API, and the attacks on each step."""

from __future__ import annotations

import time
from typing import Any

from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.devices import signing
from iotcore.tools import factory_client
from tests.support.devices import (
    claim,
    claimed_device,
    device_call,
    factory_key,
    provision,
    unique_serial,
)
from tests.support.users import add_user, register

Client = TestClient  # type: ignore[type-arg]
BOOTSTRAP, SECRET = "/api/v1/devices/bootstrap", "/api/v1/devices/secret"


def test_derivations_match_api_md() -> None:
    key, serial = "factory-secret", "SN-1"
    code = signing.claim_code(key, serial)
    assert len(code) == 11 and code[5] == "-"
    assert all(c in signing.CROCKFORD for c in code.replace("-", ""))
    assert signing.claim_code_matches(key, serial, code.lower().replace("-", " "))
    aliased = code.replace("1", "l").replace("0", "o")
    assert signing.claim_code_matches(key, serial, aliased)
    assert len(signing.device_key(key, "abc")) == 32


async def test_bulk_provisioning_is_idempotent_by_serial(
    client: Client, settings: Settings
) -> None:
    serials = [unique_serial() for _ in range(3)]
    first = await provision(client, settings, serials=serials)
    key_id, secret = factory_key(settings)
    path, body, headers = factory_client.factory_request(
        key_id,
        secret,
        [{"serial_number": s, "model": "test-sensor"} for s in serials],
    )
    retry = await client.post(path, data=body, headers=headers)
    assert retry.status == 200, await retry.text()
    answer = (await retry.json())["devices"]
    assert [(d.device_id, d.claim_code) for d in first] == [
        (d["device_id"], d["claim_code"]) for d in answer
    ]
    assert all(not d["created"] for d in answer)
    expected_key = signing.device_key(secret, first[0].device_id)
    assert first[0].device_key == expected_key
    assert first[0].claim_code == signing.claim_code(secret, serials[0])


async def test_whole_life_of_a_device(client: Client, settings: Settings) -> None:
    owner = await register(client)
    (device,) = await provision(client, settings)

    boot = await (await device_call(client, device, BOOTSTRAP)).json()
    assert boot["status"] == "unclaimed"
    early = await device_call(client, device, SECRET)
    assert early.status == 409
    assert (await early.json())["error"]["code"] == "device_not_claimed"

    claimed = await claim(client, owner, device)
    assert claimed.status == 200
    assert (await claimed.json())["status"] == "claimed"
    assert (await (await device_call(client, device, BOOTSTRAP)).json())["status"] == "claimed"

    secret = await device_call(client, device, SECRET)
    body = await secret.json()
    assert secret.status == 200
    assert body["tenant_id"] == str(owner.tenant_id)
    assert body["mqtt"]["telemetry_topic"] == (
        f"tenants/{owner.tenant_id}/devices/{device.device_id}/telemetry"
    )
    assert len(body["secret"]) >= 43
    again = await device_call(client, device, SECRET)
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "secret_already_delivered"

    listed = await (await client.get("/api/v1/devices", headers=owner.headers)).json()
    assert [d["device_id"] for d in listed["items"]] == [device.device_id]
    patched = await client.patch(
        f"/api/v1/devices/{device.device_id}",
        json={"name": "boiler", "labels": {"site": "north"}},
        headers=owner.headers,
    )
    assert (await patched.json())["labels"] == {"site": "north"}


async def test_secret_is_stored_only_as_a_hash(
    client: Client, settings: Settings, owner_conn: Any
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    stored = await owner_conn.fetchval(
        "SELECT secret_hash FROM devices WHERE device_id = $1", creds.device_id
    )
    assert creds.secret.encode() not in bytes(stored)
    import hashlib

    assert bytes(stored) == hashlib.sha256(creds.secret.encode()).digest()


async def test_wrong_claim_code_is_403_and_throttled_after_five(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    (device,) = await provision(client, settings)
    statuses = []
    for _ in range(6):
        response = await client.post(
            "/api/v1/devices/claim",
            json={"serial_number": device.serial_number, "claim_code": "00000-00000"},
            headers=owner.headers,
        )
        statuses.append(response.status)
        if response.status == 403:
            assert (await response.json())["error"]["code"] == "invalid_claim"
    assert statuses == [403] * 5 + [429]


async def test_unknown_serial_looks_like_a_wrong_code(client: Client) -> None:
    owner = await register(client)
    response = await client.post(
        "/api/v1/devices/claim",
        json={"serial_number": unique_serial(), "claim_code": "ABCDE-FGHJK"},
        headers=owner.headers,
    )
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "invalid_claim"


async def test_claim_of_a_device_of_another_tenant_is_409(
    client: Client, settings: Settings
) -> None:
    alice, bob = await register(client), await register(client)
    (device,) = await provision(client, settings)
    assert (await claim(client, alice, device)).status == 200
    taken = await claim(client, bob, device)
    assert taken.status == 409
    assert (await taken.json())["error"]["code"] == "already_claimed"


async def test_viewer_cannot_claim(client: Client, settings: Settings) -> None:
    owner = await register(client)
    viewer = await add_user(client, owner, "viewer")
    (device,) = await provision(client, settings)
    assert (await claim(client, viewer, device)).status == 403


async def test_another_tenants_device_is_404_on_every_endpoint(
    client: Client, settings: Settings
) -> None:
    alice, bob = await register(client), await register(client)
    creds = await claimed_device(client, settings, alice)
    base = f"/api/v1/devices/{creds.device_id}"
    responses = [
        await client.get(base, headers=bob.headers),
        await client.patch(base, json={"name": "x"}, headers=bob.headers),
        await client.post(f"{base}/secret/rotate", headers=bob.headers),
        await client.post(f"{base}/reset", json={"confirmation": "RESET"}, headers=bob.headers),
    ]
    assert [r.status for r in responses] == [404] * 4
    listed = await (await client.get("/api/v1/devices", headers=bob.headers)).json()
    assert listed["items"] == []
    still = await (await client.get(base, headers=alice.headers)).json()
    assert still["status"] == "claimed" and still["name"] is None


async def test_reset_needs_the_confirmation_word(client: Client, settings: Settings) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    for body in ({}, {"confirmation": "reset"}, {"confirmation": "yes"}):
        response = await client.post(
            f"/api/v1/devices/{creds.device_id}/reset", json=body, headers=owner.headers
        )
        assert response.status == 422


async def test_reset_returns_the_device_to_unclaimed_for_anyone(
    client: Client, settings: Settings
) -> None:
    alice, bob = await register(client), await register(client)
    (device,) = await provision(client, settings)
    await claim(client, alice, device)
    reset = await client.post(
        f"/api/v1/devices/{device.device_id}/reset",
        json={"confirmation": "RESET"},
        headers=alice.headers,
    )
    assert reset.status == 200
    assert (await reset.json())["status"] == "unclaimed"
    assert (await (await device_call(client, device, BOOTSTRAP)).json())["status"] == "unclaimed"
    assert (
        await client.get(f"/api/v1/devices/{device.device_id}", headers=alice.headers)
    ).status == 404
    assert (await claim(client, bob, device)).status == 200


async def test_expired_timestamp_is_refused(client: Client, settings: Settings) -> None:
    key_id, secret = factory_key(settings)
    path, body, headers = factory_client.factory_request(
        key_id,
        secret,
        [{"serial_number": unique_serial(), "model": "m"}],
        timestamp=int(time.time()) - 301,
    )
    response = await client.post(path, data=body, headers=headers)
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "signature_expired"


async def test_replayed_signature_is_refused(client: Client, settings: Settings) -> None:
    key_id, secret = factory_key(settings)
    path, body, headers = factory_client.factory_request(
        key_id, secret, [{"serial_number": unique_serial(), "model": "m"}]
    )
    assert (await client.post(path, data=body, headers=headers)).status == 201
    replay = await client.post(path, data=body, headers=headers)
    assert replay.status == 401
    assert (await replay.json())["error"]["code"] == "replayed_request"


async def test_signature_over_another_body_is_refused(client: Client, settings: Settings) -> None:
    key_id, secret = factory_key(settings)
    path, _, headers = factory_client.factory_request(
        key_id, secret, [{"serial_number": unique_serial(), "model": "m"}]
    )
    other = b'{"devices": [{"serial_number": "EVIL-1", "model": "m"}]}'
    response = await client.post(path, data=other, headers=headers)
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_signature"


async def test_unknown_key_id_is_refused(client: Client, settings: Settings) -> None:
    _, secret = factory_key(settings)
    path, body, headers = factory_client.factory_request(
        "no-such-key", secret, [{"serial_number": unique_serial(), "model": "m"}]
    )
    response = await client.post(path, data=body, headers=headers)
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_signature"


async def test_device_request_signed_with_the_wrong_key_is_refused(
    client: Client, settings: Settings
) -> None:
    (device,) = await provision(client, settings)
    path, body, headers = factory_client.device_request(device.device_id, b"x" * 32, BOOTSTRAP)
    response = await client.post(path, data=body, headers=headers)
    assert response.status == 401


async def test_bad_factory_bodies_are_422(client: Client, settings: Settings) -> None:
    key_id, secret = factory_key(settings)
    for devices in ([], [{"serial_number": "A", "model": "m"}] * 2, [{"model": "m"}]):
        path, body, headers = factory_client.factory_request(key_id, secret, devices)
        response = await client.post(path, data=body, headers=headers)
        assert response.status == 422, devices
