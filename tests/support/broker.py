"""The embedded broker in the test's process, with its own registry and writer, as
`iotcore broker` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from iotcore.devices.registry import DeviceRegistry
from iotcore.mqtt.broker.server import EmbeddedBroker, start_broker
from iotcore.platform.context import Platform
from iotcore.telemetry.ingest.service import TelemetryIngest
from iotcore.telemetry.ingest.writer import TelemetryWriter


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
