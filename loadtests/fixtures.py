"""Benchmark set-up through the public API: a tenant, and claimed devices with secrets."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import aiohttp

from iotcore.devices import signing
from iotcore.tools import factory_client

DEV_FACTORY_KEY = ("mk1", "dev-only-manufacturing-key-change-me-012345")


@dataclass
class BenchDevice:
    device_id: str
    secret: str
    topic: str


async def tenant(session: aiohttp.ClientSession, base: str) -> dict[str, str]:
    body = {
        "email": f"bench-{uuid.uuid4().hex[:10]}@example.com",
        "password": "benchmark-password-" + uuid.uuid4().hex[:6],
        "tenant_name": "Bench",
    }
    async with session.post(base + "/api/v1/auth/register", json=body) as response:
        answer = await response.json()
        assert response.status == 201, answer
    return {"Authorization": "Bearer " + answer["access_token"]}


async def claimed_devices(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], count: int
) -> list[BenchDevice]:
    key_id, secret = DEV_FACTORY_KEY
    provisioned = []
    for start in range(0, count, 1000):
        serials = [f"BENCH-{uuid.uuid4().hex[:12]}" for _ in range(min(1000, count - start))]
        path, body, signed = factory_client.factory_request(
            key_id, secret, [{"serial_number": s, "model": "bench"} for s in serials]
        )
        async with session.post(base + path, data=body, headers=signed) as response:
            provisioned.extend((await response.json())["devices"])
    limiter = asyncio.Semaphore(32)

    async def claim(device: dict[str, str]) -> BenchDevice:
        async with limiter:
            body = {"serial_number": device["serial_number"], "claim_code": device["claim_code"]}
            async with session.post(
                base + "/api/v1/devices/claim", json=body, headers=headers
            ) as response:
                assert response.status == 200, await response.text()
            path, raw, signed = factory_client.device_request(
                device["device_id"],
                signing.decode_device_key(device["device_key"]),
                "/api/v1/devices/secret",
            )
            async with session.post(base + path, data=raw, headers=signed) as response:
                answer = await response.json()
        return BenchDevice(device["device_id"], answer["secret"], answer["mqtt"]["telemetry_topic"])

    return list(await asyncio.gather(*(claim(d) for d in provisioned)))
