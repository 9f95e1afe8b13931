"""Presence with real MQTT clients: on the embedded broker (its own connections, wills,
keep-alive), on Mosquitto (status messages and wills, read by the ingest process), and
through the EMQX events webhook (EMQX 5.8's documented event bodies). Transitions reach the
right tenant's live stream only and channel iotcore_presence; a broker restart or a lost
event leaves no device online for ever."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.maintenance.jobs import expire_stale_presence
from iotcore.mqtt.broker.server import EmbeddedBroker
from iotcore.mqtt.status import StatusWatcher
from iotcore.platform.context import Platform
from tests.conftest import REPO_ROOT, RUN_ID, free_port, make_settings, read_log, start_iotcore
from tests.dashboards.test_stream import open_stream, read_events
from tests.support.broker import embedded_broker
from tests.support.devices import DeviceCredentials, claimed_device
from tests.support.mqtt import PUBACK, RawClient, publish_packet
from tests.support.users import RegisteredUser, register

Client = TestClient  # type: ignore[type-arg]
OFFLINE = b'{"online": false}'
ONLINE = b'{"online": true}'
SAMPLES = json.loads((REPO_ROOT / "emqx/event_samples.json").read_text())


@pytest.fixture(scope="module")
def settings(database: str, mqtt_broker: str) -> Settings:
    return make_settings(
        database,
        mqtt_url=mqtt_broker,
        ingest_client_id=f"presence-test-{RUN_ID}",
        presence_heartbeat_s=1,
        presence_stale_s=10,
    )


@pytest.fixture(scope="module")
async def broker(platform: Platform) -> AsyncIterator[EmbeddedBroker]:
    async with embedded_broker(platform) as embedded:
        yield embedded


@pytest.fixture(scope="module")
async def watcher(platform: Platform) -> AsyncIterator[StatusWatcher]:
    """The ingest process's status subscriber, on the run's Mosquitto."""
    status = StatusWatcher(platform)
    await status.start()
    await asyncio.wait_for(status.subscribed.wait(), 10)
    yield status
    await status.stop()


def hook_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.mqtt_hook_token.get_secret_value()}"}


async def presence(client: Client, owner: RegisteredUser, device_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/devices/{device_id}", headers=owner.headers)
    body = await response.json()
    assert response.status == 200, body
    return {k: body[k] for k in ("connected", "connected_at", "disconnected_at")}


async def until_presence(
    client: Client, owner: RegisteredUser, device_id: str, connected: bool, within: float
) -> float:
    """Seconds until GET /devices/{id} says `connected`; fails after `within`."""
    started = time.monotonic()
    while True:
        state = await presence(client, owner, device_id)
        if state["connected"] is connected:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"still {state} after {within} s (wanted connected={connected})")
        await asyncio.sleep(0.05)


async def device_with_will(
    host: str, port: int, creds: DeviceCredentials, keepalive: int = 60, auth: bool = True
) -> RawClient:
    """A device as firmware does it: CONNECT with `{"online": false}` as its retained will,
    then `{"online": true}` retained on its status topic."""
    client = await RawClient.open(host, port)
    code, _ = await client.connect(
        creds.device_id,
        username=creds.device_id if auth else None,
        password=creds.secret if auth else None,
        keepalive=keepalive,
        will=(creds.status_topic, OFFLINE, 1, True),
    )
    assert code == 0
    client.send(publish_packet(creds.status_topic, ONLINE, qos=1, packet_id=1, retain=True))
    packet = await client.read()
    assert packet is not None and packet.kind == PUBACK
    return client


def kill(client: RawClient) -> None:
    """The device dies: the socket is dropped, no DISCONNECT."""
    transport = client.writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:  # RST rather than FIN, as a crashed host's peer sees it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    transport.abort()


# ---------------------------------------------------------------------------- embedded broker


BROKERS = ["embedded", "mosquitto"]


def target(kind: str, settings: Settings, broker: EmbeddedBroker) -> tuple[str, int, bool]:
    """(host, port, authenticated) of the broker under test: the embedded one (devices log
    in, presence from its connections), or Mosquitto (anonymous, presence from status
    messages and wills read by the ingest process's watcher)."""
    if kind == "embedded":
        return settings.broker_host, broker.port, True
    return (*mosquitto(settings), False)


def mosquitto(settings: Settings) -> tuple[str, int]:
    host, _, port = settings.mqtt_url.removeprefix("mqtt://").partition(":")
    return host, int(port)


@pytest.mark.parametrize("kind", BROKERS)
async def test_connect_then_kill_shows_offline_at_once(
    client: Client, settings: Settings, broker: EmbeddedBroker, watcher: StatusWatcher, kind: str
) -> None:
    """The device dies (socket dropped, no DISCONNECT): the embedded broker sees the
    connection end; Mosquitto publishes the will on the status topic."""
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    assert (await presence(client, owner, creds.device_id))["connected"] is False
    host, port, auth = target(kind, settings, broker)
    device = await device_with_will(host, port, creds, auth=auth)
    await until_presence(client, owner, creds.device_id, True, within=5)
    assert (await presence(client, owner, creds.device_id))["connected_at"] is not None
    kill(device)
    await until_presence(client, owner, creds.device_id, False, within=5)
    state = await presence(client, owner, creds.device_id)
    assert state["disconnected_at"] is not None
    assert state["disconnected_at"] >= state["connected_at"]


@pytest.mark.parametrize("kind", BROKERS)
async def test_keepalive_timeout_shows_offline_within_the_bound(
    client: Client, settings: Settings, broker: EmbeddedBroker, watcher: StatusWatcher, kind: str
) -> None:
    """A device that goes silent with its socket open (a dead host behind NAT): the broker
    ends it after 1.5 x keep-alive (the embedded one checks every second; Mosquitto then
    publishes the will), and presence follows."""
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    host, port, auth = target(kind, settings, broker)
    keepalive = 2
    device = await device_with_will(host, port, creds, keepalive=keepalive, auth=auth)
    started = time.monotonic()  # the device's last packet: its status PUBLISH, acknowledged
    try:
        await until_presence(client, owner, creds.device_id, True, within=5)
        # Silent from now on. The bound: 1.5 x keep-alive, plus the broker's own timer and
        # slack for a loaded machine.
        await until_presence(client, owner, creds.device_id, False, within=1.5 * keepalive + 10)
        assert time.monotonic() - started >= 1.5 * keepalive - 0.5  # not before its time
        assert await device.closed_by_broker(timeout=2)  # it was the broker that ended it
    finally:
        device.close()


async def test_embedded_clean_disconnect_and_status_offline(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    async with aiomqtt.Client(
        settings.broker_host,
        broker.port,
        username=creds.device_id,
        password=creds.secret,
        identifier=creds.device_id,
        timeout=5,
    ) as device:
        await until_presence(client, owner, creds.device_id, True, within=5)
        # The device says it goes offline while still connected, then online again.
        await device.publish(creds.status_topic, OFFLINE, qos=1, retain=True)
        await until_presence(client, owner, creds.device_id, False, within=5)
        await device.publish(creds.status_topic, ONLINE, qos=1, retain=True)
        await until_presence(client, owner, creds.device_id, True, within=5)
    await until_presence(client, owner, creds.device_id, False, within=5)


async def test_embedded_session_takeover_stays_online(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    """A reconnect that takes the old session over: the old connection's end (and its will)
    must not mark the device offline under the new one."""
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    first = await device_with_will(settings.broker_host, broker.port, creds)
    await until_presence(client, owner, creds.device_id, True, within=5)
    second = await device_with_will(settings.broker_host, broker.port, creds)
    try:
        assert await first.closed_by_broker(timeout=5)
        await broker.presence_queue.drain()
        assert (await presence(client, owner, creds.device_id))["connected"] is True
    finally:
        kill(second)
        first.close()
    await until_presence(client, owner, creds.device_id, False, within=5)


async def test_embedded_heartbeat_keeps_a_quiet_device_from_going_stale(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    owner = await register(client)
    quiet = await claimed_device(client, settings, owner)
    lost = await claimed_device(client, settings, owner)
    device = await device_with_will(settings.broker_host, broker.port, quiet)
    try:
        await until_presence(client, owner, quiet.device_id, True, within=5)
        # `lost`: online in the database with no connection anywhere (an event lost).
        await owner_conn.execute(
            "UPDATE devices SET connected = true, presence_source = 'emqx', presence_node = 'x',"
            " presence_session = 1, connected_at = now(), presence_seen_at = now() - interval"
            " '1 hour' WHERE device_id = $1",
            lost.device_id,
        )
        await owner_conn.execute(
            "UPDATE devices SET presence_seen_at = now() - interval '1 hour' WHERE device_id = $1",
            quiet.device_id,
        )
        # The heartbeat (every second here) confirms the device the broker holds.
        deadline = time.monotonic() + 5
        while await owner_conn.fetchval(
            "SELECT presence_seen_at < now() - interval '1 minute' FROM devices"
            " WHERE device_id = $1",
            quiet.device_id,
        ):
            assert time.monotonic() < deadline, "no heartbeat"
            await asyncio.sleep(0.1)
        expired = await expire_stale_presence(settings, broker.presence._redis)
        assert expired >= 1
        assert (await presence(client, owner, lost.device_id))["connected"] is False
        assert (await presence(client, owner, quiet.device_id))["connected"] is True
    finally:
        kill(device)


async def test_presence_events_reach_the_right_tenants_stream_only(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    alice, bob = await register(client), await register(client)
    alice_device = await claimed_device(client, settings, alice)
    bob_device = await claimed_device(client, settings, bob)
    alice_stream = await open_stream(client, alice.headers)
    bob_stream = await open_stream(client, bob.headers)
    try:
        a = await device_with_will(settings.broker_host, broker.port, alice_device)
        (event,) = await read_events(alice_stream, 1, timeout=5)
        assert event["event"] == "presence"
        assert event["data"]["device_id"] == alice_device.device_id
        assert event["data"]["connected"] is True
        assert event["data"]["connected_at"] is not None
        b = await device_with_will(settings.broker_host, broker.port, bob_device)
        kill(a)
        # Bob's stream: his device's event, never Alice's (hers came first).
        (event,) = await read_events(bob_stream, 1, timeout=5)
        assert event["data"]["device_id"] == bob_device.device_id
        # Alice's next event is her device going offline, not Bob's connecting.
        (event,) = await read_events(alice_stream, 1, timeout=5)
        assert event["data"] == {
            **event["data"],
            "device_id": alice_device.device_id,
            "connected": False,
        }
        assert event["data"]["disconnected_at"] is not None
        kill(b)
    finally:
        alice_stream.close()
        bob_stream.close()


async def test_device_cannot_publish_another_devices_status(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    owner = await register(client)
    victim = await claimed_device(client, settings, owner)
    attacker = await claimed_device(client, settings, owner)
    device = await device_with_will(settings.broker_host, broker.port, victim)
    try:
        await until_presence(client, owner, victim.device_id, True, within=5)
        mallory = await RawClient.open(settings.broker_host, broker.port)
        code, _ = await mallory.connect(
            attacker.device_id, username=attacker.device_id, password=attacker.secret
        )
        assert code == 0
        mallory.send(publish_packet(victim.status_topic, OFFLINE, qos=1, retain=True))
        assert await mallory.closed_by_broker(timeout=5)  # denied: the connection ends
        await broker.presence_queue.drain()
        assert (await presence(client, owner, victim.device_id))["connected"] is True
    finally:
        kill(device)


async def test_broker_restart_leaves_no_device_online(
    client: Client, settings: Settings, database: str, owner_conn: Any
) -> None:
    """`iotcore broker` killed with devices connected (no clean stop, no disconnect
    events): the devices stay online in the database, and the restarted node marks them
    offline before it accepts anyone."""
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    node = make_settings(
        database,
        broker_port=free_port(),
        metrics_port=free_port(),
        broker_node=f"restart-test-{RUN_ID}",
    )
    process = start_iotcore(node, "broker")
    try:
        device = await _connect_when_up(node, creds, process)
        await until_presence(client, owner, creds.device_id, True, within=15)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert await device.closed_by_broker(timeout=5)
        device.close()
        # The fault landed: nobody told the database.
        await asyncio.sleep(0.5)
        assert (await presence(client, owner, creds.device_id))["connected"] is True
        process = start_iotcore(node, "broker")
        # Within the restarted process's start-up (imports, pools): 60 s on a loaded machine.
        await until_presence(client, owner, creds.device_id, False, within=60)
        assert (
            await owner_conn.fetchval(
                "SELECT presence_source FROM devices WHERE device_id = $1", creds.device_id
            )
            == "reconcile"
        )
    finally:
        process.terminate()
        process.wait(15)


async def _connect_when_up(node: Settings, creds: DeviceCredentials, process: Any) -> RawClient:
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise AssertionError(f"broker exited:\n{read_log(process)}")
        try:
            return await device_with_will(node.broker_host, node.broker_port, creds)
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# ---------------------------------------------------------------------------- Mosquitto


async def test_mosquitto_status_on_a_foreign_or_unknown_topic_changes_nothing(
    client: Client, settings: Settings, watcher: StatusWatcher
) -> None:
    """Mosquitto authenticates nobody: a message on device A's topic under another tenant, or
    for a device that holds no credentials, is ignored by the database."""
    alice, bob = await register(client), await register(client)
    victim = await claimed_device(client, settings, alice)
    marker = await claimed_device(client, settings, alice)
    host, port = mosquitto(settings)
    async with aiomqtt.Client(host, port, identifier=f"spoofer-{RUN_ID}", timeout=5) as spoofer:
        foreign = f"tenants/{bob.tenant_id}/devices/{victim.device_id}/status"
        await spoofer.publish(foreign, ONLINE, qos=1)
        assert await watcher.handle(foreign, ONLINE) == "ignored"
        await spoofer.publish(victim.status_topic, b"not json", qos=1)
        # In order on one subscription: once the marker's message is applied, the others
        # have been handled.
        await spoofer.publish(marker.status_topic, ONLINE, qos=1)
        await until_presence(client, alice, marker.device_id, True, within=5)
        assert (await presence(client, alice, victim.device_id))["connected"] is False
        await spoofer.publish(marker.status_topic, OFFLINE, qos=1)
        await until_presence(client, alice, marker.device_id, False, within=5)


async def test_restarted_watcher_catches_up_from_retained_status(
    client: Client, settings: Settings, platform: Platform, watcher: StatusWatcher
) -> None:
    """Devices that went online and offline while the ingest process was down: the retained
    status messages, delivered again on subscribe, put them right."""
    await watcher.stop()  # this test runs the ingest process's watcher itself
    owner = await register(client)
    online = await claimed_device(client, settings, owner)
    host, port = mosquitto(settings)
    device = await device_with_will(host, port, online, auth=False)
    try:
        status = StatusWatcher(platform)
        await status.start()
        try:
            await until_presence(client, owner, online.device_id, True, within=10)
        finally:
            await status.stop()
        kill(device)  # its will is retained; nobody is watching
        await asyncio.sleep(0.5)
        assert (await presence(client, owner, online.device_id))["connected"] is True
        status = StatusWatcher(platform)
        await status.start()
        try:
            await until_presence(client, owner, online.device_id, False, within=10)
        finally:
            await status.stop()
    finally:
        device.close()
        await watcher.start()
        await asyncio.wait_for(watcher.subscribed.wait(), 10)


# ---------------------------------------------------------------------------- EMQX events


def emqx_event(kind: str, creds: DeviceCredentials, connected_at: int, **extra: Any) -> Any:
    text = json.dumps(SAMPLES[kind])
    for name, value in {
        "device_id": creds.device_id,
        "tenant_id": creds.tenant_id,
    }.items():
        text = text.replace("${" + name + "}", value)
    body = json.loads(text)
    for key, value in body.items():
        if value == "${connected_at}":
            body[key] = connected_at
        elif value == "${disconnected_at}":
            body[key] = extra.get("disconnected_at", connected_at + 1000)
    return body


async def post_event(client: Client, settings: Settings, body: Any) -> Any:
    response = await client.post("/api/v1/mqtt/events", json=body, headers=hook_headers(settings))
    answer = await response.json()
    assert response.status == 200, answer
    return answer


async def test_emqx_event_bodies_drive_presence(
    client: Client, settings: Settings, service_conn: Any
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    notified: list[Any] = []

    def listen(*args: Any) -> None:
        notified.append(args[3])

    await service_conn.add_listener("iotcore_presence", listen)
    try:
        t1 = int(time.time() * 1000)
        body = emqx_event("client.connected", creds, t1)
        assert await post_event(client, settings, body) == {"result": "applied"}
        assert await post_event(client, settings, body) == {"result": "unchanged"}
        state = await presence(client, owner, creds.device_id)
        assert state["connected"] is True
        assert state["connected_at"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(t1 / 1000)))
        # Reconnect (session t2), then the old session's end arrives late: still online.
        t2 = t1 + 5000
        await post_event(client, settings, emqx_event("client.connected", creds, t2))
        late = emqx_event("client.disconnected", creds, t1, disconnected_at=t2 + 10)
        assert await post_event(client, settings, late) == {"result": "unchanged"}
        assert (await presence(client, owner, creds.device_id))["connected"] is True
        # The current session's end: offline; its connect replayed afterwards changes nothing.
        end = emqx_event("client.disconnected", creds, t2, disconnected_at=t2 + 20)
        assert await post_event(client, settings, end) == {"result": "applied"}
        replay = emqx_event("client.connected", creds, t2)
        assert await post_event(client, settings, replay) == {"result": "unchanged"}
        assert (await presence(client, owner, creds.device_id))["connected"] is False
        deadline = time.monotonic() + 5
        while len(notified) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [orjson.loads(n) for n in notified] == [
            {"tenant_id": creds.tenant_id, "device_id": creds.device_id, "connected": True},
            {"tenant_id": creds.tenant_id, "device_id": creds.device_id, "connected": False},
        ]
    finally:
        await service_conn.remove_listener("iotcore_presence", listen)


async def test_emqx_events_for_other_clients_are_ignored(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    body = emqx_event("client.connected", creds, int(time.time() * 1000))
    for clientid, username in (
        (settings.ingest_client_id, settings.ingest_mqtt_username),
        (creds.device_id, "someone-else"),
        ("00000000-0000-4000-8000-000000000000", "00000000-0000-4000-8000-000000000000"),
    ):
        answer = await post_event(
            client, settings, {**body, "clientid": clientid, "username": username}
        )
        assert answer == {"result": "ignored"}
    assert (await presence(client, owner, creds.device_id))["connected"] is False


@pytest.mark.parametrize(
    ("headers", "data", "status", "code"),
    [
        ({}, b"{}", 401, "unauthenticated"),
        ({"Authorization": "Bearer wrong"}, b"{}", 401, "unauthenticated"),
        (None, b"{not json", 400, "malformed_json"),
        (None, b"[]", 422, "validation_error"),
        (None, b'{"event": "client.connected", "clientid": "x"}', 422, "validation_error"),
        (None, b'{"event": "message.publish", "clientid": "x"}', 422, "validation_error"),
        (None, b'{"event": "client.disconnected", "clientid": "x"}', 422, "validation_error"),
        (
            None,
            b'{"event": "client.connected", "clientid": "x", "connected_at": "soon"}',
            422,
            "validation_error",
        ),
        (
            None,
            b'{"event": "client.connected", "clientid": "x", "connected_at": 1e300}',
            422,
            "validation_error",
        ),
    ],
)
async def test_emqx_events_bad_requests_get_the_error_envelope(
    client: Client,
    settings: Settings,
    headers: dict[str, str] | None,
    data: bytes,
    status: int,
    code: str,
) -> None:
    response = await client.post(
        "/api/v1/mqtt/events",
        data=data,
        headers={
            "Content-Type": "application/json",
            **(hook_headers(settings) if headers is None else headers),
        },
    )
    answer = await response.json()
    assert response.status == status, answer
    assert answer["error"]["code"] == code
    assert settings.mqtt_hook_token.get_secret_value() not in json.dumps(answer)


async def test_emqx_events_wrong_content_type_is_415(client: Client, settings: Settings) -> None:
    response = await client.post(
        "/api/v1/mqtt/events",
        data=b"event=client.connected",
        headers={"Content-Type": "text/plain", **hook_headers(settings)},
    )
    assert response.status == 415
    assert (await response.json())["error"]["code"] == "unsupported_media_type"


async def test_stale_rule_ends_a_device_whose_events_were_lost(
    client: Client, settings: Settings, platform: Platform, owner_conn: Any
) -> None:
    """EMQX (or the API) went away between a connect and its disconnect: the staleness rule,
    run by maintain, marks the device offline and says so on the live stream."""
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    await post_event(
        client, settings, emqx_event("client.connected", creds, int(time.time() * 1000))
    )
    stream = await open_stream(client, owner.headers, device_id=creds.device_id)
    try:
        await owner_conn.execute(
            "UPDATE devices SET presence_seen_at = now() - interval '1 hour' WHERE device_id = $1",
            creds.device_id,
        )
        assert await expire_stale_presence(settings, platform.redis) >= 1
        assert (await presence(client, owner, creds.device_id))["connected"] is False
        (event,) = await read_events(stream, 1, timeout=5)
        assert event["event"] == "presence"
        assert event["data"]["connected"] is False
    finally:
        stream.close()


async def test_reset_device_starts_without_presence(
    client: Client, settings: Settings, owner_conn: Any
) -> None:
    """A device online for one tenant and then reset starts offline; a late event of its old
    sessions is ignored."""
    owner = await register(client)
    creds = await claimed_device(client, settings, owner)
    t1 = int(time.time() * 1000)
    await post_event(client, settings, emqx_event("client.connected", creds, t1))
    response = await client.post(
        f"/api/v1/devices/{creds.device_id}/reset",
        json={"confirmation": "RESET"},
        headers=owner.headers,
    )
    assert response.status == 200, await response.text()
    assert (
        await owner_conn.fetchval(
            "SELECT connected FROM devices WHERE device_id = $1", creds.device_id
        )
        is False
    )
    late = emqx_event("client.connected", creds, t1 - 1000)
    assert (await post_event(client, settings, late))["result"] == "ignored"


def test_emqx_config_posts_the_events_to_the_hook() -> None:
    """emqx.conf wires both events to /api/v1/mqtt/events with the hook token and the whole
    event as the body (what the samples above are)."""
    conf = (REPO_ROOT / "emqx/emqx.conf").read_text()
    assert '"$events/client_connected"' in conf and '"$events/client_disconnected"' in conf
    assert 'path = "/api/v1/mqtt/events"' in conf
    assert 'body = "${.}"' in conf
    events_block = conf[conf.index("connectors.http.iotcore_events") :]
    assert '"Bearer "${?IOT_MQTT_HOOK_TOKEN}' in events_block
    assert Path(REPO_ROOT / "emqx/event_samples.json").exists()
