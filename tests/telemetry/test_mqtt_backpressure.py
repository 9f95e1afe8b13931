"""Backpressure in the MQTT consumer, in a module of its own: no other consumer may share
the broker while the writer is held back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from iotcore.config import Settings
from iotcore.mqtt.consumer import IngestRole
from iotcore.platform.context import Platform
from tests.support.ingest import (
    Client,
    consumer_settings,
    count_rows,
    new_device,
    publish,
    readings,
    wait_rows,
)


async def test_the_consumer_stops_reading_when_its_inbox_is_full_and_resumes_without_loss(
    client: Client, settings: Settings, owner_conn: Any
) -> None:
    """MQTT 3.1.1 has no Receive Maximum: the consumer bounds what it holds by itself."""
    device = await new_device(client, settings)
    # A share group of its own: its persistent session outlives the test and must not take
    # a share of other modules' messages.
    small = consumer_settings(
        settings,
        ingest_receive_maximum=50,
        # Room for one hand-off of 50 messages (100 rows) and a half: the second must wait
        # for the first to be written, with some room left (a spin once hid there).
        writer_queue_rows=150,
        writer_batch_rows=150,
        mqtt_share_group=f"backpressure-{time.time_ns()}",
    )
    platform = Platform.from_settings(small)
    await platform.start()
    role = IngestRole(platform)
    await role.ingest.registry.start()
    await role.consumer.start()  # the writer is not started: nothing is committed or acked
    try:
        deadline = time.monotonic() + 10
        while not role.consumer.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        payloads = readings(2000, int(time.time() * 1000) - 60_000)
        await publish(small, device.telemetry_topic, payloads)
        await asyncio.sleep(1.5)
        held = len(role.consumer.inbox.messages)
        assert 0 < held <= 51  # full (one packet of slack), not the 2,000 offered
        assert await count_rows(owner_conn, device.device_id) == 0

        await role.ingest.writer.start()
        assert await wait_rows(owner_conn, device.device_id, 4000, 30) == 4000
    finally:
        await role.consumer.stop()
        await role.ingest.writer.stop()
        await role.ingest.registry.close()
        await platform.close()
