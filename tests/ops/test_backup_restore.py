"""ops/backup.sh and ops/restore.sh: a backup of a live database restores into a new one
with every tenant's rows, RLS policies and grants intact."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from tests.conftest import CONTAINER_MQTT_URL, OWNER_URL, REPO_ROOT, SERVICE_URL, with_database
from tests.support.devices import claimed_device
from tests.support.telemetry import post_telemetry
from tests.support.users import register

TABLES = ("tenants", "users", "devices", "audit_log", "telemetry", "telemetry_latest")


async def counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
    finally:
        await conn.close()


@pytest.mark.skipif(
    CONTAINER_MQTT_URL is not None,
    reason="ops/restore.sh restores as the local server's superuser; containers have none here",
)
async def test_backup_then_restore_into_a_new_database(
    client: TestClient,
    settings: Settings,
    database: str,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    for _ in range(2):
        owner = await register(client)
        device = await claimed_device(client, settings, owner)
        assert (await post_telemetry(client, device, {"metrics": {"a": 1, "b": 2}})).status == 202
    source = with_database(OWNER_URL, database)
    before = await counts(source)
    assert before["tenants"] >= 2 and before["telemetry"] >= 4

    dump = tmp_path / "iotcore.dump"
    backup_url = with_database(OWNER_URL, database).replace("iotcore_owner", "iotcore_backup")
    result = await asyncio.to_thread(
        subprocess.run,
        ["bash", str(REPO_ROOT / "ops/backup.sh"), str(dump)],
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "IOT_BACKUP_URL": backup_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert dump.stat().st_size > 0

    target = f"{database}_restored"
    result = await asyncio.to_thread(
        subprocess.run,
        ["bash", str(REPO_ROOT / "ops/restore.sh"), str(dump), target],
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        assert result.returncode == 0, result.stderr
        assert await counts(with_database(OWNER_URL, target)) == before
        # Isolation survived: the service role still sees one tenant at a time.
        conn: Any = await asyncpg.connect(with_database(SERVICE_URL, target))
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('app.tenant_id', $1, true)", str(owner.tenant_id)
                )
                tenants = {r[0] for r in await conn.fetch("SELECT tenant_id FROM users")}
                rows = await conn.fetchval("SELECT count(*) FROM telemetry_v")
        finally:
            await conn.close()
        assert tenants == {owner.tenant_id}
        assert rows == 2
        again = await asyncio.to_thread(
            subprocess.run,
            ["bash", str(REPO_ROOT / "ops/restore.sh"), str(dump), target],
            env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 2, "restoring over an existing database is refused"
    finally:
        admin = await asyncpg.connect(OWNER_URL)
        await admin.execute(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
        await admin.close()
