"""ops/backup.sh and ops/restore.sh: a backup of a live database restores into a new one
with every tenant's rows, RLS policies and grants intact; on TimescaleDB also its chunks,
compressed chunks, policies and continuous aggregates. The restore goes to the server the
test database is on (IOT_ADMIN_URL), whichever cluster that is."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.maintenance.jobs import refresh_rollups
from tests.conftest import OWNER_URL, REPO_ROOT, SERVICE_URL, SUPERUSER_URL, with_database
from tests.support.devices import claimed_device
from tests.support.telemetry import load_readings, post_telemetry
from tests.support.users import register

TABLES = ("tenants", "users", "devices", "audit_log", "telemetry", "telemetry_latest")


async def counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
    finally:
        await conn.close()


# On TimescaleDB: chunks (and which are compressed), jobs, and the rollups' rows.
TIMESCALEDB_STATE = {
    "chunks": "SELECT hypertable_name, range_start, is_compressed "
    "FROM timescaledb_information.chunks ORDER BY 1, 2",
    "jobs": "SELECT proc_name, hypertable_name, config::text, schedule_interval "
    "FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL ORDER BY 1, 2",
    "hourly": "SELECT device_id, metric, bucket, sum, count FROM telemetry_hourly ORDER BY 1, 2, 3",
    "daily": "SELECT device_id, metric, bucket, sum, count FROM telemetry_daily ORDER BY 1, 2, 3",
}


async def timescaledb_state(url: str) -> dict[str, list[tuple[Any, ...]]] | None:
    conn = await asyncpg.connect(url)
    try:
        if not await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')"
        ):
            return None
        return {k: [tuple(r) for r in await conn.fetch(q)] for k, q in TIMESCALEDB_STATE.items()}
    finally:
        await conn.close()


async def seed_history(owner_conn: Any, settings: Settings, tenant_id: Any, device_id: str) -> None:
    """Two days of readings 10 days ago, rolled up and (on TimescaleDB) compressed."""
    day0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day0 -= timedelta(days=10)
    await owner_conn.execute("SELECT telemetry_ensure_partitions($1, 2)", day0.date())
    await load_readings(
        owner_conn,
        tenant_id,
        device_id,
        "h",
        [(day0 + timedelta(minutes=15 * i), float(i)) for i in range(192)],
    )
    await refresh_rollups(owner_conn, settings)
    if await owner_conn.fetchval(
        "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')"
    ):
        await owner_conn.execute(
            "SELECT compress_chunk(c, if_not_compressed => true) "
            "FROM show_chunks('telemetry', older_than => now() - INTERVAL '7 days') c"
        )


async def ops_script(
    name: str, *args: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """ops/<name> as an operator runs it, in a thread so as not to block the event loop."""
    return await asyncio.to_thread(
        subprocess.run,
        ["bash", str(REPO_ROOT / "ops" / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_backup_then_restore_into_a_new_database(
    client: TestClient,
    settings: Settings,
    database: str,
    owner_conn: Any,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    for _ in range(2):
        owner = await register(client)
        device = await claimed_device(client, settings, owner)
        assert (await post_telemetry(client, device, {"metrics": {"a": 1, "b": 2}})).status == 202
    await seed_history(owner_conn, settings, owner.tenant_id, device.device_id)
    source = with_database(OWNER_URL, database)
    before = await counts(source)
    assert before["tenants"] >= 2 and before["telemetry"] >= 4 + 192
    timescale_before = await timescaledb_state(source)
    if timescale_before is not None:
        assert any(compressed for _, _, compressed in timescale_before["chunks"])
        assert timescale_before["hourly"] and timescale_before["jobs"]

    dump = tmp_path / "iotcore.dump"
    backup_url = with_database(OWNER_URL, database).replace("iotcore_owner", "iotcore_backup")
    result = await ops_script(
        "backup.sh",
        str(dump),
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "IOT_BACKUP_URL": backup_url},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert dump.stat().st_size > 0

    target = f"{database}_restored"
    # The server the test database is on, not the default socket's.
    restore_env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "IOT_ADMIN_URL": with_database(SUPERUSER_URL, "postgres"),
    }
    if timescale_before is not None:
        # Sessions that would not be in TimescaleDB's restoring mode by the database default
        # timescaledb_pre_restore() sets (a COPY into a chunk then fails: "could not find
        # hypertable with id 1"): restore.sh asks for the mode in every session itself.
        restore_env["PGOPTIONS"] = "-c timescaledb.restoring=off"
    result = await ops_script("restore.sh", str(dump), target, env=restore_env, timeout=300)
    try:
        assert result.returncode == 0, result.stderr
        assert await counts(with_database(OWNER_URL, target)) == before
        assert await timescaledb_state(with_database(OWNER_URL, target)) == timescale_before
        if timescale_before is not None:
            # Out of restoring mode again (timescaledb_post_restore ran): a new session of
            # the restored database has TimescaleDB's hooks on.
            session = await asyncpg.connect(with_database(OWNER_URL, target))
            try:
                assert await session.fetchval("SHOW timescaledb.restoring") == "off"
            finally:
                await session.close()
        # Isolation survived: the service role still sees one tenant at a time.
        conn: Any = await asyncpg.connect(with_database(SERVICE_URL, target))
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('app.tenant_id', $1, true)", str(owner.tenant_id)
                )
                tenants = {r[0] for r in await conn.fetch("SELECT tenant_id FROM users")}
                rows = await conn.fetchval("SELECT count(*) FROM telemetry_v")
                hourly = await conn.fetchval("SELECT sum(count) FROM telemetry_hourly_v")
        finally:
            await conn.close()
        assert tenants == {owner.tenant_id}
        assert rows == 2 + 192
        assert hourly == rows, "the hourly rollup came back complete"
        again = await ops_script("restore.sh", str(dump), target, env=restore_env, timeout=60)
        assert again.returncode == 2, "restoring over an existing database is refused"
    finally:
        # As the superuser: the service role's session above may not have ended yet, and
        # only a member of its role (or a superuser) may end it.
        admin = await asyncpg.connect(with_database(SUPERUSER_URL, "postgres"))
        await admin.execute(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
        await admin.close()
