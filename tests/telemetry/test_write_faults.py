"""Write-path fault isolation against real PostgreSQL and Mosquitto: a submission the database
refuses for good is recorded (storage_refused, with its SQLSTATE) and sinks nothing else, over
HTTP and MQTT; a message is acked only once stored or recorded; a transient error (Postgres
cut, then read-only as after a fail-over) is retried and loses nothing."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from iotcore.app import create_app
from iotcore.config import Settings
from iotcore.mqtt.consumer import IngestRole
from iotcore.platform.context import Platform
from iotcore.telemetry.ingest.service import TELEMETRY_INGEST_KEY
from tests.conftest import SERVICE_URL, make_settings, read_log, start_iotcore, with_database
from tests.support.devices import DeviceCredentials, claimed_device
from tests.support.ingest import (
    consumer_settings,
    count_rows,
    publish,
    readings,
    wait_ready,
    wait_rows,
)
from tests.support.proxy import CuttableProxy
from tests.support.telemetry import post_telemetry
from tests.support.users import register
from tests.support.waiting import eventually

Client = TestClient  # type: ignore[type-arg]
NOW_MS = lambda: int(time.time() * 1000)  # noqa: E731


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def poison(owner_conn: Any, device: DeviceCredentials) -> str:
    """Make the database refuse every reading of one device, for real: a CHECK constraint
    on the telemetry table (SQLSTATE 23514, check_violation). Returns its name."""
    name = f"poison_{uuid.uuid4().hex[:8]}"
    await owner_conn.execute(
        f"ALTER TABLE telemetry ADD CONSTRAINT {name} "
        f"CHECK (device_id <> '{device.device_id}'::uuid)"
    )
    return name


async def refusals(owner_conn: Any, device_id: str) -> list[tuple[str, str | None]]:
    rows = await owner_conn.fetch(
        "SELECT reason, sqlstate FROM ingest_rejects WHERE device_id = $1 ORDER BY reject_id",
        device_id,
    )
    return [(r["reason"], r["sqlstate"]) for r in rows]


@pytest.fixture
async def lingering_app(database: str, mqtt_broker: str) -> AsyncIterator[tuple[Client, Settings]]:
    """An app whose writer waits 400 ms for a batch to fill: concurrent posts share one."""
    settings = make_settings(
        database,
        mqtt_url=mqtt_broker,
        redis_prefix=f"iottest:{uuid.uuid4().hex}:",
        writer_batch_age_ms=400,
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client, settings


async def test_a_refused_submission_is_recorded_and_the_rest_of_its_batch_is_stored(
    lingering_app: tuple[Client, Settings], owner_conn: Any
) -> None:
    client, settings = lingering_app
    alice, bob = await register(client), await register(client)
    poisoned = await claimed_device(client, settings, alice)
    neighbour = await claimed_device(client, settings, alice)  # same tenant group
    other = await claimed_device(client, settings, bob)  # another tenant
    constraint = await poison(owner_conn, poisoned)
    batches_before = sample("iotcore_writer_batch_rows_count")
    refused_before = sample("iotcore_writer_refused_total", {"sqlstate": "23514"})
    try:
        ts = NOW_MS()
        body = {"points": [{"ts": ts - i, "metrics": {"a": i, "b": i}} for i in range(3)]}
        responses = await asyncio.gather(
            post_telemetry(client, neighbour, body),
            post_telemetry(client, poisoned, body),
            post_telemetry(client, other, body),
        )
        answers = [(r.status, await r.json()) for r in responses]
    finally:
        await owner_conn.execute(f"ALTER TABLE telemetry DROP CONSTRAINT {constraint}")
    # One batch (the fault landed inside it), and only the offender refused.
    assert sample("iotcore_writer_batch_rows_count") - batches_before == 1
    ok = {"accepted": 3, "stored": 6, "duplicates": 0, "rejected": 0}
    assert answers[0] == (202, ok)
    assert answers[2] == (202, ok)
    status, error = answers[1]
    assert status == 422, error
    assert error["error"]["code"] == "storage_refused"
    assert "Retry-After" not in responses[1].headers
    assert await count_rows(owner_conn, neighbour.device_id) == 6
    assert await count_rows(owner_conn, other.device_id) == 6
    assert await count_rows(owner_conn, poisoned.device_id) == 0
    assert await refusals(owner_conn, poisoned.device_id) == [("storage_refused", "23514")]
    assert sample("iotcore_writer_refused_total", {"sqlstate": "23514"}) - refused_before == 1
    # The latest values of the refused device were not written either.
    latest = await owner_conn.fetchval(
        "SELECT count(*) FROM telemetry_latest WHERE device_id = $1", poisoned.device_id
    )
    assert latest == 0


async def _start_role(platform: Platform, settings: Settings) -> IngestRole:
    """An in-process consumer. The module's settings give it a persistent session of its
    own, on a non-shared subscription: no other module's group takes a share of these
    messages, and a new one with the same client id resumes the session."""
    role = IngestRole(platform)
    await role.start()
    deadline = time.monotonic() + 10
    while not role.consumer.connected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert role.consumer.connected
    return role


@pytest.fixture(scope="module")
def settings(database: str, mqtt_broker: str) -> Settings:
    return make_settings(
        database,
        mqtt_url=mqtt_broker,
        mqtt_shared_subscription=False,
        ingest_client_id=f"faults-{uuid.uuid4().hex[:8]}",
    )


async def test_over_mqtt_only_stored_or_recorded_messages_are_acked_and_none_is_lost(
    client: Client, settings: Settings, owner_conn: Any, platform: Platform
) -> None:
    alice, bob = await register(client), await register(client)
    poisoned = await claimed_device(client, settings, alice)
    neighbour = await claimed_device(client, settings, alice)
    other = await claimed_device(client, settings, bob)
    telemetry_check = await poison(owner_conn, poisoned)
    # The rejects table refuses the poisoned device's record too, at first: its messages are
    # then neither stored nor recorded, and must stay unacked.
    rejects_check = f"poison_rejects_{uuid.uuid4().hex[:8]}"
    await owner_conn.execute(
        f"ALTER TABLE ingest_rejects ADD CONSTRAINT {rejects_check} "
        f"CHECK (device_id IS DISTINCT FROM '{poisoned.device_id}'::uuid) NOT VALID"
    )
    first = await _start_role(platform, settings)
    try:
        start = NOW_MS() - 120_000
        total = 300
        await asyncio.gather(
            publish(settings, neighbour.telemetry_topic, readings(total, start)),
            publish(settings, poisoned.telemetry_topic, readings(total, start)),
            publish(settings, other.telemetry_topic, readings(total, start)),
        )
        assert await wait_rows(owner_conn, neighbour.device_id, 2 * total, 30) == 2 * total
        assert await wait_rows(owner_conn, other.device_id, 2 * total, 30) == 2 * total
        assert await count_rows(owner_conn, poisoned.device_id) == 0
        assert await refusals(owner_conn, poisoned.device_id) == []

        # Reconnect: what was not acked comes back (persistent session). The rejects table
        # accepts the record now; the telemetry table still refuses the readings.
        await first.stop()
        await owner_conn.execute(f"ALTER TABLE ingest_rejects DROP CONSTRAINT {rejects_check}")
        duplicates_before = sample(
            "iotcore_ingest_messages_total", {"transport": "mqtt", "outcome": "duplicate"}
        )
        again = await _start_role(platform, settings)
        try:

            async def all_recorded() -> bool:
                return len(await refusals(owner_conn, poisoned.device_id)) >= total

            assert await eventually(all_recorded, 30, every_s=0.1)
            await asyncio.sleep(1)  # anything more would be a second record
            assert (
                await refusals(owner_conn, poisoned.device_id)
                == [("storage_refused", "23514")] * total
            )
            # The healthy devices' messages had been acked: none came back as a duplicate.
            duplicates = sample(
                "iotcore_ingest_messages_total", {"transport": "mqtt", "outcome": "duplicate"}
            )
            assert duplicates == duplicates_before
        finally:
            await again.stop()
        # Recorded means acked: a third session gets nothing back.
        third = await _start_role(platform, settings)
        try:
            await asyncio.sleep(2)
            assert len(await refusals(owner_conn, poisoned.device_id)) == total
        finally:
            await third.stop()
    finally:
        await owner_conn.execute(f"ALTER TABLE telemetry DROP CONSTRAINT {telemetry_check}")
        await owner_conn.execute(
            f"ALTER TABLE ingest_rejects DROP CONSTRAINT IF EXISTS {rejects_check}"
        )
        await first.stop()


def _ready_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health/ready", timeout=2):
            return 200
    except urllib.error.HTTPError as exc:
        return exc.code


async def proxied_service_url(database: str) -> tuple[CuttableProxy, str]:
    """A started proxy to PostgreSQL and the service role's URL of `database` through it."""
    target = urlsplit(SERVICE_URL)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    url = with_database(SERVICE_URL, database).replace(
        f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}"
    )
    return proxy, url


