"""`iotcore simulate` end to end on a single node: API, embedded broker (which writes telemetry
itself), storage."""

from __future__ import annotations

import argparse
from typing import Any

from iotcore.tools.simulate import run_simulation
from tests.conftest import free_port, make_settings
from tests.support.broker import single_node


async def test_simulated_devices_publish_through_the_embedded_broker(
    database: str, owner_conn: Any
) -> None:
    settings = make_settings(database, broker_port=free_port())
    async with single_node(settings) as node:
        before = await owner_conn.fetchval("SELECT count(*) FROM telemetry")
        args = argparse.Namespace(
            api=node.api,
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
    assert devices == 3
    assert stored >= 3 * 3 * 3, "3 devices x 3 metrics x at least 3 messages"
