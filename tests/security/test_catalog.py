"""Tenant isolation as the database catalog states it, checked over every object of the
migrated database (both storages: native partitions, TimescaleDB when present).

Each rule is a query over the catalog (tests/security/catalog.py), not a list of today's
tables, so a table, view or function added by a later migration is checked too. Each rule
also has a test that plants an offending object in a rolled-back transaction and expects the
check to name it: a check that cannot see a violation proves nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from tests.security import catalog


class Planted(Exception):
    """Raised to roll back an owner transaction after a planted object was inspected."""


@pytest_asyncio.fixture(scope="module")
async def service_role(service_conn: Any) -> str:
    role: str = await service_conn.fetchval("SELECT current_user")
    return role


async def _timescaledb(conn: Any) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')"
        )
    )


@pytest_asyncio.fixture(scope="module")
async def populated(owner_conn: Any) -> AsyncIterator[bool]:
    """Telemetry in the database, so that partitions or chunks exist; on TimescaleDB also a
    compressed chunk and a materialised continuous aggregate. Yields whether TimescaleDB is on."""
    now = datetime.now(UTC)
    await owner_conn.execute("SELECT telemetry_ensure_partitions(current_date - 10, 12)")
    await owner_conn.executemany(
        "INSERT INTO telemetry (tenant_id, device_id, metric, ts, value) VALUES ($1,$2,$3,$4,$5)",
        [(uuid.uuid4(), uuid.uuid4(), "m", now - timedelta(days=d), 1.0) for d in (0, 9)],
    )
    timescale = await _timescaledb(owner_conn)
    if timescale:
        await owner_conn.execute(
            "SELECT compress_chunk(c, if_not_compressed => true) "
            "FROM show_chunks('telemetry', older_than => INTERVAL '8 days') c"
        )
        aggregates = await owner_conn.fetch(
            "SELECT format('%I.%I', view_schema, view_name) AS name "
            "FROM timescaledb_information.continuous_aggregates"
        )
        for aggregate in aggregates:
            await owner_conn.execute(
                "CALL refresh_continuous_aggregate($1::regclass, NULL, NULL)", aggregate["name"]
            )
    yield timescale


async def _planted(owner_conn: Any, ddl: str, check: Any, *args: Any) -> list[str]:
    """What `check` reports while `ddl` is applied in an owner transaction (rolled back)."""
    found: list[str] = []
    try:
        async with owner_conn.transaction():
            await owner_conn.execute(ddl)
            found = await check(owner_conn, *args)
            raise Planted
    except Planted:
        pass
    return found


# -- tenant tables: forced row-level security, or no direct access at all -----------------


async def test_the_checks_see_every_kind_of_tenant_relation(
    owner_conn: Any, populated: bool
) -> None:
    names = {r["name"] for r in await catalog.tenant_relations(owner_conn)}
    assert {"tenants", "users", "refresh_tokens", "devices", "telemetry"} <= names
    base = {r["name"] for r in await catalog.base_telemetry_relations(owner_conn)}
    assert len(base) > 2, f"partitions or chunks of telemetry: {base}"
    if populated:
        assert any("compress_hyper" in n for n in base), base
        aggregates = await owner_conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.continuous_aggregates"
        )
        assert aggregates == 0 or any("_materialized_hypertable" in n for n in base), base


async def test_every_tenant_table_has_forced_rls_or_no_service_privilege(
    owner_conn: Any, service_role: str, populated: bool
) -> None:
    found = await catalog.unprotected_tenant_relations_with_service_privileges(
        owner_conn, service_role
    )
    assert found == [], "tenant data the service reaches without row-level security"


async def test_tenant_tables_protected_by_rls_are_all_forced(owner_conn: Any) -> None:
    """Enabled without FORCE leaves the owner (and the SECURITY DEFINER functions) unfiltered
    by accident rather than by a policy; every RLS table here is forced."""
    half = [
        r["name"]
        for r in await catalog.tenant_relations(owner_conn)
        if r["rls"] and not r["forced"]
    ]
    assert half == []


async def test_a_new_tenant_table_granted_without_rls_is_reported(
    owner_conn: Any, service_role: str
) -> None:
    found = await _planted(
        owner_conn,
        "CREATE TABLE planted_things (tenant_id uuid, x int);"
        "GRANT SELECT ON planted_things TO iotcore_app;"
        "CREATE TABLE planted_half (tenant_id uuid);"
        "ALTER TABLE planted_half ENABLE ROW LEVEL SECURITY;"
        "GRANT UPDATE (tenant_id) ON planted_half TO iotcore_app;",
        catalog.unprotected_tenant_relations_with_service_privileges,
        service_role,
    )
    assert found == [
        "planted_half (rls=True, forced=False): ['column UPDATE']",
        "planted_things (rls=False, forced=False): ['SELECT']",
    ]


async def test_a_write_only_sink_that_becomes_readable_is_reported(
    owner_conn: Any, service_role: str
) -> None:
    sink = next(iter(catalog.WRITE_ONLY_SINKS))
    found = await _planted(
        owner_conn,
        f"GRANT SELECT (reason) ON {sink} TO iotcore_app",
        catalog.unprotected_tenant_relations_with_service_privileges,
        service_role,
    )
    assert found == [f"{sink} (rls=False, forced=False): ['INSERT', 'column SELECT']"]


async def test_row_level_policies_for_the_service_filter_on_the_tenant(
    owner_conn: Any, service_role: str
) -> None:
    assert await catalog.service_policies_without_tenant_filter(owner_conn, service_role) == []


async def test_a_policy_letting_the_service_see_everything_is_reported(
    owner_conn: Any, service_role: str
) -> None:
    found = await _planted(
        owner_conn,
        "CREATE POLICY planted_open ON devices FOR SELECT TO PUBLIC USING (true);"
        "CREATE POLICY planted_insert ON users FOR INSERT TO iotcore_app WITH CHECK (true);",
        catalog.service_policies_without_tenant_filter,
        service_role,
    )
    assert [f.split(" ")[0] for f in found] == ["devices.planted_open", "users.planted_insert"]


# -- views in front of telemetry and its derived tables ------------------------------------


async def test_views_over_unprotected_tenant_tables_filter_on_the_tenant(
    owner_conn: Any, service_role: str, populated: bool
) -> None:
    views = await catalog.views_over_unprotected_tenant_relations(owner_conn, service_role)
    names = {v["name"] for v in views}
    assert "telemetry_v" in names
    assert await catalog.unfiltered_tenant_views(owner_conn, service_role) == []


async def test_an_unfiltered_or_unchecked_view_is_reported(
    owner_conn: Any, service_role: str
) -> None:
    found = await _planted(
        owner_conn,
        "CREATE VIEW planted_all AS SELECT metric, count(*) FROM telemetry GROUP BY metric;"
        "GRANT SELECT ON planted_all TO iotcore_app;"
        "CREATE VIEW planted_writable WITH (security_barrier) AS SELECT * FROM telemetry_v;"
        "GRANT INSERT ON planted_writable TO iotcore_app;",
        catalog.unfiltered_tenant_views,
        service_role,
    )
    assert len(found) == 2, found
    assert found[0].startswith("planted_all") and "not security_barrier" in found[0]
    assert "no tenant_id = app_tenant_id() filter" in found[0]
    assert found[1].startswith("planted_writable") and "CHECK OPTION" in found[1]


# -- SECURITY DEFINER functions --------------------------------------------------------------


async def test_security_definer_functions_pin_search_path(
    owner_conn: Any, service_role: str
) -> None:
    functions = await catalog.security_definer_functions(owner_conn)
    assert len(functions) >= 5, "the login and device look-ups are SECURITY DEFINER"
    assert (
        await catalog.definer_functions_without_pinned_search_path(owner_conn, service_role) == []
    )


async def test_a_definer_function_without_search_path_is_reported(
    owner_conn: Any, service_role: str
) -> None:
    found = await _planted(
        owner_conn,
        "CREATE FUNCTION planted_open() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';"
        "CREATE FUNCTION planted_temp_first() RETURNS int LANGUAGE sql SECURITY DEFINER"
        " SET search_path = public AS 'SELECT 1';"
        "REVOKE ALL ON FUNCTION planted_temp_first() FROM PUBLIC;",
        catalog.definer_functions_without_pinned_search_path,
        service_role,
    )
    assert len(found) == 2, found
    assert "no search_path" in found[0] and "executable by PUBLIC" in found[0]
    assert "pg_temp not last" in found[1] and "PUBLIC" not in found[1]


# -- the service role: owns nothing, no powers, no base telemetry ---------------------------


async def test_service_role_owns_nothing(
    owner_conn: Any, service_role: str, populated: bool
) -> None:
    assert await catalog.objects_owned_by_service(owner_conn, service_role) == []


async def test_an_object_owned_by_a_service_group_is_reported(
    owner_conn: Any, service_role: str
) -> None:
    found = await _planted(
        owner_conn,
        "GRANT iotcore_app TO CURRENT_USER;"
        "CREATE SCHEMA planted_schema;"
        "ALTER SCHEMA planted_schema OWNER TO iotcore_app;",
        catalog.objects_owned_by_service,
        service_role,
    )
    assert found == ["schema planted_schema owned by iotcore_app"]


async def test_service_role_has_no_superuser_bypassrls_or_predefined_role(
    owner_conn: Any, service_role: str
) -> None:
    assert await catalog.service_role_powers(owner_conn, service_role) == []
    superuser = await owner_conn.fetchval("SELECT rolname FROM pg_roles WHERE rolsuper LIMIT 1")
    assert await catalog.service_role_powers(owner_conn, superuser) != [], "the check sees powers"


async def test_service_role_cannot_create_objects(owner_conn: Any, service_role: str) -> None:
    assert await catalog.schemas_service_can_create_in(owner_conn, service_role) == []


async def test_service_role_has_no_privilege_on_base_telemetry(
    owner_conn: Any, service_role: str, populated: bool
) -> None:
    assert await catalog.base_telemetry_privileges(owner_conn, service_role) == []


async def test_a_grant_on_a_partition_or_chunk_is_reported(
    owner_conn: Any, service_role: str, populated: bool
) -> None:
    child = await owner_conn.fetchval(
        "SELECT inhrelid::regclass::text FROM pg_inherits "
        "WHERE inhparent = 'telemetry'::regclass ORDER BY 1 LIMIT 1"
    )
    found = await _planted(
        owner_conn,
        f"GRANT SELECT (value) ON {child} TO iotcore_app",
        catalog.base_telemetry_privileges,
        service_role,
    )
    assert found == [f"{child}: ['column SELECT']"]


async def test_service_role_is_denied_every_base_telemetry_relation(
    service_conn: Any, owner_conn: Any, populated: bool
) -> None:
    """What the catalog says, the server does: every base relation refuses the service."""
    for rel in await catalog.base_telemetry_relations(owner_conn):
        if rel["metadata"]:
            continue  # TimescaleDB's catalog, no tenant rows (ops/timescaledb-privileges.sql)
        # TimescaleDB's planner refuses a compressed chunk (or the compressed hypertable)
        # before the privilege check is reached: refused either way, no row comes back.
        refused: Any = (
            asyncpg.PostgresError
            if "compress" in rel["name"]
            else asyncpg.InsufficientPrivilegeError
        )
        with pytest.raises(refused):
            await service_conn.fetch(f"SELECT 1 FROM {rel['name']} LIMIT 1")
