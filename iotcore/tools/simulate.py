"""`iotcore simulate`: provision, claim and connect N simulated devices through the public
API and an MQTT broker, each publishing telemetry at a given rate and answering commands. A
newcomer's way to see data flow; the benchmarks use the same public paths.

    iotcore simulate --api http://127.0.0.1:8080 --devices 10 --rate 1 --duration 60

Each device subscribes to its commands and answers every one on its reply topic: a command
named `fail` with `{"ok": false, "result": {"error": ...}}`, any other with `{"ok": true,
"result": {"echo": <the command's params>}}`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiomqtt
import orjson

from iotcore.config import Settings
from iotcore.devices import signing
from iotcore.platform.shutdown import stop_task
from iotcore.tools import factory_client


async def _json(response: aiohttp.ClientResponse, expected: tuple[int, ...]) -> Any:
    body = await response.json(content_type=None)
    if response.status not in expected:
        raise SystemExit(
            f"iotcore simulate: {response.method} {response.url.path} -> {response.status} {body}"
        )
    return body


async def setup_devices(
    settings: Settings, api: str, count: int, email: str | None = None, password: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    email = email or f"simulator-{uuid.uuid4().hex[:8]}@example.com"
    password = password or "simulator-" + uuid.uuid4().hex
    key_id = settings.manufacturing_signing_key_id
    key = settings.manufacturing_key_ring[key_id]
    async with aiohttp.ClientSession(api) as session:
        owner = await _json(
            await session.post(
                "/api/v1/auth/register",
                json={"email": email, "password": password, "tenant_name": "Simulator"},
            ),
            (201,),
        )
        headers = {"Authorization": f"Bearer {owner['access_token']}"}
        serials = [f"SIM-{uuid.uuid4().hex[:10].upper()}" for _ in range(count)]
        path, body, signed = factory_client.factory_request(
            key_id, key, [{"serial_number": s, "model": "simulator"} for s in serials]
        )
        made = await _json(await session.post(path, data=body, headers=signed), (200, 201))
        devices = []
        for device in made["devices"]:
            await _json(
                await session.post(
                    "/api/v1/devices/claim",
                    headers=headers,
                    json={
                        "serial_number": device["serial_number"],
                        "claim_code": device["claim_code"],
                        "name": device["serial_number"],
                    },
                ),
                (200,),
            )
            path, body, signed = factory_client.device_request(
                device["device_id"],
                signing.decode_device_key(device["device_key"]),
                "/api/v1/devices/secret",
            )
            devices.append(await _json(await session.post(path, data=body, headers=signed), (200,)))
    return email, devices


def command_reply(command: dict[str, Any]) -> dict[str, Any]:
    """A simulated device's answer to a command it received."""
    if command.get("name") == "fail":
        return {"ok": False, "result": {"error": "simulated failure"}}
    return {"ok": True, "result": {"echo": command.get("params", {})}}


async def answer_commands(client: aiomqtt.Client, device: dict[str, Any]) -> None:
    """Reply to every command the device receives (once per command id: a broker may
    deliver one twice)."""
    replies = device["mqtt"]["telemetry_topic"].removesuffix("/telemetry") + "/replies/"
    answered: set[str] = set()
    async for message in client.messages:
        try:
            command = orjson.loads(message.payload)
            command_id = str(command["command_id"])
        except (ValueError, KeyError, TypeError):
            continue
        if command_id in answered:
            continue
        answered.add(command_id)
        await client.publish(replies + command_id, orjson.dumps(command_reply(command)), qos=1)


async def run_device(broker: str, device: dict[str, Any], rate: float, until: float) -> int:
    url = urlsplit(broker)
    sent = 0
    phase = random.random() * math.tau
    async with aiomqtt.Client(
        url.hostname or "127.0.0.1",
        url.port or 1883,
        username=device["mqtt"]["username"],
        password=device["secret"],
        identifier=device["mqtt"]["client_id"],
    ) as client:
        await client.subscribe(device["mqtt"]["commands_topic"], qos=1)
        answering = asyncio.create_task(answer_commands(client, device))
        try:
            sent = await _publish_until(client, device, rate, until, phase)
        finally:
            await stop_task(answering)
    return sent


async def _publish_until(
    client: aiomqtt.Client, device: dict[str, Any], rate: float, until: float, phase: float
) -> int:
    sent = 0
    if rate > 0:
        while time.monotonic() < until:
            now = time.time()
            payload = {
                "ts": int(now * 1000),
                "metrics": {
                    "temperature": round(21 + 3 * math.sin(now / 60 + phase), 2),
                    "humidity": round(45 + 10 * math.cos(now / 90 + phase), 2),
                    "door_open": random.random() < 0.05,
                },
            }
            await client.publish(device["mqtt"]["telemetry_topic"], orjson.dumps(payload), qos=1)
            sent += 1
            await asyncio.sleep(1 / rate)
    else:
        await asyncio.sleep(max(0.0, until - time.monotonic()))  # commands only
    return sent


async def run_simulation(settings: Settings, args: argparse.Namespace) -> None:
    email, devices = await setup_devices(
        settings, args.api, args.devices, args.email, args.password
    )
    broker = args.broker or f"mqtt://{settings.broker_host}:{settings.broker_port}"
    print(
        f"simulating {len(devices)} devices of tenant user {email} on {broker} "
        f"at {args.rate}/s each for {args.duration}s",
        flush=True,
    )
    until = time.monotonic() + args.duration
    sent = await asyncio.gather(*(run_device(broker, d, args.rate, until) for d in devices))
    print(f"published {sum(sent)} messages", flush=True)


def add_parser(roles: Any) -> None:
    simulate = roles.add_parser("simulate", help="simulated devices publishing telemetry")
    simulate.add_argument("--api", default="http://127.0.0.1:8080")
    simulate.add_argument("--broker", default=None, help="mqtt://host:port (default: embedded)")
    simulate.add_argument("--devices", type=int, default=10)
    simulate.add_argument("--rate", type=float, default=1.0, help="messages per second per device")
    simulate.add_argument("--duration", type=float, default=60)
    simulate.add_argument("--email", default=None, help="log-in of the tenant it creates")
    simulate.add_argument("--password", default=None, help="its password (10+ characters)")
