"""`iotcore simulate` end to end on a single node: API, embedded broker, ingest, storage."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from iotcore.app import create_app
from iotcore.broker.server import start_broker
from iotcore.ingest.consumer import IngestRole
from iotcore.platform.context import Platform
from iotcore.telemetry.service import TELEMETRY_INGEST_KEY
from iotcore.telemetry.simulate import run_simulation
from tests.conftest import free_port, make_settings


async def test_simulated_devices_publish_through_the_embedded_broker(
    database: str, owner_conn: Any
) -> None:
    port = free_port()
    settings = make_settings(
        database,
        broker_port=port,
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        mqtt_shared_subscription=False,
        mqtt_protocol_v5=False,
        ingest_client_id="sim-test-ingest",
    )
    platform = Platform.from_settings(settings)
    await platform.start()
    client = TestClient(TestServer(create_app(settings, platform)))
    await client.start_server()
    broker = await start_broker(platform)
    assert client.app is not None
    ingest = IngestRole(platform, client.app[TELEMETRY_INGEST_KEY])
    await ingest.start()
    try:
        before = await owner_conn.fetchval("SELECT count(*) FROM telemetry")
        args = argparse.Namespace(
            api=str(client.make_url("/")).rstrip("/"),
            broker=None,
            devices=3,
            rate=5.0,
            duration=1.0,
            email=None,
            password=None,
        )
        await run_simulation(settings, args)
        await asyncio.sleep(1)
        stored = await owner_conn.fetchval("SELECT count(*) FROM telemetry") - before
        devices = await owner_conn.fetchval(
            "SELECT count(*) FROM devices WHERE model = 'simulator' AND status = 'active'"
        )
    finally:
        await ingest.stop()
        await broker.stop()
        await client.close()
        await platform.close()
    assert devices == 3
    assert stored >= 3 * 3 * 3, "3 devices x 3 metrics x at least 3 messages"