def webhook_settings(database: str, mqtt_broker: str, url: str, **extra: Any) -> Settings:
    """An API on `url` whose webhook answers 503 after 1 s while a write is held."""
    return make_settings(
        database,
        mqtt_url=mqtt_broker,
        database_url=url,
        redis_prefix=f"iottest:{uuid.uuid4().hex}:",
        http_write_timeout_s=1,
        **extra,
    )


@pytest.mark.slow
async def test_a_transient_error_is_retried_and_nothing_is_lost(
    client: Client, settings: Settings, owner_conn: Any, database: str, mqtt_broker: str
) -> None:
    """Postgres cut by the proxy, and back as a read-only server (SQLSTATE 25006, a standby
    during a fail-over), then cut again and back read-write: the consumer and the webhook
    hold their readings and store every one."""
    device = await claimed_device(client, settings, await register(client))
    http_device = await claimed_device(client, settings, await register(client))
    proxy, url = await proxied_service_url(database)
    ingest = consumer_settings(settings, database_url=url)
    process = start_iotcore(ingest, "ingest")
    web = TestClient(TestServer(create_app(webhook_settings(database, mqtt_broker, url))))
    await web.start_server()
    try:
        await wait_ready(ingest.metrics_port)
        total = 3000
        payloads = readings(total, NOW_MS() - 7_200_000)
        await publish(settings, device.telemetry_topic, payloads[:1000])
        assert await wait_rows(owner_conn, device.device_id, 2000, 30) == 2000

        await proxy.cut()
        await owner_conn.execute(
            f"ALTER DATABASE {database} SET default_transaction_read_only = on"
        )
        await proxy.restore()
        await publish(settings, device.telemetry_topic, payloads[1000:])
        # The fault landed: the writer reaches a read-only server, holds its acks and says so.

        async def holding() -> bool:
            return await asyncio.to_thread(_ready_status, ingest.metrics_port) == 503

        assert await eventually(holding, 30, every_s=0.1), read_log(process)
        held = await post_telemetry(web, http_device, {"ts": NOW_MS(), "metrics": {"x": 1}})
        assert held.status == 503
        assert int(held.headers["Retry-After"]) >= 1
        assert await count_rows(owner_conn, device.device_id) == 2000

        await owner_conn.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
        await proxy.cut()  # the fail-over ends: connections move to the new primary
        await proxy.restore()
        stored = await wait_rows(owner_conn, device.device_id, 2 * total, 90)
        assert stored == 2 * total, read_log(process)
        # The webhook's reading stayed queued through its 503 and is stored too.
        assert await wait_rows(owner_conn, http_device.device_id, 1, 30) == 1
    finally:
        await owner_conn.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
        process.kill()
        process.wait(5)
        await web.close()
        await proxy.close()


