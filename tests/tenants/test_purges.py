"""Purges as jobs: a device's telemetry (all, or older than a time) and a whole tenant, with
everything derived from it; leftovers checked over the catalog of every table with a
tenant_id, so a table added later cannot be forgotten."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from iotcore.config import Settings
from iotcore.platform.context import Platform
from iotcore.platform.jobs import JobWorker
from iotcore.tenants.purge import Purges, run_worker
from tests.conftest import (
    REPO_ROOT,
    free_port,
    make_settings,
    read_log,
    settings_env,
    start_iotcore,
)
from tests.security.test_mqtt_sessions import EmqxStub
from tests.support.broker import embedded_broker
from tests.support.devices import DeviceCredentials, claimed_device
from tests.support.mqtt import RawClient, raw_client
from tests.support.replicas import second_replica
from tests.support.telemetry import basic, post_telemetry
from tests.support.users import RegisteredUser, add_user, register

Client = TestClient  # type: ignore[type-arg]
NOW = datetime.now(UTC).replace(microsecond=0)


def ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


async def run_jobs(platform: Platform) -> None:
    """What `iotcore maintain` does with the jobs pending now."""
    await run_worker(platform, once=True)


async def job(client: Client, user: RegisteredUser, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/jobs/{job_id}", headers=user.headers)
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


async def purge_device(client: Client, user: RegisteredUser, device_id: str, **extra: Any) -> Any:
    return await client.post(
        f"/api/v1/devices/{device_id}/purge",
        json={"confirmation": "PURGE", **extra},
        headers=user.headers,
    )


async def send(
    client: Client, device: DeviceCredentials, points: list[tuple[datetime, dict[str, float]]]
) -> None:
    body = {"points": [{"ts": ms(ts), "metrics": metrics} for ts, metrics in points]}
    response = await post_telemetry(client, device, body)
    assert response.status == 202, await response.text()


async def latest(client: Client, user: RegisteredUser, device_id: str) -> dict[str, Any]:
    response = await client.get(
        f"/api/v1/devices/{device_id}/telemetry/latest", headers=user.headers
    )
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    metrics: dict[str, Any] = body["metrics"]
    return metrics


async def until_latest(
    client: Client, user: RegisteredUser, device_id: str, metrics: set[str]
) -> None:
    deadline = time.monotonic() + 10
    while set(await latest(client, user, device_id)) != metrics:
        assert time.monotonic() < deadline, await latest(client, user, device_id)
        await asyncio.sleep(0.05)


async def test_device_purge_before_a_time_keeps_newer_readings(
    client: Client, settings: Settings, platform: Platform, owner_conn: Any
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    old, new = NOW - timedelta(days=2), NOW - timedelta(minutes=5)
    await send(
        client, device, [(old, {"temp": 1, "legacy": 7}), (old + timedelta(hours=1), {"temp": 2})]
    )
    await send(client, device, [(new, {"temp": 3, "hum": 40})])
    # The writer updates the cached latest values just after its commit.
    await until_latest(client, owner, device.device_id, {"temp", "legacy", "hum"})
    cut = NOW - timedelta(days=1)
    response = await purge_device(client, owner, device.device_id, before=cut.isoformat())
    accepted = await response.json()
    assert response.status == 202, accepted
    assert (await job(client, owner, accepted["job_id"]))["status"] == "queued"
    await run_jobs(platform)
    done = await job(client, owner, accepted["job_id"])
    assert done["status"] == "done" and done["kind"] == "purge_device", done
    assert done["progress"]["deleted"]["telemetry"] == 3
    rows = await owner_conn.fetch(
        "SELECT metric, ts FROM telemetry WHERE device_id = $1 ORDER BY metric",
        UUID(device.device_id),
    )
    assert [(r["metric"], r["ts"]) for r in rows] == [("hum", new), ("temp", new)]
    # The latest value of a metric with only older readings went; newer ones stay.
    assert set(await latest(client, owner, device.device_id)) == {"temp", "hum"}
    audit = await owner_conn.fetchrow(
        "SELECT actor, action, subject, details FROM operator_audit WHERE job_id = $1",
        UUID(accepted["job_id"]),
    )
    assert audit["action"] == "device_purged" and audit["actor"] == f"user:{owner.user_id}"
    assert json.loads(audit["details"])["deleted"]["telemetry"] == 3


async def test_device_purge_deletes_every_derived_copy(
    client: Client, settings: Settings, platform: Platform, owner_conn: Any
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    await send(client, device, [(NOW - timedelta(minutes=m), {"temp": m}) for m in range(1, 6)])
    await owner_conn.execute(
        "INSERT INTO ingest_rejects (tenant_id, device_id, reason) VALUES ($1, $2, 'bad')",
        owner.tenant_id,
        UUID(device.device_id),
    )
    redis = platform.redis.client
    device_keys = [
        k async for k in redis.scan_iter(match=f"{settings.redis_prefix}latest*{device.device_id}*")
    ]
    assert device_keys, "the writer keeps latest values in Redis"
    response = await purge_device(client, owner, device.device_id)
    job_id = (await response.json())["job_id"]
    await run_jobs(platform)
    done = await job(client, owner, job_id)
    assert done["status"] == "done"
    assert done["progress"]["deleted"] == {"telemetry": 5, "latest": 1, "rejects": 1}
    for table in ("telemetry", "telemetry_latest", "ingest_rejects"):
        count = await owner_conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE device_id = $1", UUID(device.device_id)
        )
        assert count == 0, table
    for key in device_keys:
        assert not await redis.exists(key), key
    assert await latest(client, owner, device.device_id) == {}
    page = await client.get(
        f"/api/v1/devices/{device.device_id}/telemetry",
        params={"metric": "temp"},
        headers=owner.headers,
    )
    assert (await page.json())["items"] == []


async def test_purges_are_refused_without_confirmation_or_rights(
    client: Client, settings: Settings
) -> None:
    owner, stranger = await register(client, tenant_name="Acme Purge"), await register(client)
    viewer = await add_user(client, owner, "viewer")
    admin = await add_user(client, owner, "admin")
    device = await claimed_device(client, settings, owner)
    response = await client.post(
        f"/api/v1/devices/{device.device_id}/purge",
        json={"confirmation": "purge"},
        headers=owner.headers,
    )
    assert response.status == 422
    assert (await purge_device(client, viewer, device.device_id)).status == 403
    assert (await purge_device(client, stranger, device.device_id)).status == 404
    wrong = await client.delete(
        "/api/v1/tenant", json={"confirmation": "Acme"}, headers=owner.headers
    )
    assert wrong.status == 422
    for user in (admin, viewer):
        refused = await client.delete(
            "/api/v1/tenant", json={"confirmation": "Acme Purge"}, headers=user.headers
        )
        assert refused.status == 403
    key = await client.post(
        "/api/v1/api-keys", json={"name": "k", "role": "admin"}, headers=owner.headers
    )
    api_key = (await key.json())["key"]
    refused = await client.delete(
        "/api/v1/tenant",
        json={"confirmation": "Acme Purge"},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert refused.status == 403
    accepted = await purge_device(client, owner, device.device_id)
    job_id = (await accepted.json())["job_id"]
    again = await purge_device(client, owner, device.device_id)
    assert (await again.json())["job_id"] == job_id, "a repeated request joins the pending job"
    hidden = await client.get(f"/api/v1/jobs/{job_id}", headers=stranger.headers)
    assert hidden.status == 404


async def tenant_leftovers(owner_conn: Any, tenant_id: UUID) -> dict[str, int]:
    """Rows naming the tenant in every relation of the catalog with a tenant_id column."""
    relations = await owner_conn.fetch(
        """
        SELECT c.oid::regclass::text AS name
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
                            AND NOT a.attisdropped AND a.atttypid = 'uuid'::regtype
        WHERE c.relkind IN ('r', 'p', 'm', 'f')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        """
    )
    assert len(relations) >= 8, [r["name"] for r in relations]
    found = {}
    for relation in relations:
        count = await owner_conn.fetchval(
            f"SELECT count(*) FROM {relation['name']} WHERE tenant_id = $1", tenant_id
        )
        found[relation["name"]] = count
    return found


async def test_tenant_purge_leaves_no_row_key_or_session_behind(
    client: Client, settings: Settings, platform: Platform, owner_conn: Any
) -> None:
    owner = await register(client, tenant_name="Doomed Ltd")
    admin = await add_user(client, owner, "admin")
    other = await register(client)
    devices = [await claimed_device(client, settings, owner) for _ in range(2)]
    kept = await claimed_device(client, settings, other)
    for device in (*devices, kept):
        await send(
            client,
            device,
            [(NOW - timedelta(minutes=m), {"temp": m, "hum": 2}) for m in range(1, 4)],
        )
    # A device the tenant reset: its readings stay with the tenant until the purge.
    former = await claimed_device(client, settings, owner)
    await send(client, former, [(NOW - timedelta(minutes=1), {"temp": 1})])
    reset = await client.post(
        f"/api/v1/devices/{former.device_id}/reset",
        json={"confirmation": "RESET"},
        headers=owner.headers,
    )
    assert reset.status == 200
    await owner_conn.execute(
        "INSERT INTO ingest_rejects (tenant_id, device_id, reason) VALUES ($1, $2, 'bad')",
        owner.tenant_id,
        UUID(devices[0].device_id),
    )
    created = await client.post(
        "/api/v1/api-keys", json={"name": "dash", "role": "viewer"}, headers=owner.headers
    )
    api_key = {"Authorization": f"Bearer {(await created.json())['key']}"}
    before = await tenant_leftovers(owner_conn, owner.tenant_id)
    assert sum(before.values()) > 0
    others_before = await tenant_leftovers(owner_conn, other.tenant_id)

    async with second_replica(settings) as replica:
        for headers in (owner.headers, admin.headers, api_key):
            assert (await replica.get("/api/v1/devices", headers=headers)).status == 200
        response = await client.delete(
            "/api/v1/tenant", json={"confirmation": "Doomed Ltd"}, headers=owner.headers
        )
        accepted = await response.json()
        assert response.status == 202, accepted
        progress = await job(client, owner, accepted["job_id"])
        assert progress["kind"] == "purge_tenant" and progress["status"] == "queued"
        await run_jobs(platform)
        for headers in (owner.headers, admin.headers, api_key):
            started = time.monotonic()
            while (await replica.get("/api/v1/devices", headers=headers)).status != 401:
                assert time.monotonic() - started < 1.0, "a replica still accepts the tenant"
                await asyncio.sleep(0.02)

    leftovers = await tenant_leftovers(owner_conn, owner.tenant_id)
    assert {name: n for name, n in leftovers.items() if n} == {}
    assert await tenant_leftovers(owner_conn, other.tenant_id) == others_before
    keys = [k async for k in platform.redis.client.scan_iter(match=f"*{owner.tenant_id}*")]
    assert keys == []
    # Its devices are unclaimed, their secrets revoked: they cannot send any more.
    for device in devices:
        row = await owner_conn.fetchrow(
            "SELECT tenant_id, status, secret_hash FROM devices WHERE device_id = $1",
            UUID(device.device_id),
        )
        assert (row["tenant_id"], row["status"], row["secret_hash"]) == (None, "unclaimed", None)
        refused = await client.post(
            "/api/v1/telemetry",
            json={"metrics": {"temp": 1}},
            headers=basic(device.device_id, device.secret),
        )
        assert refused.status == 401
    refresh = await client.post("/api/v1/auth/refresh", json={"refresh_token": owner.refresh_token})
    assert refresh.status == 401
    login = await client.post(
        "/api/v1/auth/login", json={"email": owner.email, "password": owner.password}
    )
    assert login.status == 401
    audit = await owner_conn.fetchrow(
        "SELECT actor, subject, details FROM operator_audit WHERE job_id = $1",
        UUID(accepted["job_id"]),
    )
    details = json.loads(audit["details"])
    assert (
        audit["actor"] == f"user:{owner.user_id}"
        and audit["subject"] == f"tenant:{owner.tenant_id}"
    )
    assert details["name"] == "Doomed Ltd"
    assert details["deleted"]["telemetry"] == 3 * 2 * 2 + 1
    assert details["deleted"]["devices_unclaimed"] == 2
    finished = await owner_conn.fetchrow(
        "SELECT tenant_id, status FROM jobs WHERE job_id = $1", UUID(accepted["job_id"])
    )
    assert (finished["tenant_id"], finished["status"]) == (None, "done")


async def _rows(owner_conn: Any, device_id: str) -> int:
    return int(
        await owner_conn.fetchval(
            "SELECT count(*) FROM telemetry WHERE device_id = $1", UUID(device_id)
        )
    )


async def test_a_purge_killed_half_way_resumes_and_completes(
    client: Client, settings: Settings, owner_conn: Any
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    total = 3000
    await owner_conn.execute(
        "INSERT INTO telemetry (tenant_id, device_id, metric, ts, value) "
        "SELECT $1, $2, 'm', now() - i * interval '1 second', i FROM generate_series(1, $3) i",
        owner.tenant_id,
        UUID(device.device_id),
        total,
    )
    slow = settings.model_copy(
        update={"purge_batch_rows": 50, "job_batch_pause_s": 0.05, "job_lease_s": 2}
    )
    process = start_iotcore(slow, "purge", "device", device.device_id)
    try:
        deadline = time.monotonic() + 60
        job_id = None
        while time.monotonic() < deadline:
            row = await owner_conn.fetchrow(
                "SELECT job_id, progress FROM jobs WHERE params->>'device_id' = $1",
                device.device_id,
            )
            deleted = (
                json.loads(row["progress"]).get("deleted", {}).get("telemetry", 0) if row else 0
            )
            if deleted >= 200:
                job_id = row["job_id"]
                break
            assert process.poll() is None, read_log(process)
            await asyncio.sleep(0.02)
        assert job_id is not None, read_log(process)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    # The fault landed mid-way: the job is held by a dead worker, readings are left.
    state = await owner_conn.fetchrow("SELECT status, progress FROM jobs WHERE job_id = $1", job_id)
    assert state["status"] == "running"
    left = await _rows(owner_conn, device.device_id)
    assert 0 < left < total
    assert json.loads(state["progress"])["deleted"]["telemetry"] == total - left
    # Another worker takes it over once the lease runs out and finishes it.
    deadline = time.monotonic() + 30
    while not await owner_conn.fetchval(
        "SELECT lease_until < now() FROM jobs WHERE job_id = $1", job_id
    ):
        assert time.monotonic() < deadline, "the dead worker's lease never ran out"
        await asyncio.sleep(0.1)
    worker = start_iotcore(slow, "maintain", "--once")
    assert worker.wait(120) == 0, read_log(worker)
    state = await owner_conn.fetchrow(
        "SELECT status, progress, attempts FROM jobs WHERE job_id = $1", job_id
    )
    assert state["status"] == "done", read_log(worker)
    assert state["attempts"] == 2
    assert json.loads(state["progress"])["deleted"]["telemetry"] == total
    assert await _rows(owner_conn, device.device_id) == 0


def test_cli_purge_shows_a_progress_bar_on_a_terminal(settings: Settings) -> None:
    asyncio.run(_seed_tenant_for_cli(settings))
    tenant_id = _CLI_TENANT[0]
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "iotcore.cli", "purge", "tenant", str(tenant_id), "--yes"],
        env=settings_env(settings),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert process.wait(60) == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    assert "\r[" in text and "#" in text, text
    assert "purge done" in text, text


_CLI_TENANT: list[UUID] = []


async def _seed_tenant_for_cli(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_owner_url)
    try:
        tenant_id = await conn.fetchval(
            "INSERT INTO tenants (name) VALUES ('cli') RETURNING tenant_id"
        )
        await conn.execute(
            "INSERT INTO users (tenant_id, email, password_hash, role) "
            "VALUES ($1, $2, 'x', 'owner')",
            tenant_id,
            f"cli-{tenant_id}@example.com",
        )
        _CLI_TENANT.append(tenant_id)
    finally:
        await conn.close()


def test_runbook_purges_with_the_commands_not_sql() -> None:
    text = (REPO_ROOT / "runbooks" / "retention-and-purge.md").read_text()
    assert "iotcore purge tenant" in text and "iotcore purge device" in text
    for statement in ("DELETE FROM", "UPDATE ", "TRUNCATE", "DROP "):
        assert statement not in text, statement


async def test_one_job_is_run_by_one_worker_at_a_time(
    client: Client, settings: Settings, platform: Platform, owner_conn: Any
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    response = await purge_device(client, owner, device.device_id)
    job_id = UUID((await response.json())["job_id"])
    first, second = (JobWorker(settings, Purges(platform).handlers()) for _ in range(2))
    for worker in (first, second):
        await worker.start()
    try:
        claimed = await first.pool.fetchrow(
            first.sql["claim"], first.worker_id, first.lease, job_id
        )
        assert claimed is not None
        # Held under a live lease: the other worker cannot take it, by id or otherwise.
        assert await second.run_one(job_id) is None
        other = await second.run_one()  # another test's job may be pending, never this one
        assert other is None or other.job_id != job_id
        # The lease runs out (the first worker died): the other takes it over and finishes.
        await owner_conn.execute(
            "UPDATE jobs SET lease_until = now() - interval '1 second' WHERE job_id = $1", job_id
        )
        taken = await second.run_one(job_id)
        assert taken is not None and taken.attempts == 2
        state = await owner_conn.fetchrow(
            "SELECT status, lease_owner FROM jobs WHERE job_id = $1", job_id
        )
        assert (state["status"], state["lease_owner"]) == ("done", None)
    finally:
        for worker in (first, second):
            await worker.close()


async def test_tenant_purge_ends_live_mqtt_sessions_and_kicks_emqx(
    client: Client, settings: Settings, platform: Platform, database: str
) -> None:
    # The embedded broker (single node): the session of a device of the purged tenant ends.
    async with embedded_broker(platform) as broker:
        owner = await register(client, tenant_name="Connected Ltd")
        device = await claimed_device(client, settings, owner)
        mqtt = await RawClient.open("127.0.0.1", broker.port)
        code, _ = await mqtt.connect(
            device.device_id, username=device.device_id, password=device.secret
        )
        assert code == 0
        response = await client.delete(
            "/api/v1/tenant", json={"confirmation": "Connected Ltd"}, headers=owner.headers
        )
        assert response.status == 202
        await run_jobs(platform)
        assert await mqtt.closed_by_broker(), "the session outlived the tenant"
        async with raw_client("127.0.0.1", broker.port) as again:
            code, _ = await again.connect(
                device.device_id, username=device.device_id, password=device.secret
            )
            assert code != 0, "the revoked secret connected again"
    # EMQX (production): the purge kicks each device through the REST API.
    stub = EmqxStub("iotcore-kicker", "s" * 40)
    server = TestServer(stub.app(), port=free_port())
    await server.start_server()
    emqx_settings = make_settings(
        database,
        emqx_api_url=str(server.make_url("")).rstrip("/"),
        emqx_api_key="iotcore-kicker",
        emqx_api_secret="s" * 40,
    )
    emqx_platform = Platform.from_settings(emqx_settings)
    await emqx_platform.start()
    try:
        owner = await register(client, tenant_name="Kicked Ltd")
        devices = [await claimed_device(client, settings, owner) for _ in range(2)]
        response = await client.delete(
            "/api/v1/tenant", json={"confirmation": "Kicked Ltd"}, headers=owner.headers
        )
        assert response.status == 202
        await run_jobs(emqx_platform)
    finally:
        await emqx_platform.close()
        await server.close()
    kicked = {path for method, path, _, _ in stub.requests if method == "DELETE"}
    assert kicked == {f"/api/v5/clients/{d.device_id}" for d in devices}
