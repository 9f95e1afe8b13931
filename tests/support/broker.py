"""The MQTT side in the test's process: the embedded broker with its own registry and writer,
as `iotcore broker` runs it; a single node (API and broker sharing the writer, as `iotcore
run`); the ingest consumer of the API's writer, as `iotcore ingest` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp.test_utils import TestClient, TestServer

from iotcore.app import create_app
from iotcore.config import Settings
from iotcore.devices.registry import DeviceRegistry
from iotcore.mqtt.broker.server import EmbeddedBroker, start_broker
from iotcore.mqtt.consumer import IngestRole
from iotcore.platform.context import Platform
from iotcore.telemetry.ingest.service import TELEMETRY_INGEST_KEY, TelemetryIngest
from iotcore.telemetry.ingest.writer import TelemetryWriter
from tests.support.ingest import running_consumer


@asynccontextmanager
async def embedded_broker(platform: Platform) -> AsyncIterator[EmbeddedBroker]:
    registry = DeviceRegistry(platform)
    writer = TelemetryWriter(platform)
    await registry.start()
    await writer.start()
    broker = await start_broker(platform, registry, TelemetryIngest(platform, registry, writer))
    try:
        yield broker
    finally:
        await broker.stop()
        await writer.stop()
        await registry.close()


@dataclass
class SingleNode:
    client: TestClient  # type: ignore[type-arg]
    platform: Platform
    broker: EmbeddedBroker

    @property
    def api(self) -> str:
        return str(self.client.make_url("/")).rstrip("/")


@asynccontextmanager
async def single_node(settings: Settings) -> AsyncIterator[SingleNode]:
    """The API and the embedded broker in this process, sharing one writer."""
    platform = Platform.from_settings(settings)
    await platform.start()
    client = TestClient(TestServer(create_app(settings, platform)))
    await client.start_server()
    assert client.app is not None
    ingest = client.app[TELEMETRY_INGEST_KEY]
    try:
        broker = await start_broker(platform, ingest.registry, ingest)
        try:
            yield SingleNode(client, platform, broker)
        finally:
            await broker.stop()
    finally:
        await client.close()
        await platform.close()


@asynccontextmanager
async def ingest_consumer(
    client: TestClient,  # type: ignore[type-arg]
    platform: Platform,
) -> AsyncIterator[IngestRole]:
    """The ingest consumer on the API's writer, once subscribed (within 10 s)."""
    assert client.app is not None
    async with running_consumer(IngestRole(platform, client.app[TELEMETRY_INGEST_KEY])) as role:
        yield role
