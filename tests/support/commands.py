"""Commands through the public API, and a device that answers them over real MQTT."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiomqtt
import orjson
from aiohttp.test_utils import TestClient

from tests.support.devices import DeviceCredentials
from tests.support.users import RegisteredUser

Client = TestClient  # type: ignore[type-arg]


def commands_path(device_id: str) -> str:
    return f"/api/v1/devices/{device_id}/commands"


async def send_command(
    client: Client, user: RegisteredUser, device_id: str, name: str, **body: Any
) -> dict[str, Any]:
    response = await client.post(
        commands_path(device_id), json={"name": name, **body}, headers=user.headers
    )
    answer = await response.json()
    assert response.status == 202, answer
    return dict(answer)


async def get_command(
    client: Client, user: RegisteredUser, device_id: str, command_id: str
) -> dict[str, Any]:
    response = await client.get(f"{commands_path(device_id)}/{command_id}", headers=user.headers)
    answer = await response.json()
    assert response.status == 200, answer
    return dict(answer)


async def wait_status(
    client: Client,
    user: RegisteredUser,
    device_id: str,
    command_id: str,
    status: str,
    timeout: float = 10,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        command = await get_command(client, user, device_id, command_id)
        if command["status"] == status or time.monotonic() > deadline:
            assert command["status"] == status, command
            return command
        await asyncio.sleep(0.05)


def device_client(
    host: str, port: int, device: DeviceCredentials, **options: Any
) -> aiomqtt.Client:
    return aiomqtt.Client(
        host,
        port,
        username=device.device_id,
        password=device.secret,
        identifier=device.device_id,
        **options,
    )


def commands_filter(device: DeviceCredentials) -> str:
    return device.telemetry_topic.replace("/telemetry", "/commands/#")


def reply_topic(device: DeviceCredentials, command_id: str) -> str:
    return device.telemetry_topic.replace("/telemetry", f"/replies/{command_id}")


async def next_command(mqtt: aiomqtt.Client, timeout: float = 10) -> tuple[str, dict[str, Any]]:
    async def first() -> aiomqtt.Message:
        async for message in mqtt.messages:
            return message
        raise AssertionError("no message")

    message = await asyncio.wait_for(first(), timeout)
    assert isinstance(message.payload, bytes)
    return str(message.topic), orjson.loads(message.payload)


async def rejects(owner_conn: Any, device_id: str) -> list[str]:
    """The reasons of the device's recorded rejects (replies included), oldest first."""
    rows = await owner_conn.fetch(
        "SELECT reason FROM ingest_rejects WHERE device_id = $1 ORDER BY reject_id", device_id
    )
    return [r["reason"] for r in rows]


async def expire_now(owner_conn: Any, command_id: str) -> None:
    """The command's time runs out (as the owner: the API cannot backdate)."""
    await owner_conn.execute(
        "UPDATE commands SET created_at = now() - interval '1 minute',"
        " sent_at = CASE WHEN sent_at IS NULL THEN NULL ELSE now() - interval '1 minute' END,"
        " expires_at = now() - interval '1 second' WHERE command_id = $1",
        command_id,
    )
