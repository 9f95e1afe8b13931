"""Consumers killed with SIGKILL mid-stream, in a module of its own: no in-process consumer
of another test shares the broker's stream while they run, and each test proves it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from iotcore.config import Settings
from tests.conftest import read_log, start_iotcore
from tests.support.ingest import (
    Client,
    consumer_settings,
    count_rows,
    new_device,
    publish,
    readings,
    wait_ready,
    wait_rows,
)


async def settled_count(owner_conn: Any, device_id: str) -> int:
    """The row count once it stops moving (a COMMIT sent before a kill may still land)."""
    last = await count_rows(owner_conn, device_id)
    while True:
        await asyncio.sleep(0.5)
        now = await count_rows(owner_conn, device_id)
        if now == last:
            return now
        last = now


class Killer:
    """Kills a process from the publisher's progress callback once `after` messages are
    acknowledged by the broker and the consumer has stored something: mid-stream."""

    def __init__(self, owner_conn: Any, device_id: str, after: int) -> None:
        self.owner_conn, self.device_id, self.after = owner_conn, device_id, after
        self.process: subprocess.Popen[bytes] | None = None
        self.killed = asyncio.Event()
        self._checking = False

    async def on_progress(self, index: int) -> None:
        if self.killed.is_set() or self._checking or index < self.after or index % 100:
            return
        self._checking = True
        try:
            if await count_rows(self.owner_conn, self.device_id) > 0 and not self.killed.is_set():
                assert self.process is not None
                os.kill(self.process.pid, signal.SIGKILL)
                self.killed.set()
        finally:
            self._checking = False


@pytest.mark.slow
async def test_kill_9_mid_stream_loses_nothing_and_stores_once(
    client: Client, settings: Settings, owner_conn: Any
) -> None:
    device = await new_device(client, settings)
    # A session of its own on a non-shared subscription: the only consumer of this stream.
    ingest = consumer_settings(settings, mqtt_shared_subscription=False)
    consumer = start_iotcore(ingest, "ingest")
    killer = Killer(owner_conn, device.device_id, after=6000)
    killer.process = consumer
    try:
        await wait_ready(ingest.metrics_port)
        total = 20_000
        publishing = asyncio.create_task(
            publish(
                settings,
                device.telemetry_topic,
                readings(total, int(time.time() * 1000) - 3_600_000),
                on_progress=killer.on_progress,
            )
        )
        await asyncio.wait_for(killer.killed.wait(), 120)
        consumer.wait(5)
        stored_at_kill = await settled_count(owner_conn, device.device_id)
        # Mid-stream: some stored, not all.
        assert 0 < stored_at_kill < 2 * total, stored_at_kill
        await publishing
        # Nothing else consumes this stream: with ours dead, nothing more is stored.
        assert await settled_count(owner_conn, device.device_id) == stored_at_kill
        consumer = start_iotcore(ingest, "ingest")
        stored = await wait_rows(owner_conn, device.device_id, 2 * total, 120)
        assert stored == 2 * total, read_log(consumer)
        distinct = await owner_conn.fetchval(
            "SELECT count(DISTINCT (metric, ts)) FROM telemetry WHERE device_id = $1",
            device.device_id,
        )
        assert distinct == 2 * total
        print(f"kill -9: {stored_at_kill} of {2 * total} rows stored at the kill")
    finally:
        consumer.kill()
        consumer.wait(5)


@pytest.mark.slow
async def test_two_consumers_in_a_share_group_one_killed_mid_stream_store_everything_once(
    client: Client, settings: Settings, owner_conn: Any
) -> None:
    device = await new_device(client, settings)
    group = f"g{time.time_ns()}"
    first = consumer_settings(settings, mqtt_share_group=group)
    second = consumer_settings(settings, mqtt_share_group=group)
    consumers = [start_iotcore(first, "ingest"), start_iotcore(second, "ingest")]
    killer = Killer(owner_conn, device.device_id, after=3000)
    killer.process = consumers[0]
    try:
        await wait_ready(first.metrics_port)
        await wait_ready(second.metrics_port)
        total = 10_000
        publishing = asyncio.create_task(
            publish(
                settings,
                device.telemetry_topic,
                readings(total, int(time.time() * 1000) - 10_800_000),
                on_progress=killer.on_progress,
            )
        )
        await asyncio.wait_for(killer.killed.wait(), 120)
        consumers[0].wait(5)
        stored_at_kill = await count_rows(owner_conn, device.device_id)
        assert 0 < stored_at_kill < 2 * total, stored_at_kill
        await publishing
        # The survivor keeps consuming its share while the other is dead.
        after = await settled_count(owner_conn, device.device_id)
        assert after > stored_at_kill, (stored_at_kill, after)
        # The killed one comes back to its persistent session: what it held unacked.
        consumers[0] = start_iotcore(first, "ingest")
        stored = await wait_rows(owner_conn, device.device_id, 2 * total, 120)
        assert stored == 2 * total, read_log(consumers[0]) + read_log(consumers[1])
        distinct = await owner_conn.fetchval(
            "SELECT count(DISTINCT (metric, ts)) FROM telemetry WHERE device_id = $1",
            device.device_id,
        )
        assert distinct == 2 * total
        print(f"shared group: {stored_at_kill} at the kill, {after} before the restart")
    finally:
        for consumer in consumers:
            consumer.kill()
            consumer.wait(5)
