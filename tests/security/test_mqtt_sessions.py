"""MQTT edges, attacked over raw sockets against the embedded broker: wills and retained
messages stay inside the publisher's rights, sessions end with their credentials (EMQX is
told through its REST API), no default ingest password, and every connection is bounded
(CONNECT timeout, connection cap, keep-alive, canonical ids, denied publish disconnects)."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from iotcore.app import create_app
from iotcore.config import Settings
from iotcore.maintenance.jobs import end_expired_rotations
from iotcore.mqtt.broker.server import EmbeddedBroker
from iotcore.mqtt.broker.sessions import Message
from iotcore.platform.context import Platform
from tests.conftest import free_port, make_settings
from tests.support.broker import embedded_broker
from tests.support.devices import (
    DeviceCredentials,
    ProvisionedDevice,
    claimed_device,
    device_call,
    set_grace_end,
)
from tests.support.ingest import count_rows
from tests.support.mqtt import (
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    RawClient,
    publish_packet,
    raw_client,
    subscribe_packet,
)
from tests.support.users import register
from tests.support.waiting import eventually

Client = TestClient  # type: ignore[type-arg]
DOCUMENTED_DEFAULT_INGEST_PASSWORD = "dev-only-ingest-password-change-me-0123456"


@pytest.fixture(scope="module")
def settings(database: str, mqtt_broker: str) -> Settings:
    return make_settings(database, mqtt_url=mqtt_broker, broker_connect_timeout_s=1.0)


@pytest.fixture(scope="module")
async def broker(platform: Platform) -> AsyncIterator[EmbeddedBroker]:
    async with embedded_broker(platform) as embedded:
        yield embedded


async def device(client: Client, settings: Settings) -> DeviceCredentials:
    return await claimed_device(client, settings, await register(client))


async def connected(broker: EmbeddedBroker, creds: DeviceCredentials, **options: Any) -> RawClient:
    mqtt = await RawClient.open("127.0.0.1", broker.port)
    code, _ = await mqtt.connect(
        creds.device_id, username=creds.device_id, password=creds.secret, **options
    )
    assert code == 0
    return mqtt


async def alive(mqtt: RawClient) -> bool:
    """A PINGREQ answered: the connection is open (anything queued before comes first)."""
    try:
        mqtt.send(b"\xc0\x00")
    except ConnectionError:
        return False
    while True:
        packet = await mqtt.read(timeout=5)
        if packet is None:
            return False
        if packet.kind == PINGRESP:
            return True


# ------------------------------------------------------------------ wills and retained messages


async def test_will_to_another_tenants_topic_is_refused_at_connect(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    mine, theirs = await device(client, settings), await device(client, settings)
    foreign = [
        (theirs.telemetry_topic, True),
        (theirs.telemetry_topic, False),
        (theirs.status_topic, True),
        (theirs.telemetry_topic.replace("/telemetry", "/commands/reboot"), True),
        (mine.telemetry_topic, False),  # its own telemetry: a will is status only
    ]
    for topic, retain in foreign:
        will = (topic, orjson.dumps({"metrics": {"forged": 1}}), 1, retain)
        async with raw_client("127.0.0.1", broker.port) as mqtt:
            code, _ = await mqtt.connect(
                mine.device_id, username=mine.device_id, password=mine.secret, will=will
            )
            assert code == 5, f"will to {topic} must be refused as not authorized"
            assert await mqtt.closed_by_broker()
    # The device whose topic was targeted subscribes to its commands: nothing retained there.
    victim = await connected(broker, theirs)
    victim.send(subscribe_packet(1, [(theirs.status_topic.replace("/status", "/commands/#"), 1)]))
    assert (await victim.read()).kind == SUBACK  # type: ignore[union-attr]
    assert await alive(victim), "no retained will was delivered before the PINGRESP"
    victim.close()
    assert await count_rows(owner_conn, theirs.device_id) == 0
    assert await count_rows(owner_conn, mine.device_id) == 0
    # Its own status topic is allowed, and the will goes out when the connection drops.
    own = (mine.status_topic, b"offline", 1, True)
    async with raw_client("127.0.0.1", broker.port) as mqtt:
        code, _ = await mqtt.connect(
            mine.device_id, username=mine.device_id, password=mine.secret, will=own
        )
        assert code == 0


async def test_retained_messages_reach_only_the_clients_own_authorised_subscriptions(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    tenant_a, tenant_b = await device(client, settings), await device(client, settings)
    publisher = await connected(broker, tenant_b)
    publisher.send(publish_packet(tenant_b.telemetry_topic, b'{"metrics":{"x":1}}', 1, 1, True))
    publisher.send(publish_packet(tenant_b.status_topic, b"online", 1, 2, True))
    assert {(await publisher.read()).packet_id for _ in range(2)} == {1, 2}  # type: ignore[union-attr]
    publisher.close()
    # What a command service would retain for tenant A's device: the positive control.
    commands_a = tenant_a.status_topic.replace("/status", "/commands")
    broker.route(Message(f"{commands_a}/config", b"for-a", 1, True))

    device_a = await connected(broker, tenant_a)
    wanted = [
        ("#", 1),
        ("tenants/+/devices/+/telemetry", 1),
        (tenant_b.status_topic, 1),
        (tenant_b.telemetry_topic, 1),
        (f"{commands_a}/#", 1),
    ]
    device_a.send(subscribe_packet(7, wanted))
    suback = await device_a.read()
    assert suback is not None and suback.kind == SUBACK
    assert list(suback.body[2:]) == [0x80, 0x80, 0x80, 0x80, 1]
    delivered = []
    device_a.send(b"\xc0\x00")
    while (packet := await device_a.read()) is not None and packet.kind != PINGRESP:
        assert packet.kind == PUBLISH
        delivered.append((packet.topic, packet.payload))
    assert delivered == [(f"{commands_a}/config", b"for-a")]
    device_a.close()


# ------------------------------------------------------------------ sessions end with credentials


async def test_reset_ends_the_live_session(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    mqtt = await connected(broker, creds)
    mqtt.send(publish_packet(creds.telemetry_topic, b'{"metrics":{"before":1}}', 1, 1))
    assert (await mqtt.read()).kind == PUBACK  # type: ignore[union-attr]
    response = await client.post(
        f"/api/v1/devices/{creds.device_id}/reset",
        json={"confirmation": "RESET"},
        headers=owner.headers,
    )
    assert response.status in (200, 202, 204)
    # The API's registry announced it over Redis; the broker (its own registry) ended it.
    assert await mqtt.closed_by_broker(), "the session outlived the reset"
    assert await count_rows(owner_conn, creds.device_id) == 1
    async with raw_client("127.0.0.1", broker.port) as again:
        code, _ = await again.connect(
            creds.device_id, username=creds.device_id, password=creds.secret
        )
        assert code == 4


async def test_rotation_ends_the_old_secret_session_once_the_new_one_is_used(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    old = await connected(broker, creds)
    checked = broker.rechecks
    rotated = await client.post(
        f"/api/v1/devices/{creds.device_id}/secret/rotate", headers=owner.headers
    )
    assert rotated.status == 202
    assert await eventually(lambda: broker.rechecks > checked)
    assert await alive(old), "in its grace period the old secret's session goes on"

    provisioned = ProvisionedDevice(creds.device_id, creds.serial_number, "", creds.device_key)
    new_secret = (await (await device_call(client, provisioned, "/api/v1/devices/secret")).json())[
        "secret"
    ]
    checked = broker.rechecks
    new = await RawClient.open("127.0.0.1", broker.port)
    code, _ = await new.connect(creds.device_id, username=creds.device_id, password=new_secret)
    assert code == 0
    assert await old.closed_by_broker(), "the old secret's session ended"
    assert await eventually(lambda: broker.rechecks > checked), "the change was re-checked"
    new.send(publish_packet(creds.telemetry_topic, b'{"metrics":{"after":1}}', 1, 9))
    ack = await new.read()
    assert ack is not None and ack.kind == PUBACK, "the new secret's session survives"
    assert await count_rows(owner_conn, creds.device_id) == 1
    new.close()


async def test_rotation_grace_expiry_ends_the_old_secret_session(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    await client.post(f"/api/v1/devices/{creds.device_id}/secret/rotate", headers=owner.headers)
    await set_grace_end(owner_conn, creds.device_id, 2.0)
    mqtt = await connected(broker, creds)  # the old secret, 2 s of grace left
    assert await alive(mqtt)
    assert await mqtt.closed_by_broker(timeout=10), "the session outlived the grace period"


# ------------------------------------------------------------------ EMQX: the REST API kick


class EmqxStub:
    """Stands in for EMQX 5.8's REST API: records each request, answers as EMQX does
    (204 kicked, 404 CLIENTID_NOT_FOUND), and refuses anything else."""

    def __init__(self, key: str, secret: str) -> None:
        self.requests: list[tuple[str, str, str | None, str | None]] = []
        self._key, self._secret = key, secret

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            (
                request.method,
                request.raw_path,
                request.headers.get("Authorization"),
                request.headers.get("Accept"),
            )
        )
        expected = "Basic " + base64.b64encode(f"{self._key}:{self._secret}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"code": "BAD_API_KEY_OR_SECRET"}, status=401)
        if request.method != "DELETE" or not request.path.startswith("/api/v5/clients/"):
            return web.json_response({"code": "NOT_FOUND"}, status=404)
        return web.Response(status=204)


@pytest.fixture
async def emqx() -> AsyncIterator[tuple[EmqxStub, str]]:
    stub = EmqxStub("iotcore-kicker", "s" * 40)
    server = TestServer(stub.app(), port=free_port())
    await server.start_server()
    try:
        yield stub, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_reset_and_grace_expiry_kick_the_device_off_emqx(
    database: str, emqx: tuple[EmqxStub, str], owner_conn: Any
) -> None:
    stub, url = emqx
    emqx_settings = make_settings(
        database, emqx_api_url=url, emqx_api_key="iotcore-kicker", emqx_api_secret="s" * 40
    )
    platform = Platform.from_settings(emqx_settings)
    await platform.start()
    try:
        async with TestClient(TestServer(create_app(emqx_settings, platform))) as api:
            owner = await register(api)
            reset_me = await claimed_device(api, emqx_settings, owner)
            response = await api.post(
                f"/api/v1/devices/{reset_me.device_id}/reset",
                json={"confirmation": "RESET"},
                headers=owner.headers,
            )
            assert response.status in (200, 202, 204)
            rotated = await claimed_device(api, emqx_settings, owner)
            await api.post(
                f"/api/v1/devices/{rotated.device_id}/secret/rotate", headers=owner.headers
            )
    finally:
        await platform.close()
    await set_grace_end(owner_conn, rotated.device_id, -1.0)
    assert await end_expired_rotations(emqx_settings) >= 1
    basic = "Basic " + base64.b64encode(b"iotcore-kicker:" + b"s" * 40).decode()
    kick = [
        ("DELETE", f"/api/v5/clients/{d.device_id}", basic, "application/json")
        for d in (reset_me, rotated)
    ]
    assert stub.requests[0] == kick[0], "the reset kicked the device"
    assert kick[1] in stub.requests[1:], "the end of the grace kicked the rotated device"
    assert all(r[0] == "DELETE" and r[2] == basic for r in stub.requests)
    before = len(stub.requests)
    await end_expired_rotations(emqx_settings)
    assert len(stub.requests) == before, "each grace ends once"


# ------------------------------------------------------------------ credentials and bounds


async def test_no_default_ingest_password_is_accepted(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    assert settings.ingest_mqtt_password.get_secret_value() != DOCUMENTED_DEFAULT_INGEST_PASSWORD
    assert Settings().ingest_mqtt_password != Settings().ingest_mqtt_password, "drawn per process"
    body = {
        "clientid": "ingest",
        "username": settings.ingest_mqtt_username,
        "password": DOCUMENTED_DEFAULT_INGEST_PASSWORD,
        "peerhost": "10.0.0.1",
    }
    token = settings.mqtt_hook_token.get_secret_value()
    answer = await client.post(
        "/api/v1/mqtt/authn", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert (await answer.json())["result"] == "deny"
    # The embedded broker has no ingest account at all (it writes telemetry itself).
    for password in (DOCUMENTED_DEFAULT_INGEST_PASSWORD, settings.ingest_mqtt_password):
        secret = password if isinstance(password, str) else password.get_secret_value()
        async with raw_client("127.0.0.1", broker.port) as mqtt:
            code, _ = await mqtt.connect(
                str(uuid.uuid4()), username=settings.ingest_mqtt_username, password=secret
            )
            assert code != 0


async def test_socket_that_never_sends_connect_is_closed(broker: EmbeddedBroker) -> None:
    async with raw_client("127.0.0.1", broker.port) as silent:
        started = time.monotonic()
        assert await silent.closed_by_broker(timeout=10)
        assert time.monotonic() - started < 5  # IOT_BROKER_CONNECT_TIMEOUT_S=1, swept each second


async def test_keepalive_is_enforced(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    creds = await device(client, settings)
    mqtt = await connected(broker, creds, keepalive=1)
    started = time.monotonic()
    assert await mqtt.closed_by_broker(timeout=10)
    assert time.monotonic() - started < 5  # 1.5 x keep-alive, swept each second


async def test_connections_are_capped(settings: Settings) -> None:
    capped = settings.model_copy(update={"broker_port": free_port(), "broker_max_connections": 2})
    platform = Platform.from_settings(capped)
    await platform.start()
    try:
        async with embedded_broker(platform) as broker:
            first = await RawClient.open("127.0.0.1", broker.port)
            second = await RawClient.open("127.0.0.1", broker.port)
            third = await RawClient.open("127.0.0.1", broker.port)
            assert await third.closed_by_broker(timeout=5), "the third connection is refused"
            first.close()
            assert await eventually(lambda: len(broker.connections) == 1)
            fourth = await RawClient.open("127.0.0.1", broker.port)
            assert await eventually(lambda: len(broker.connections) == 2), "room again"
            fourth.close()
            second.close()
    finally:
        await platform.close()


async def test_non_canonical_uuid_client_ids_are_refused(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    creds = await device(client, settings)
    parsed = UUID(creds.device_id)
    spellings = [
        creds.device_id.upper(),
        parsed.hex,
        "{" + creds.device_id + "}",
        f"urn:uuid:{creds.device_id}",
        creds.device_id + "\n",
        " " + creds.device_id,
    ]
    for spelling in spellings:
        async with raw_client("127.0.0.1", broker.port) as mqtt:
            code, _ = await mqtt.connect(spelling, username=spelling, password=creds.secret)
            assert code == 2, f"{spelling!r} must be refused"
        async with raw_client("127.0.0.1", broker.port) as mqtt:
            code, _ = await mqtt.connect(creds.device_id, username=spelling, password=creds.secret)
            assert code == 4, f"user name {spelling!r} must be refused"
    assert (await connected(broker, creds)) is not None


async def test_malformed_publish_on_the_own_telemetry_topic_disconnects_and_stores_nothing(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    creds = await device(client, settings)
    topic = creds.telemetry_topic.encode()
    body = b'{"metrics":{"bad":1}}'
    malformed = [
        publish_packet(creds.telemetry_topic, body, 1, 0),  # packet id 0 (2.3.1-1)
        b"\x32" + bytes((2 + len(topic),)) + struct.pack("!H", len(topic)) + topic,  # no id
        # QoS 0 whose remaining length (5) ends inside the topic, the rest of which follows
        # (as the start of an incomplete packet: only this one can end the connection).
        b"\x30\x05" + struct.pack("!H", len(topic)) + topic,
    ]
    for packet in malformed:
        mqtt = await connected(broker, creds)
        mqtt.send(packet)
        assert await mqtt.closed_by_broker(), "a malformed publish ends the connection"
    assert await count_rows(owner_conn, creds.device_id) == 0


async def test_qos0_telemetry_is_stored_without_a_puback(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    creds = await device(client, settings)
    mqtt = await connected(broker, creds)
    # Retain means nothing for telemetry (it is stored, never retained).
    mqtt.send(publish_packet(creds.telemetry_topic, b'{"metrics":{"q0":1}}', 0, retain=True))
    mqtt.send(b"\xc0\x00")  # PINGREQ: its answer is the first packet back
    packet = await mqtt.read()
    assert packet is not None and packet.kind == PINGRESP
    assert await eventually(lambda: _rows(owner_conn, creds.device_id, 1))
    assert await alive(mqtt)


async def _rows(owner_conn: Any, device_id: str, expected: int) -> bool:
    return await count_rows(owner_conn, device_id) == expected


async def test_denied_publish_disconnects_and_stores_nothing(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    mine, other = await device(client, settings), await device(client, settings)
    forged = [
        publish_packet(other.telemetry_topic, b'{"metrics":{"forged":1}}', 1, 1),
        publish_packet("tenants/x/devices/y/telemetry", b'{"metrics":{"forged":1}}', 0),
        publish_packet(mine.telemetry_topic, b'{"metrics":{"qos2":1}}', 2, 1),  # QoS 2: refused
    ]
    for packet in forged:
        mqtt = await connected(broker, mine)
        mqtt.send(packet)
        assert await mqtt.closed_by_broker(), "a denied publish ends the connection"
    assert await count_rows(owner_conn, other.device_id) == 0
    assert await count_rows(owner_conn, mine.device_id) == 0
