"""Real MQTT connections to the embedded broker, the EMQX hook contract, and rotation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import aiomqtt
import pytest
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.devices.routes import DEVICE_REGISTRY_KEY
from iotcore.mqtt.broker.server import EmbeddedBroker
from iotcore.platform.context import Platform
from tests.conftest import REPO_ROOT
from tests.support.broker import embedded_broker
from tests.support.devices import (
    DeviceCredentials,
    ProvisionedDevice,
    claimed_device,
    device_call,
    set_grace_end,
)
from tests.support.telemetry import stored_rows
from tests.support.users import register

Client = TestClient  # type: ignore[type-arg]


@pytest.fixture(scope="module")
async def broker(platform: Platform) -> AsyncIterator[EmbeddedBroker]:
    async with embedded_broker(platform) as embedded:
        yield embedded


def mqtt(settings: Settings, username: str, password: str, client_id: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        settings.broker_host,
        settings.broker_port,
        username=username,
        password=password,
        identifier=client_id,
        timeout=5,
    )


async def connects(settings: Settings, username: str, password: str, client_id: str) -> bool:
    try:
        async with mqtt(settings, username, password, client_id):
            return True
    except aiomqtt.MqttError:
        return False


async def test_device_connects_and_its_telemetry_is_stored(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    async with mqtt(settings, creds.device_id, creds.secret, creds.device_id) as device:
        await device.publish(creds.telemetry_topic, b'{"metrics": {"t": 1}}', qos=1)
        # The PUBACK came after the commit: the row is there already, no polling.
        rows = await stored_rows(owner_conn, creds.device_id)
    assert [(metric, value) for metric, _, value in rows] == [("t", 1.0)]


async def test_wrong_secret_or_client_id_is_refused(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    assert not await connects(settings, creds.device_id, "wrong-secret", creds.device_id)
    assert not await connects(settings, creds.device_id, creds.secret, "another-client-id")
    assert await connects(settings, creds.device_id, creds.secret, creds.device_id)


async def test_device_cannot_subscribe_to_telemetry(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    async with mqtt(settings, creds.device_id, creds.secret, creds.device_id) as device:
        result = await device.subscribe("tenants/+/devices/+/telemetry", qos=1)
        assert result[0] == 128 or getattr(result[0], "value", None) == 128


# ---------------------------------------------------------------- EMQX hook contract


def hook_bodies() -> dict[str, Any]:
    return json.loads((Path(REPO_ROOT) / "emqx" / "hook_bodies.json").read_text())


def render(template: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    rendered = json.dumps(template)
    for name, value in values.items():
        rendered = rendered.replace("${" + name + "}", value)
    result: dict[str, Any] = json.loads(rendered)
    return result


def hook_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.mqtt_hook_token.get_secret_value()}"}


async def authn(client: Client, settings: Settings, creds: DeviceCredentials, **over: str) -> Any:
    values = {
        "clientid": creds.device_id,
        "username": creds.device_id,
        "password": creds.secret,
        "peerhost": "10.0.0.9",
        **over,
    }
    body = render(hook_bodies()["authn"], values)
    response = await client.post("/api/v1/mqtt/authn", json=body, headers=hook_headers(settings))
    assert response.status == 200
    return await response.json()


async def test_emqx_authn_allows_a_device_with_acl(client: Client, settings: Settings) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    answer = await authn(client, settings, creds)
    assert answer["result"] == "allow" and answer["is_superuser"] is False
    assert answer["client_attrs"] == {"tenant_id": creds.tenant_id, "device_id": creds.device_id}
    allowed = {(a["action"], a["topic"]) for a in answer["acl"] if a["permission"] == "allow"}
    assert ("publish", creds.telemetry_topic) in allowed
    assert answer["acl"][-1] == {"permission": "deny", "action": "all", "topic": "#"}


async def test_emqx_authn_denies_wrong_secret_and_client_id(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    assert (await authn(client, settings, creds, password="nope"))["result"] == "deny"
    assert (await authn(client, settings, creds, clientid="other"))["result"] == "deny"
    assert (await authn(client, settings, creds, username="not-a-uuid"))["result"] == "deny"


async def test_emqx_hooks_need_the_hook_token(client: Client, settings: Settings) -> None:
    body = render(
        hook_bodies()["authn"],
        {"clientid": "a", "username": "a", "password": "b", "peerhost": "1.2.3.4"},
    )
    response = await client.post(
        "/api/v1/mqtt/authn", json=body, headers={"Authorization": "Bearer wrong"}
    )
    assert response.status == 401


async def test_emqx_authz_enforces_topics(client: Client, settings: Settings) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    base = creds.telemetry_topic.rsplit("/", 1)[0]

    async def authz(topic: str, action: str, username: str = creds.device_id) -> str:
        body = render(
            hook_bodies()["authz"],
            {
                "clientid": username,
                "username": username,
                "topic": topic,
                "action": action,
                "qos": "1",
            },
        )
        response = await client.post(
            "/api/v1/mqtt/authz", json=body, headers=hook_headers(settings)
        )
        return str((await response.json())["result"])

    assert await authz(f"{base}/telemetry", "publish") == "allow"
    assert await authz(f"{base}/status", "publish") == "allow"
    assert await authz(f"{base}/commands/#", "subscribe") == "allow"
    assert await authz(f"{base}/commands/#", "publish") == "deny"
    assert await authz("tenants/+/devices/+/telemetry", "subscribe") == "deny"
    other = f"tenants/{creds.tenant_id}/devices/00000000-0000-0000-0000-000000000000/telemetry"
    assert await authz(other, "publish") == "deny"
    ingest = settings.ingest_mqtt_username
    assert (
        await authz("$share/iotcore/tenants/+/devices/+/telemetry", "subscribe", ingest) == "allow"
    )
    assert await authz(f"{base}/telemetry", "publish", ingest) == "deny"

    # Commands: the device replies on its own replies topic only, one command id a topic;
    # the ingest account delivers commands and reads replies, nothing else of a device.
    command = "5f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f"
    stranger = f"tenants/{creds.tenant_id}/devices/00000000-0000-0000-0000-000000000000"
    assert await authz(f"{base}/replies/{command}", "publish") == "allow"
    assert await authz(f"{base}/replies/{command}", "subscribe") == "deny"
    assert await authz(f"{base}/replies/+", "publish") == "deny"
    assert await authz(f"{base}/replies/{command.upper()}", "publish") == "deny"
    assert await authz(f"{stranger}/replies/{command}", "publish") == "deny"
    assert await authz(f"{stranger}/commands/#", "subscribe") == "deny"
    assert await authz(f"{stranger}/commands/reboot", "subscribe") == "deny"
    assert await authz("tenants/+/devices/+/commands/#", "subscribe") == "deny"
    assert await authz(f"$share/g/{base}/commands/#", "subscribe") == "deny"
    assert await authz(f"{base}/commands/reboot", "publish") == "deny"  # no spoofed command
    assert await authz(f"{base}/commands/reboot", "publish", ingest) == "allow"
    assert await authz(f"{base}/commands/#", "publish", ingest) == "deny"
    assert await authz("$share/iotcore/tenants/+/devices/+/replies/+", "subscribe", ingest) == (
        "allow"
    )
    assert await authz(f"{base}/commands/#", "subscribe", ingest) == "deny"


async def test_rotation_grace_then_old_secret_refused_once_new_is_used(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    rotated = await client.post(
        f"/api/v1/devices/{creds.device_id}/secret/rotate", headers=owner.headers
    )
    assert rotated.status == 202
    assert (await rotated.json())["status"] == "rekey_pending"
    assert (await authn(client, settings, creds))["result"] == "allow", "old secret in grace"

    device = ProvisionedDevice(creds.device_id, creds.serial_number, "", creds.device_key)
    fetched = await device_call(client, device, "/api/v1/devices/secret")
    new_secret = (await fetched.json())["secret"]
    assert new_secret != creds.secret
    assert (await authn(client, settings, creds))["result"] == "allow", "old still valid"
    assert (await authn(client, settings, creds, password=new_secret))["result"] == "allow"
    assert (await authn(client, settings, creds))["result"] == "deny", "new used: old is gone"
    after = await (
        await client.get(f"/api/v1/devices/{creds.device_id}", headers=owner.headers)
    ).json()
    assert after["status"] == "claimed"


async def test_rotation_grace_expiry_refuses_the_old_secret(
    client: Client, settings: Settings, owner_conn: Any
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    await client.post(f"/api/v1/devices/{creds.device_id}/secret/rotate", headers=owner.headers)
    await set_grace_end(owner_conn, creds.device_id, -1.0)
    assert client.app is not None
    await client.app[DEVICE_REGISTRY_KEY].invalidate(UUID(creds.device_id))
    assert (await authn(client, settings, creds))["result"] == "deny"


async def test_reset_revokes_the_secret(client: Client, settings: Settings) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    assert (await authn(client, settings, creds))["result"] == "allow"
    await client.post(
        f"/api/v1/devices/{creds.device_id}/reset",
        json={"confirmation": "RESET"},
        headers=owner.headers,
    )
    assert (await authn(client, settings, creds))["result"] == "deny"
