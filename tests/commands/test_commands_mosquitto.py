"""Commands through an external broker (Mosquitto: no hooks, no ACL), delivered and answered
through the ingest consumer: a command to an offline device reaches it when it connects (its
persistent session, or its status message: presence announces the connect on Postgres) and
completes on its reply; an expired one is never sent; a reply on another device's topic is
refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import orjson
import pytest

from iotcore.config import Settings
from iotcore.mqtt.consumer import IngestRole
from iotcore.platform.context import Platform
from tests.support.broker import ingest_consumer
from tests.support.commands import (
    Client,
    commands_filter,
    device_client,
    expire_now,
    get_command,
    next_command,
    rejects,
    reply_topic,
    send_command,
    wait_status,
)
from tests.support.devices import DeviceCredentials, claimed_device
from tests.support.ingest import broker_address
from tests.support.users import register


@pytest.fixture(scope="module")
async def consumer(client: Client, platform: Platform) -> AsyncIterator[IngestRole]:
    async with ingest_consumer(client, platform) as role:
        await asyncio.wait_for(role.consumer.commands.listener.listening.wait(), 10)
        await asyncio.wait_for(role.status.subscribed.wait(), 10)
        yield role


async def come_online(mqtt: aiomqtt.Client, device: DeviceCredentials) -> None:
    """What a device does once connected on a broker without hooks: its retained status
    (presence reads it and announces the connect on Postgres, which delivery listens to)."""
    await mqtt.publish(device.status_topic, b'{"online": true}', qos=1, retain=True)


async def test_offline_device_gets_command_when_it_connects_and_completes(
    client: Client, settings: Settings, consumer: IngestRole, owner_conn: Any
) -> None:
    host, port = broker_address(settings)
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    accepted = await send_command(client, owner, device.device_id, "reboot", params={"in": 1})
    command_id = accepted["command_id"]
    # Handed to the broker while nobody subscribed: Mosquitto drops it.
    await wait_status(client, owner, device.device_id, command_id, "sent")
    async with device_client(host, port, device) as mqtt:
        await mqtt.subscribe(commands_filter(device), qos=1)
        # Sent longer ago than the resend interval (RESEND_AFTER_S) by now.
        await owner_conn.execute(
            "UPDATE commands SET sent_at = now() - interval '1 minute' WHERE command_id = $1",
            command_id,
        )
        await come_online(mqtt, device)
        topic, payload = await next_command(mqtt)
        assert topic.endswith("/commands/reboot")
        assert payload["command_id"] == command_id and payload["params"] == {"in": 1}
        await mqtt.publish(
            reply_topic(device, command_id), orjson.dumps({"ok": True, "result": {"up": 1}}), qos=1
        )
        done = await wait_status(client, owner, device.device_id, command_id, "succeeded")
    assert done["result"] == {"up": 1}
    assert await rejects(owner_conn, device.device_id) == []


async def test_persistent_session_gets_command_queued_while_offline(
    client: Client, settings: Settings, consumer: IngestRole
) -> None:
    host, port = broker_address(settings)
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    async with device_client(host, port, device, clean_session=False) as mqtt:
        await mqtt.subscribe(commands_filter(device), qos=1)
    accepted = await send_command(client, owner, device.device_id, "calibrate")
    await wait_status(client, owner, device.device_id, accepted["command_id"], "sent")
    async with device_client(host, port, device, clean_session=False) as mqtt:
        _, payload = await next_command(mqtt)
        assert payload["command_id"] == accepted["command_id"]
        await mqtt.publish(reply_topic(device, accepted["command_id"]), b'{"ok": false}', qos=1)
        await wait_status(client, owner, device.device_id, accepted["command_id"], "failed")


async def test_expired_command_is_never_sent(
    client: Client, settings: Settings, consumer: IngestRole, owner_conn: Any
) -> None:
    host, port = broker_address(settings)
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    accepted = await send_command(client, owner, device.device_id, "late", ttl_s=10)
    await wait_status(client, owner, device.device_id, accepted["command_id"], "sent")
    await expire_now(owner_conn, accepted["command_id"])
    async with device_client(host, port, device) as mqtt:
        await mqtt.subscribe(commands_filter(device), qos=1)
        await come_online(mqtt, device)
        with pytest.raises(TimeoutError):
            await next_command(mqtt, timeout=2)
        await mqtt.publish(reply_topic(device, accepted["command_id"]), b'{"ok": true}', qos=1)
        await wait_status(client, owner, device.device_id, accepted["command_id"], "expired")
    assert await rejects(owner_conn, device.device_id) == ["reply_expired"]


async def test_reply_on_another_devices_topic_is_refused(
    client: Client, settings: Settings, consumer: IngestRole, owner_conn: Any
) -> None:
    """Mosquitto has no ACL: anyone may publish on any topic. The handler still completes a
    command only from its own device's reply topic."""
    host, port = broker_address(settings)
    owner = await register(client)
    victim = await claimed_device(client, settings, owner)
    intruder = await claimed_device(client, settings, owner)
    accepted = await send_command(client, owner, victim.device_id, "unlock")
    async with device_client(host, port, intruder) as mqtt:
        await mqtt.publish(reply_topic(intruder, accepted["command_id"]), b'{"ok": true}', qos=1)
    deadline = time.monotonic() + 10
    while not await rejects(owner_conn, intruder.device_id) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await rejects(owner_conn, intruder.device_id) == ["reply_wrong_device"]
    command = await get_command(client, owner, victim.device_id, accepted["command_id"])
    assert command["status"] in ("pending", "sent")
