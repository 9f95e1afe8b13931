"""The live stream: a point published over MQTT reaches SSE within a second, reconnecting
with Last-Event-ID resumes without gaps, tickets work once, other tenants never appear."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiomqtt
import orjson
import pytest
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.mqtt.consumer import IngestRole
from iotcore.platform.context import Platform
from iotcore.telemetry.read.stream import _events
from tests.support.broker import ingest_consumer
from tests.support.devices import claimed_device
from tests.support.telemetry import post_telemetry
from tests.support.users import register

Client = TestClient  # type: ignore[type-arg]


@pytest.fixture(scope="module")
async def consumer(client: Client, platform: Platform) -> AsyncIterator[IngestRole]:
    async with ingest_consumer(client, platform) as role:
        yield role


async def read_events(
    response: aiohttp.ClientResponse, count: int, timeout: float
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}

    async def collect() -> None:
        nonlocal current
        async for raw_line in response.content:
            line = raw_line.decode().rstrip("\n")
            if not line:
                if "data" in current:
                    events.append(current)
                    if len(events) >= count:
                        return
                current = {}
            elif line.startswith("id: "):
                current["id"] = line[4:]
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = orjson.loads(line[6:])

    await asyncio.wait_for(collect(), timeout)
    return events


async def open_stream(
    client: Client, headers: dict[str, str], **params: Any
) -> aiohttp.ClientResponse:
    response = await client.get("/api/v1/telemetry/stream", params=params, headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    await asyncio.sleep(0.2)  # the server is now blocked reading the stream
    return response


async def test_mqtt_point_reaches_sse_within_a_second(
    client: Client, settings: Settings, consumer: IngestRole
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    response = await open_stream(client, owner.headers, device_id=device.device_id)
    started = time.monotonic()
    host, port = settings.mqtt_url.removeprefix("mqtt://").split(":")
    async with aiomqtt.Client(host, int(port), identifier="sse-pub") as pub:
        await pub.publish(device.telemetry_topic, b'{"metrics": {"t": 21.5}}', qos=1)
    (event,) = await read_events(response, 1, 5)
    elapsed = time.monotonic() - started
    response.close()
    assert event["event"] == "telemetry"
    assert event["data"]["device_id"] == device.device_id
    assert event["data"]["metrics"] == {"t": 21.5}
    assert elapsed < 1.0, f"took {elapsed:.3f}s"


async def test_reconnect_with_last_event_id_resumes_without_gaps(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    response = await open_stream(client, owner.headers)
    base = int(time.time() * 1000) - 10_000
    for i in range(3):
        await post_telemetry(client, device, {"ts": base + i, "metrics": {"n": i}})
    first = await read_events(response, 3, 5)
    response.close()
    last_id = first[1]["id"]  # pretend we lost the connection after the second event
    for i in range(3, 5):
        await post_telemetry(client, device, {"ts": base + i, "metrics": {"n": i}})
    resumed = await client.get(
        "/api/v1/telemetry/stream", headers={**owner.headers, "Last-Event-ID": last_id}
    )
    rest = await read_events(resumed, 3, 5)
    resumed.close()
    assert [e["data"]["metrics"]["n"] for e in rest] == [2, 3, 4]


async def test_ticket_is_single_use_and_stream_never_carries_other_tenants(
    client: Client, settings: Settings
) -> None:
    alice, bob = await register(client), await register(client)
    alice_device = await claimed_device(client, settings, alice)
    bob_device = await claimed_device(client, settings, bob)
    ticket = (
        await (await client.post("/api/v1/telemetry/stream/ticket", headers=alice.headers)).json()
    )["ticket"]
    response = await open_stream(client, {}, ticket=ticket)
    await post_telemetry(client, bob_device, {"metrics": {"secret": 1}})
    await post_telemetry(client, alice_device, {"metrics": {"mine": 1}})
    events = await read_events(response, 1, 5)
    response.close()
    assert [e["data"]["device_id"] for e in events] == [alice_device.device_id]
    reused = await client.get("/api/v1/telemetry/stream", params={"ticket": ticket})
    assert reused.status == 401
    foreign = await client.get(
        "/api/v1/telemetry/stream",
        params={"device_id": bob_device.device_id},
        headers=alice.headers,
    )
    assert foreign.status == 404
    assert (await client.get("/api/v1/telemetry/stream")).status == 401


def test_an_entry_of_many_points_carries_its_id_on_its_last_event_only() -> None:
    """A client cut off inside an entry resumes from the entry before and gets it whole."""
    points = [
        {"device_id": device, "ts": 1_700_000_000_000 + i, "metrics": {"t": i}}
        for i, device in enumerate(["d1", "d2", "d1", "d2"])
    ]
    chunk = _events(b"5-0", {b"b": orjson.dumps(points)}, {"d1"})
    events = chunk.decode().strip().split("\n\n")
    assert len(events) == 2  # d2 filtered out
    assert not events[0].startswith("id:")
    assert events[1].startswith("id: 5-0\n")
    assert [orjson.loads(e.split("data: ")[1])["metrics"]["t"] for e in events] == [0, 2]
    assert _events(b"6-0", {b"b": orjson.dumps(points)}, {"d3"}) == b""
