"""Fair share of the write path: a tenant flooding the webhook and MQTT gets 503s for itself,
and another tenant's posts still go through (real Postgres, Redis, Mosquitto)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.mqtt.consumer import IngestRole
from iotcore.platform.context import Platform
from iotcore.telemetry.ingest.service import TELEMETRY_INGEST_KEY
from tests.conftest import make_settings
from tests.support.devices import claimed_device
from tests.support.ingest import count_rows, publish, readings
from tests.support.telemetry import post_telemetry
from tests.support.users import register

Client = TestClient  # type: ignore[type-arg]
QUIET_POSTS = 200


@pytest.fixture(scope="module")
def settings(database: str, mqtt_broker: str) -> Settings:
    """A small write queue, so that one tenant can fill it; rate limits out of the way, so
    that the queue's share is what is tested (rate limits per reading have their own tests)."""
    return make_settings(
        database,
        mqtt_url=mqtt_broker,
        mqtt_shared_subscription=False,
        ingest_client_id=f"fair-{uuid.uuid4().hex[:8]}",
        writer_queue_rows=3000,
        writer_tenant_queue_rows=1000,
        writer_batch_rows=1000,
        writer_batch_age_ms=20,
        rate_limit_device_per_s=1e9,
        rate_limit_device_burst=1e9,
        rate_limit_tenant_per_s=1e9,
        rate_limit_tenant_burst=1e9,
    )


async def test_a_noisy_tenant_cannot_make_another_tenants_readings_fail(
    client: Client, settings: Settings, platform: Platform, owner_conn: Any
) -> None:
    noisy_owner, quiet_owner = await register(client), await register(client)
    noisy = [await claimed_device(client, settings, noisy_owner) for _ in range(4)]
    quiet = [await claimed_device(client, settings, quiet_owner) for _ in range(4)]
    # The MQTT consumer shares the webhook's writer, as in `iotcore run`.
    role = IngestRole(platform, client.server.app[TELEMETRY_INGEST_KEY])
    await role.start()
    stop = asyncio.Event()
    noisy_statuses: Counter[int] = Counter()
    base = int(time.time() * 1000) - 3_600_000

    async def http_flood(worker: int) -> None:
        device, n = noisy[worker % len(noisy)], 0
        while not stop.is_set():
            start = base - worker * 10_000_000 - n * 100
            body = {
                "points": [
                    {"ts": start + i, "metrics": {f"m{j}": j for j in range(5)}} for i in range(100)
                ]
            }
            noisy_statuses[(await post_telemetry(client, device, body)).status] += 1
            n += 1

    async def mqtt_flood() -> None:
        await asyncio.gather(
            *(
                publish(settings, d.telemetry_topic, readings(2000, base - 500_000_000))
                for d in noisy
            )
        )

    flood = [asyncio.create_task(http_flood(w)) for w in range(16)]
    flood.append(asyncio.create_task(mqtt_flood()))
    quiet_statuses: Counter[int] = Counter()
    try:
        # The flood is on: the noisy tenant is already turned away for being over its share.
        deadline = time.monotonic() + 60
        while noisy_statuses[503] < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert noisy_statuses[503] >= 5, noisy_statuses

        async def quiet_posts(worker: int) -> None:
            device = quiet[worker]
            for n in range(QUIET_POSTS // len(quiet)):
                body = {"ts": base + n, "metrics": {"t": n}}
                quiet_statuses[(await post_telemetry(client, device, body)).status] += 1

        await asyncio.gather(*(quiet_posts(w) for w in range(len(quiet))))
    finally:
        stop.set()
        for task in flood:
            task.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
        await role.stop()
    accepted = quiet_statuses[202]
    assert accepted >= 0.99 * QUIET_POSTS, (quiet_statuses, noisy_statuses)
    stored = sum([await count_rows(owner_conn, d.device_id) for d in quiet])
    assert stored == accepted
    print(f"quiet: {dict(quiet_statuses)}; noisy http: {dict(noisy_statuses)}")
