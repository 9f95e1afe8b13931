"""MQTT ingestion helpers: publishing, polling the stored rows, running a consumer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import orjson
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.mqtt.consumer import IngestRole
from tests.conftest import free_port
from tests.support.devices import DeviceCredentials, claimed_device
from tests.support.users import register

Client = TestClient  # type: ignore[type-arg]


def broker_address(settings: Settings) -> tuple[str, int]:
    url = urlsplit(settings.mqtt_url)
    return url.hostname or "127.0.0.1", url.port or 1883


async def publish(
    settings: Settings,
    topic: str,
    payloads: list[bytes],
    in_flight: int = 500,
    on_progress: Any = None,
) -> None:
    """QoS 1 publishes with a bounded number in flight (paho stalls past 65,535)."""
    host, port = broker_address(settings)
    limiter = asyncio.Semaphore(in_flight)
    async with aiomqtt.Client(
        host,
        port,
        identifier=f"pub-{os.getpid()}-{time.time_ns()}",
        max_inflight_messages=in_flight,
        timeout=30,
    ) as client:

        async def one(index: int, payload: bytes) -> None:
            async with limiter:
                await client.publish(topic, payload, qos=1)
            if on_progress is not None:
                await on_progress(index)

        await asyncio.gather(*(one(i, p) for i, p in enumerate(payloads)))


def readings(count: int, start_ms: int) -> list[bytes]:
    return [orjson.dumps({"ts": start_ms + i, "metrics": {"a": i, "b": -i}}) for i in range(count)]


async def count_rows(owner_conn: Any, device_id: str) -> int:
    return int(
        await owner_conn.fetchval("SELECT count(*) FROM telemetry WHERE device_id = $1", device_id)
    )


async def wait_rows(owner_conn: Any, device_id: str, expected: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline:
        count = await count_rows(owner_conn, device_id)
        if count >= expected:
            await asyncio.sleep(0.5)  # anything more would be a duplicate: give it a moment
            return await count_rows(owner_conn, device_id)
        await asyncio.sleep(0.25)
    return count


async def wait_ready(port: int, timeout_s: float = 30) -> None:
    """Async: the test's own event loop may be serving a proxy the consumer depends on."""

    def probe() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health/ready", timeout=2):
            pass

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            await asyncio.to_thread(probe)
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise AssertionError("the consumer did not become ready")


def consumer_settings(settings: Settings, **overrides: Any) -> Settings:
    values = {
        "metrics_port": free_port(),
        "ingest_client_id": f"ingest-{time.time_ns()}",
        **overrides,
    }
    return settings.model_copy(update=values)


async def new_device(client: Client, settings: Settings) -> DeviceCredentials:
    return await claimed_device(client, settings, await register(client))


@contextlib.asynccontextmanager
async def running_consumer(role: IngestRole) -> AsyncIterator[IngestRole]:
    """An in-process consumer, started and (within 10 s) subscribed."""
    await role.start()
    try:
        deadline = time.monotonic() + 10
        while not role.consumer.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        yield role
    finally:
        await role.stop()
