"""Devices through the public API: provision with the factory signature, claim, fetch secret."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.devices import signing
from iotcore.tools import factory_client
from tests.support.users import RegisteredUser

_numbers = itertools.count(1)


@dataclass
class ProvisionedDevice:
    device_id: str
    serial_number: str
    claim_code: str
    device_key: bytes


@dataclass
class DeviceCredentials:
    device_id: str
    tenant_id: str
    serial_number: str
    secret: str
    device_key: bytes
    telemetry_topic: str
    status_topic: str


def unique_serial() -> str:
    return f"SN-{next(_numbers):05d}-{uuid.uuid4().hex[:8].upper()}"


def factory_key(settings: Settings) -> tuple[str, str]:
    key_id = settings.manufacturing_signing_key_id
    return key_id, settings.manufacturing_key_ring[key_id]


async def provision(
    client: TestClient,
    settings: Settings,
    count: int = 1,
    serials: list[str] | None = None,  # type: ignore[type-arg]
) -> list[ProvisionedDevice]:
    serials = serials or [unique_serial() for _ in range(count)]
    key_id, secret = factory_key(settings)
    path, body, headers = factory_client.factory_request(
        key_id, secret, [{"serial_number": s, "model": "test-sensor"} for s in serials]
    )
    response = await client.post(path, data=body, headers=headers)
    answer = await response.json()
    assert response.status in (200, 201), answer
    return [
        ProvisionedDevice(
            d["device_id"],
            d["serial_number"],
            d["claim_code"],
            signing.decode_device_key(d["device_key"]),
        )
        for d in answer["devices"]
    ]


async def device_call(
    client: TestClient,
    device: ProvisionedDevice,
    path: str,  # type: ignore[type-arg]
) -> Any:
    path, body, headers = factory_client.device_request(device.device_id, device.device_key, path)
    return await client.post(path, data=body, headers=headers)


async def claim(
    client: TestClient,
    owner: RegisteredUser,
    device: ProvisionedDevice,  # type: ignore[type-arg]
) -> Any:
    return await client.post(
        "/api/v1/devices/claim",
        json={"serial_number": device.serial_number, "claim_code": device.claim_code},
        headers=owner.headers,
    )


async def claimed_device(
    client: TestClient,
    settings: Settings,
    owner: RegisteredUser,  # type: ignore[type-arg]
) -> DeviceCredentials:
    (device,) = await provision(client, settings)
    return await claim_with_secret(client, owner, device)


async def claim_with_secret(
    client: TestClient,  # type: ignore[type-arg]
    owner: RegisteredUser,
    device: ProvisionedDevice,
) -> DeviceCredentials:
    """`owner` claims an already provisioned `device`, which then fetches its secret."""
    response = await claim(client, owner, device)
    assert response.status == 200, await response.text()
    secret_response = await device_call(client, device, "/api/v1/devices/secret")
    answer = await secret_response.json()
    assert secret_response.status == 200, answer
    return DeviceCredentials(
        device_id=device.device_id,
        tenant_id=answer["tenant_id"],
        serial_number=device.serial_number,
        secret=answer["secret"],
        device_key=device.device_key,
        telemetry_topic=answer["mqtt"]["telemetry_topic"],
        status_topic=answer["mqtt"]["status_topic"],
    )


async def set_grace_end(owner_conn: Any, device_id: str, seconds_from_now: float) -> None:
    """Move the end of a rotation's grace period (negative: it is over already)."""
    await owner_conn.execute(
        "UPDATE devices SET previous_valid_until = now() + make_interval(secs => $2) "
        "WHERE device_id = $1",
        device_id,
        seconds_from_now,
    )
