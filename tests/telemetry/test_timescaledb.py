"""TimescaleDB storage (runs on the TimescaleDB cluster of ops/test.sh; skipped on native
partitions): compressed chunks read through the views, the service role without any
privilege on TimescaleDB's internal objects, and `maintain` applying the settings to the
policies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.maintenance.jobs import refresh_rollups, run_once
from tests.support.devices import DeviceCredentials, claimed_device
from tests.support.telemetry import load_readings
from tests.support.users import RegisteredUser, register

pytestmark = pytest.mark.timescale
Client = TestClient  # type: ignore[type-arg]
DAY0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=12)
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


@pytest.fixture(scope="module", autouse=True)
async def timescale_only(owner_conn: Any) -> None:
    if not await owner_conn.fetchval(
        "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')"
    ):
        pytest.skip("native partitions: the TimescaleDB run of ops/test.sh covers this")


@pytest.fixture(scope="module")
async def seeded(
    client: Client, settings: Settings, owner_conn: Any
) -> tuple[RegisteredUser, DeviceCredentials]:
    """Two days of readings 12 days ago, rolled up, then their chunks compressed."""
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    for metric in ("a", "b"):
        await load_readings(
            owner_conn,
            owner.tenant_id,
            device.device_id,
            metric,
            [(DAY0 + timedelta(minutes=5 * i), float(i)) for i in range(2 * 288)],
        )
    await refresh_rollups(owner_conn, settings)
    return owner, device


async def raw_page(client: Client, owner: RegisteredUser, device: DeviceCredentials) -> Any:
    response = await client.get(
        f"/api/v1/devices/{device.device_id}/telemetry",
        params={
            "from": DAY0.isoformat(),
            "to": (DAY0 + timedelta(days=2)).isoformat(),
            "limit": "1000",
            "metric": "a",
        },
        headers=owner.headers,
    )
    assert response.status == 200, await response.text()
    return await response.json()


async def test_compressed_chunks_read_through_the_views(
    client: Client, owner_conn: Any, service_conn: Any, seeded: Any
) -> None:
    owner, device = seeded
    before = await raw_page(client, owner, device)
    assert len(before["items"]) == 576
    compressed = await owner_conn.fetchval(
        "SELECT count(compress_chunk(c, if_not_compressed => true)) "
        "FROM show_chunks('telemetry', older_than => $1::timestamptz) c",
        DAY0 + timedelta(days=2),
    )
    assert compressed >= 2
    assert await owner_conn.fetchval(
        "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks "
        "WHERE hypertable_name = 'telemetry' AND range_start >= $1 AND range_end <= $2",
        DAY0,
        DAY0 + timedelta(days=2),
    )
    assert await raw_page(client, owner, device) == before
    async with service_conn.transaction():
        await service_conn.execute(
            "SELECT set_config('app.tenant_id', $1, true)", str(owner.tenant_id)
        )
        count = await service_conn.fetchval(
            "SELECT count(*) FROM telemetry_v WHERE device_id = $1 AND ts >= $2 AND ts < $3",
            uuid.UUID(device.device_id),
            DAY0,
            DAY0 + timedelta(days=2),
        )
        assert count == 2 * 576
        # Another tenant's view of the same compressed chunks is empty.
        await service_conn.execute(
            "SELECT set_config('app.tenant_id', $1, true)", str(uuid.uuid4())
        )
        assert await service_conn.fetchval("SELECT count(*) FROM telemetry_v") == 0
        assert await service_conn.fetchval("SELECT count(*) FROM telemetry_hourly_v") == 0


async def internal_relations(owner_conn: Any) -> dict[str, list[str]]:
    """Every relation that holds or exposes telemetry inside TimescaleDB, by kind."""
    chunks = await owner_conn.fetch(
        "SELECT hypertable_name, format('%I.%I', chunk_schema, chunk_name) AS chunk "
        "FROM timescaledb_information.chunks"
    )
    compressed = await owner_conn.fetch(
        "SELECT format('%I.%I', c2.schema_name, c2.table_name) FROM _timescaledb_catalog.chunk c "
        "JOIN _timescaledb_catalog.chunk c2 ON c2.id = c.compressed_chunk_id"
    )
    materialisations = await owner_conn.fetch(
        "SELECT format('%I.%I', materialization_hypertable_schema, "
        "materialization_hypertable_name) FROM timescaledb_information.continuous_aggregates"
    )
    # Everything else TimescaleDB made for these tables: partial and direct views, the
    # compressed hypertable (its catalog tables belong to the superuser and hold no rows of
    # ours).
    internal = await owner_conn.fetch(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname LIKE '\\_timescaledb%' AND c.relkind IN ('r', 'v', 'm', 'p') "
        "AND c.relowner = 'iotcore_owner'::regrole"
    )
    return {
        "chunk": [r["chunk"] for r in chunks if r["hypertable_name"] == "telemetry"],
        "rollup chunk": [r["chunk"] for r in chunks if r["hypertable_name"] != "telemetry"],
        "compressed chunk": [r[0] for r in compressed],
        "materialisation": [r[0] for r in materialisations],
        "internal": [r[0] for r in internal],
        "hypertable or aggregate": ["telemetry", "telemetry_hourly", "telemetry_daily"],
    }


async def test_the_service_role_has_no_privilege_on_any_timescaledb_internal_object(
    owner_conn: Any, service_conn: Any, seeded: Any
) -> None:
    await owner_conn.execute(
        "SELECT compress_chunk(c, if_not_compressed => true) "
        "FROM show_chunks('telemetry', older_than => $1::timestamptz) c",
        DAY0 + timedelta(days=1),
    )
    relations = await internal_relations(owner_conn)
    for kind in ("chunk", "rollup chunk", "compressed chunk", "materialisation", "internal"):
        assert relations[kind], f"no {kind} to check"
    for kind, names in relations.items():
        for name in names:
            granted = [
                p
                for p in PRIVILEGES
                if await service_conn.fetchval(
                    "SELECT has_table_privilege(current_user, $1, $2)", name, p
                )
            ]
            assert granted == [], f"{kind} {name}: {granted}"
            # A compressed chunk (or the compressed hypertable, which expands to them) is
            # refused by TimescaleDB's planner before the privilege check; no row either way.
            refused: Any = (
                asyncpg.PostgresError if "compress" in name else asyncpg.InsufficientPrivilegeError
            )
            with pytest.raises(refused):
                await service_conn.fetch(f"SELECT * FROM {name} LIMIT 1")
    # Nothing can be created in TimescaleDB's schemas either.
    schemas = await service_conn.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE '%timescaledb%' "
        "AND has_schema_privilege(current_user, oid, 'CREATE')"
    )
    assert schemas == []


async def jobs(owner_conn: Any) -> dict[tuple[str, str], Any]:
    rows = await owner_conn.fetch(
        "SELECT proc_name, hypertable_name, config, schedule_interval "
        "FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL"
    )
    return {(r["proc_name"], r["hypertable_name"]): r for r in rows}


async def test_maintain_applies_the_settings_to_the_policies(
    settings: Settings, owner_conn: Any
) -> None:
    changed = settings.model_copy(
        update={
            "telemetry_retention_days": 100,
            "telemetry_compress_after_days": 3,
            "telemetry_rollup_refresh_s": 120,
        }
    )
    report = await run_once(changed)
    assert len(report.policies_changed) == 6, report.policies_changed
    found = await jobs(owner_conn)
    assert '"3 days"' in found[("policy_compression", "telemetry")]["config"]
    for relation in ("telemetry", "telemetry_hourly", "telemetry_daily"):
        assert '"100 days"' in found[("policy_retention", relation)]["config"], relation
    # TimescaleDB 2.20+ lists a continuous aggregate's jobs under the aggregate's own name.
    for relation in ("telemetry_hourly", "telemetry_daily"):
        job = found[("policy_refresh_continuous_aggregate", relation)]
        assert job["schedule_interval"] == timedelta(minutes=2)
    # Unchanged settings change nothing; the defaults come back when the settings do.
    assert (await run_once(changed)).policies_changed == []
    assert len((await run_once(settings)).policies_changed) == 6
    found = await jobs(owner_conn)
    assert '"7 days"' in found[("policy_compression", "telemetry")]["config"]
