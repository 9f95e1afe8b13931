"""`iotcore simulate` end to end on a single node: API, embedded broker (which writes telemetry
itself), storage."""

from __future__ import annotations

import argparse
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from iotcore.app import create_app
from iotcore.mqtt.broker.server import start_broker
from iotcore.platform.context import Platform
from iotcore.telemetry.ingest.service import TELEMETRY_INGEST_KEY
from iotcore.tools.simulate import run_simulation
from tests.conftest import free_port, make_settings


async def test_simulated_devices_publish_through_the_embedded_broker(
    database: str, owner_conn: Any
) -> None:
    port = free_port()
    settings = make_settings(database, broker_port=port)
    platform = Platform.from_settings(settings)
    await platform.start()
    client = TestClient(TestServer(create_app(settings, platform)))
    await client.start_server()
    assert client.app is not None
    ingest = client.app[TELEMETRY_INGEST_KEY]
    broker = await start_broker(platform, ingest.registry, ingest)
    try:
        before = await owner_conn.fetchval("SELECT count(*) FROM telemetry")
        args = argparse.Namespace(
            api=str(client.make_url("/")).rstrip("/"),
            broker=None,
            devices=3,
            rate=5.0,
            duration=3.0,  # each publish waits for its commit: room for 3 on a busy machine
            email=None,
            password=None,
        )
        await run_simulation(settings, args)
        # Every PUBACK came after its commit: nothing left to wait for.
        stored = await owner_conn.fetchval("SELECT count(*) FROM telemetry") - before
        devices = await owner_conn.fetchval(
            "SELECT count(*) FROM devices WHERE model = 'simulator' AND status = 'active'"
        )
    finally:
        await broker.stop()
        await client.close()
        await platform.close()
    assert devices == 3
    assert stored >= 3 * 3 * 3, "3 devices x 3 metrics x at least 3 messages"