async def test_the_writer_stops_within_its_limit_while_postgres_is_away(
    client: Client, settings: Settings, owner_conn: Any, database: str, mqtt_broker: str
) -> None:
    """PostgreSQL cut: a device the API has not seen yet gets 503 (its credentials cannot be
    read), a known device's reading is queued and answered 503, and at shutdown the writer,
    unable to write it, stops past its limit without it (it used to retry for ever). Nothing
    is lost: the queued reading was never acknowledged, the acknowledged ones are stored."""
    device = await claimed_device(client, settings, await register(client))
    unseen = await claimed_device(client, settings, await register(client))
    proxy, url = await proxied_service_url(database)
    settings_60s = webhook_settings(database, mqtt_broker, url, device_cache_ttl_s=60)
    web = TestClient(TestServer(create_app(settings_60s)))
    await web.start_server()
    try:
        # Two readings: the first makes the device active, which drops its cached
        # credentials; the second caches them again.
        for n in (1, 2):
            stored = await post_telemetry(web, device, {"ts": NOW_MS() + n, "metrics": {"x": n}})
            assert stored.status == 202
        await proxy.cut()
        refused = await post_telemetry(web, unseen, {"ts": NOW_MS(), "metrics": {"x": 0}})
        assert refused.status == 503
        assert (await refused.json())["error"]["code"] == "unavailable"
        held = await post_telemetry(web, device, {"ts": NOW_MS() + 3, "metrics": {"x": 3}})
        assert held.status == 503  # the fault landed: queued, not written
        writer = web.app[TELEMETRY_INGEST_KEY].writer
        started = time.monotonic()
        await asyncio.wait_for(writer.stop(timeout_s=1), 10)
        assert time.monotonic() - started < 5
        assert await count_rows(owner_conn, device.device_id) == 2
    finally:
        await web.close()
        await proxy.close()
