"""Commands on the single node's embedded broker, with real MQTT clients: the API contract,
delivery to a device that connects later, completion by its reply, expiry, the ACL between
devices, rejected replies recorded, audit of every transition and `command` events on the
right tenant's live stream only; a device that changed hands takes none of its old
tenant's commands with it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from prometheus_client import REGISTRY

from iotcore.commands.schemas import PARAMS_MAX_BYTES
from iotcore.config import Settings
from iotcore.maintenance.jobs import expire_due_commands
from iotcore.mqtt.broker.server import EmbeddedBroker
from iotcore.mqtt.commands import ExternalDelivery
from iotcore.platform.context import Platform
from iotcore.platform.db import init_connection
from iotcore.platform.sql import queries
from iotcore.telemetry.derived import live_key
from tests.conftest import SERVICE_URL, with_database
from tests.dashboards.test_stream import open_stream, read_events
from tests.support.broker import embedded_broker
from tests.support.commands import (
    Client,
    commands_filter,
    commands_path,
    device_client,
    expire_now,
    get_command,
    next_command,
    rejects,
    reply_topic,
    send_command,
    wait_status,
)
from tests.support.devices import claim_with_secret, claimed_device, provision
from tests.support.mqtt import PUBLISH, SUBACK, RawClient, publish_packet, subscribe_packet
from tests.support.users import add_user, register
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
async def broker(platform: Platform) -> AsyncIterator[EmbeddedBroker]:
    async with embedded_broker(platform) as embedded:
        await asyncio.wait_for(embedded.commands.listener.listening.wait(), 10)
        yield embedded


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_api_contract_and_bad_input(client: Client, settings: Settings) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    path = commands_path(device.device_id)
    accepted = await send_command(client, owner, device.device_id, "reboot", params={"delay": 5})
    assert accepted["status"] == "pending" and set(accepted) == {
        "command_id",
        "status",
        "expires_at",
    }
    command = await get_command(client, owner, device.device_id, accepted["command_id"])
    assert command["name"] == "reboot" and command["params"] == {"delay": 5}
    assert command["sent_at"] is None and command["result"] is None
    assert command["expires_at"] == accepted["expires_at"]

    for body, field in [
        ({"name": "no spaces"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": "ok", "ttl_s": 9}, "ttl_s"),
        ({"name": "ok", "ttl_s": 86401}, "ttl_s"),
        ({"name": "ok", "params": [1, 2]}, "params"),
        ({"name": "ok", "params": {"blob": "x" * PARAMS_MAX_BYTES}}, "params"),
        ({"name": "ok", "extra": 1}, "extra"),
    ]:
        response = await client.post(path, json=body, headers=owner.headers)
        answer = await response.json()
        assert response.status == 422, (body, answer)
        assert answer["error"]["code"] == "validation_error"
        assert any(d["field"].startswith(field) for d in answer["error"]["details"]), answer

    response = await client.post(
        path, data=b"{", headers={**owner.headers, "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "malformed_json"

    # Another tenant's device, and its command, are not found.
    stranger = await register(client)
    for response in [
        await client.post(path, json={"name": "reboot"}, headers=stranger.headers),
        await client.get(path, headers=stranger.headers),
        await client.get(f"{path}/{accepted['command_id']}", headers=stranger.headers),
        await client.get(f"{path}/{uuid.uuid4()}", headers=owner.headers),
        await client.get(f"{path}/not-a-uuid", headers=owner.headers),
    ]:
        assert response.status == 404, await response.text()
        assert (await response.json())["error"]["code"] == "not_found"

    # A viewer reads, never sends.
    viewer = await add_user(client, owner, "viewer")
    response = await client.post(path, json={"name": "reboot"}, headers=viewer.headers)
    assert response.status == 403
    response = await client.get(path, headers=viewer.headers)
    assert response.status == 200

    # Newest first, paged, filtered by status.
    second = await send_command(client, owner, device.device_id, "ping", ttl_s=10)
    response = await client.get(path, params={"limit": "1"}, headers=viewer.headers)
    page = await response.json()
    assert [c["command_id"] for c in page["items"]] == [second["command_id"]]
    response = await client.get(
        path, params={"limit": "1", "cursor": page["next_cursor"]}, headers=viewer.headers
    )
    page = await response.json()
    assert [c["command_id"] for c in page["items"]] == [accepted["command_id"]]
    assert page["next_cursor"] is None
    response = await client.get(path, params={"status": "succeeded"}, headers=viewer.headers)
    assert (await response.json())["items"] == []
    response = await client.get(path, params={"status": "bogus"}, headers=viewer.headers)
    assert response.status == 422


async def test_offline_device_gets_command_on_connect_and_completes_on_reply(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    succeeded_before = sample("iotcore_commands_total", status="succeeded")
    round_trips_before = sample("iotcore_command_round_trip_seconds_count")
    accepted = await send_command(client, owner, device.device_id, "set_rate", params={"rate": 2})
    command_id = accepted["command_id"]
    async with device_client(settings.broker_host, broker.port, device) as mqtt:
        await mqtt.subscribe(commands_filter(device), qos=1)
        topic, payload = await next_command(mqtt)
        assert topic == device.telemetry_topic.replace("/telemetry", "/commands/set_rate")
        assert payload == {
            "command_id": command_id,
            "name": "set_rate",
            "params": {"rate": 2},
            "expires_at": accepted["expires_at"],
        }
        await wait_status(client, owner, device.device_id, command_id, "sent")
        await mqtt.publish(
            reply_topic(device, command_id),
            orjson.dumps({"ok": True, "result": {"rate": 2}}),
            qos=1,
        )
        done = await wait_status(client, owner, device.device_id, command_id, "succeeded")
    assert done["result"] == {"rate": 2}
    assert done["sent_at"] <= done["completed_at"]
    assert sample("iotcore_commands_total", status="succeeded") == succeeded_before + 1
    assert sample("iotcore_command_round_trip_seconds_count") == round_trips_before + 1
    audit = await owner_conn.fetch(
        "SELECT action, actor FROM audit_log WHERE subject = $1 ORDER BY audit_id", command_id
    )
    assert [a["action"] for a in audit] == ["command_pending", "command_sent", "command_succeeded"]
    assert audit[0]["actor"] == owner.user_id
    # The reply was the answer; once more is a duplicate, recorded and refused.
    async with device_client(settings.broker_host, broker.port, device) as mqtt:
        await mqtt.publish(reply_topic(device, command_id), b'{"ok": false}', qos=1)
    assert await rejects(owner_conn, device.device_id) == ["reply_duplicate"]
    assert (await get_command(client, owner, device.device_id, command_id))["status"] == "succeeded"


async def test_connected_device_gets_new_command_and_a_failure_is_stored(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    async with device_client(settings.broker_host, broker.port, device) as mqtt:
        await mqtt.subscribe(commands_filter(device), qos=1)
        await asyncio.sleep(0.2)  # the SUBSCRIBE's own (empty) delivery is done
        accepted = await send_command(client, owner, device.device_id, "fail")
        _, payload = await next_command(mqtt)
        assert payload["command_id"] == accepted["command_id"]
        await mqtt.publish(
            reply_topic(device, accepted["command_id"]),
            orjson.dumps({"ok": False, "result": {"error": "refused"}}),
            qos=1,
        )
        failed = await wait_status(
            client, owner, device.device_id, accepted["command_id"], "failed"
        )
    assert failed["result"] == {"error": "refused"}


async def test_expired_command_is_never_delivered_and_a_late_reply_is_rejected(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    stale = await send_command(client, owner, device.device_id, "stale", ttl_s=10)
    fresh = await send_command(client, owner, device.device_id, "fresh")
    # The first one's time passes while the device is away (maintain has not run yet).
    await expire_now(owner_conn, stale["command_id"])
    async with device_client(settings.broker_host, broker.port, device) as mqtt:
        await mqtt.subscribe(commands_filter(device), qos=1)
        _, payload = await next_command(mqtt)
        assert payload["command_id"] == fresh["command_id"]  # only the live one
        with pytest.raises(TimeoutError):
            await next_command(mqtt, timeout=1.5)
        await mqtt.publish(reply_topic(device, stale["command_id"]), b'{"ok": true}', qos=1)
    # The late reply ended it as expired (and was recorded as rejected).
    ended = await wait_status(client, owner, device.device_id, stale["command_id"], "expired")
    assert ended["sent_at"] is None and ended["result"] is None
    assert await rejects(owner_conn, device.device_id) == ["reply_expired"]

    # maintain expires what is overdue.
    another = await send_command(client, owner, device.device_id, "later", ttl_s=10)
    await expire_now(owner_conn, another["command_id"])
    assert await expire_due_commands(settings) >= 1
    assert (await get_command(client, owner, device.device_id, another["command_id"]))[
        "status"
    ] == "expired"
    async with device_client(settings.broker_host, broker.port, device) as mqtt:
        await mqtt.subscribe(commands_filter(device), qos=1)
        with pytest.raises(TimeoutError):
            await next_command(mqtt, timeout=1.5)


async def test_a_device_cannot_reply_for_another_nor_read_its_commands(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    owner = await register(client)
    victim = await claimed_device(client, settings, owner)
    intruder = await claimed_device(client, settings, owner)
    accepted = await send_command(client, owner, victim.device_id, "unlock")
    command_id = accepted["command_id"]

    raw = await RawClient.open(settings.broker_host, broker.port)
    code, _ = await raw.connect(
        intruder.device_id, username=intruder.device_id, password=intruder.secret
    )
    assert code == 0
    raw.send(subscribe_packet(1, [(commands_filter(victim), 1), (commands_filter(intruder), 1)]))
    packet = await raw.read()
    assert packet is not None and packet.kind == SUBACK
    assert packet.body[2:] == bytes((0x80, 1))  # the victim's commands refused
    # Its own reply topic with the victim's command id: refused, recorded.
    raw.send(publish_packet(reply_topic(intruder, command_id), b'{"ok": true}', 1, 7))
    packet = await raw.read()
    assert packet is not None and packet.kind == 4 and packet.packet_id == 7  # PUBACK
    # A command id that does not exist: refused, recorded.
    raw.send(publish_packet(reply_topic(intruder, str(uuid.uuid4())), b'{"ok": true}', 1, 8))
    packet = await raw.read()
    assert packet is not None and packet.packet_id == 8
    # Not a reply at all.
    raw.send(publish_packet(reply_topic(intruder, command_id), b'{"ok": "yes"}', 1, 9))
    packet = await raw.read()
    assert packet is not None and packet.packet_id == 9
    # The victim's reply topic: not allowed, the connection ends.
    raw.send(publish_packet(reply_topic(victim, command_id), b'{"ok": true}', 1, 10))
    assert await raw.closed_by_broker()
    raw.close()
    assert await rejects(owner_conn, intruder.device_id) == [
        "reply_wrong_device",
        "reply_unknown_command",
        "reply_invalid",
    ]
    command = await get_command(client, owner, victim.device_id, command_id)
    assert command["status"] == "pending"

    # The victim still gets it, and nobody else did.
    victim_raw = await RawClient.open(settings.broker_host, broker.port)
    await victim_raw.connect(victim.device_id, username=victim.device_id, password=victim.secret)
    victim_raw.send(subscribe_packet(1, [(commands_filter(victim), 1)]))
    assert (await victim_raw.read()).kind == SUBACK  # type: ignore[union-attr]
    packet = await victim_raw.read()
    assert packet is not None and packet.kind == PUBLISH
    assert orjson.loads(packet.payload)["command_id"] == command_id
    victim_raw.close()


async def test_command_events_reach_the_right_tenant_only(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    alice = await register(client)
    bob = await register(client)
    alice_device = await claimed_device(client, settings, alice)
    bob_device = await claimed_device(client, settings, bob)
    alice_stream = await open_stream(client, alice.headers)
    bob_stream = await open_stream(client, bob.headers)
    try:
        mine = await send_command(client, alice, alice_device.device_id, "blink")
        async with device_client(settings.broker_host, broker.port, alice_device) as mqtt:
            await mqtt.subscribe(commands_filter(alice_device), qos=1)
            await next_command(mqtt)
            await mqtt.publish(
                reply_topic(alice_device, mine["command_id"]), b'{"ok": true}', qos=1
            )
            # Three command events, and the device's connect as a presence event among them.
            shown = await read_events(alice_stream, 4, timeout=10)
        events = [e for e in shown if e["event"] == "command"]
        assert [e["event"] for e in events] == ["command"] * 3
        (presence,) = [e for e in shown if e["event"] == "presence"]
        assert presence["data"]["device_id"] == alice_device.device_id
        assert [e["data"]["status"] for e in events] == ["pending", "sent", "succeeded"]
        assert {e["data"]["command_id"] for e in events} == {mine["command_id"]}
        assert events[0]["data"]["device_id"] == alice_device.device_id
        # Bob's stream: his own command is the first thing it shows, none of Alice's.
        theirs = await send_command(client, bob, bob_device.device_id, "blink")
        (event,) = await read_events(bob_stream, 1, timeout=10)
        assert event["event"] == "command" and event["data"]["command_id"] == theirs["command_id"]
    finally:
        alice_stream.close()
        bob_stream.close()


async def test_qos0_subscription_gets_commands_at_qos0_marked_sent_as_they_leave(
    client: Client, settings: Settings, broker: EmbeddedBroker
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    accepted = await send_command(client, owner, device.device_id, "blink")
    raw = await RawClient.open(settings.broker_host, broker.port)
    try:
        await raw.connect(device.device_id, username=device.device_id, password=device.secret)
        raw.send(subscribe_packet(1, [(commands_filter(device), 0)]))
        suback = await raw.read()
        assert suback is not None and suback.kind == SUBACK and suback.body[2:] == b"\x00"
        packet = await raw.read()
        assert packet is not None and packet.kind == PUBLISH
        assert (packet.flags >> 1) & 3 == 0  # never above the granted QoS
        assert orjson.loads(packet.payload)["command_id"] == accepted["command_id"]
        await wait_status(client, owner, device.device_id, accepted["command_id"], "sent")
    finally:
        raw.close()


async def test_replies_postgres_cannot_store_are_refused_not_retried(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    accepted = await send_command(client, owner, device.device_id, "probe")
    topic = reply_topic(device, accepted["command_id"])
    raw = await RawClient.open(settings.broker_host, broker.port)
    try:
        await raw.connect(device.device_id, username=device.device_id, password=device.secret)
        for packet_id, payload in [
            (1, b'{"ok": true, "result": {"a": "nul \\u0000 here"}}'),
            (2, b'{"ok": true, "result": {"a": "raw nul \x00"}}'),
            # Beyond JSON: refused, never a closed connection.
            (3, b'{"ok": true, "result": {"a": NaN}}'),
            (4, b'{"ok": true, "result": {"a": 1e999}}'),
            # An integer beyond 64 bits, read as a float (as in a request body), completes.
            (5, b'{"ok": true, "result": {"a": 123456789012345678901234567890}}'),
        ]:
            raw.send(publish_packet(topic, payload, 1, packet_id))
            ack = await raw.read()
            assert ack is not None and ack.kind == 4 and ack.packet_id == packet_id
    finally:
        raw.close()
    assert await rejects(owner_conn, device.device_id) == ["reply_invalid"] * 4
    command = await get_command(client, owner, device.device_id, accepted["command_id"])
    assert command["status"] == "succeeded" and command["result"] == {"a": 1.2345678901234568e29}


async def test_old_tenants_commands_stay_with_the_old_tenant_after_reset_and_reclaim(
    client: Client,
    settings: Settings,
    platform: Platform,
    broker: EmbeddedBroker,
    owner_conn: Any,
) -> None:
    alice = await register(client)
    bob = await register(client)
    (provisioned,) = await provision(client, settings)
    first = await claim_with_secret(client, alice, provisioned)
    old = await send_command(client, alice, first.device_id, "unlock", params={"door": 1})
    response = await client.post(
        f"/api/v1/devices/{first.device_id}/reset",
        json={"confirmation": "RESET"},
        headers=alice.headers,
    )
    assert response.status == 200, await response.text()
    # The reset ends Alice's open command at once: the device can no longer run it for her.
    ended = await get_command(client, alice, first.device_id, old["command_id"])
    assert ended["status"] == "expired" and ended["completed_at"] is not None
    second = await claim_with_secret(client, bob, provisioned)
    assert second.tenant_id == str(bob.tenant_id) != first.tenant_id

    # A command of Alice's still open for the device (one created before this release, say)
    # is never delivered under Bob: delivery joins the command's tenant to the device's.
    await owner_conn.execute(
        "INSERT INTO commands (tenant_id, device_id, name, params, created_by, expires_at) "
        "VALUES ($1, $2, 'unlock', '{}', $3, now() + interval '1 hour')",
        alice.tenant_id,
        uuid.UUID(second.device_id),
        alice.user_id,
    )
    delivery = ExternalDelivery(platform)
    assert await delivery.service.due(alice.tenant_id, second.device_id, resend=True) == []
    mine = await send_command(client, bob, second.device_id, "blink")
    async with device_client(settings.broker_host, broker.port, second) as mqtt:
        await mqtt.subscribe(commands_filter(second), qos=1)
        _, payload = await next_command(mqtt)
        assert payload["command_id"] == mine["command_id"]
        await wait_status(client, bob, second.device_id, mine["command_id"], "sent")
        with pytest.raises(TimeoutError):
            await next_command(mqtt, timeout=0.5)

    # A reply on the old tenant's topic (a broker without ACL lets the device publish there):
    # refused and recorded, Alice's command untouched, Bob's device's answer not hers.
    old_topic = first.telemetry_topic.replace("/telemetry", f"/replies/{old['command_id']}")
    before = await rejects(owner_conn, second.device_id)
    await delivery.reply(old_topic, orjson.dumps({"ok": True, "result": {"bob": "secret"}}))
    assert await rejects(owner_conn, second.device_id) == [*before, "reply_unknown_command"]
    command = await get_command(client, alice, first.device_id, old["command_id"])
    assert command["status"] == "expired" and command["result"] is None
    # Bob cannot see Alice's command either.
    response = await client.get(
        f"/api/v1/devices/{second.device_id}/commands/{old['command_id']}", headers=bob.headers
    )
    assert response.status == 404


async def test_a_reset_ends_the_devices_open_commands_and_no_others(
    client: Client, settings: Settings, platform: Platform, owner_conn: Any
) -> None:
    alice = await register(client)
    bob = await register(client)
    device = await claimed_device(client, settings, alice)
    other = await claimed_device(client, settings, alice)
    pending = await send_command(client, alice, device.device_id, "unlock")
    sent = await send_command(client, alice, device.device_id, "blink")
    await owner_conn.execute(
        "UPDATE commands SET status = 'sent', sent_at = now() WHERE command_id = $1",
        uuid.UUID(sent["command_id"]),
    )
    done = await send_command(client, alice, device.device_id, "beep")
    await owner_conn.execute(
        "UPDATE commands SET status = 'succeeded', sent_at = now(), completed_at = now(), "
        "result = '{}' WHERE command_id = $1",
        uuid.UUID(done["command_id"]),
    )
    elsewhere = await send_command(client, alice, other.device_id, "unlock")

    # Another tenant's reset of Alice's device is a 404 and ends nothing.
    refused = await client.post(
        f"/api/v1/devices/{device.device_id}/reset",
        json={"confirmation": "RESET"},
        headers=bob.headers,
    )
    assert refused.status == 404
    assert (await get_command(client, alice, device.device_id, pending["command_id"]))[
        "status"
    ] == "pending"

    response = await client.post(
        f"/api/v1/devices/{device.device_id}/reset",
        json={"confirmation": "RESET"},
        headers=alice.headers,
    )
    assert response.status == 200, await response.text()
    after = {
        c["command_id"]: (await get_command(client, alice, device_id, c["command_id"]))["status"]
        for device_id, c in (
            (device.device_id, pending),
            (device.device_id, sent),
            (device.device_id, done),
            (other.device_id, elsewhere),
        )
    }
    assert after == {
        pending["command_id"]: "expired",
        sent["command_id"]: "expired",
        done["command_id"]: "succeeded",  # ended before: untouched
        elsewhere["command_id"]: "pending",  # another device: untouched
    }
    # Each ended command is a `command` event on Alice's live stream.
    entries = await platform.redis.client.xrevrange(
        live_key(platform.redis, alice.tenant_id), count=20
    )
    events = [orjson.loads(f[b"d"]) for _, f in entries if f.get(b"e") == b"command"]
    expired = {e["command_id"] for e in events if e["status"] == "expired"}
    assert expired == {pending["command_id"], sent["command_id"]}


async def test_a_command_created_while_a_reset_commits_is_ended_or_refused(
    client: Client, settings: Settings, database: str
) -> None:
    """The reset holds the device's row until it commits; a command created meanwhile waits
    for it and then finds the device gone (no row: 404), so none is left open."""
    alice = await register(client)
    device = await claimed_device(client, settings, alice)
    sql = {**queries("devices", settings.sql_dir), **queries("commands", settings.sql_dir)}
    url = with_database(SERVICE_URL, database)
    resetting, creating = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        for conn in (resetting, creating):
            await init_connection(conn)
            await conn.execute("BEGIN")
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(alice.tenant_id))
        device_id = uuid.UUID(device.device_id)
        assert await resetting.fetchval(sql["reset"], device_id, alice.tenant_id)
        create = asyncio.create_task(
            creating.fetchrow(sql["create_command"], device_id, "unlock", {}, alice.user_id, 600.0)
        )

        async def waiting_for_the_reset() -> bool:
            return bool(
                await resetting.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND pid = $1",
                    creating.get_server_pid(),
                )
            )

        assert await eventually(waiting_for_the_reset, 10)  # the race is on
        assert await resetting.fetch(sql["expire_open_commands"], device_id) == []
        await resetting.execute("COMMIT")
        assert await create is None  # the device is no longer Alice's
        await creating.execute("COMMIT")
    finally:
        await resetting.close()
        await creating.close()
    response = await client.get(
        f"/api/v1/devices/{device.device_id}/commands", headers=alice.headers
    )
    assert response.status == 404
