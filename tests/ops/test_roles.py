"""The iotcore roles come from one file, ops/roles.sql, wherever a cluster is set up: the local
services, the compose database's first start, and the test containers."""

from __future__ import annotations

import asyncpg

from tests.conftest import REPO_ROOT, SUPERUSER_URL
from tests.containers import apply_roles

CALLERS = ("ops/services.sh", "ops/compose/initdb.sh", "tests/containers.py")
# What each role must be: (can log in, bypasses RLS, creates databases, creates roles).
EXPECTED = {
    "iotcore_app": (False, False, False, False),
    "iotcore_owner": (True, False, True, True),
    "iotcore_service": (True, False, False, False),
    "iotcore_backup": (True, True, False, False),
}
ATTRIBUTES = """
SELECT rolname, rolcanlogin, rolbypassrls, rolcreatedb, rolcreaterole, rolpassword IS NOT NULL
FROM pg_authid WHERE rolname = ANY($1::text[])
"""


def test_every_setup_runs_the_one_roles_file() -> None:
    for caller in CALLERS:
        text = (REPO_ROOT / caller).read_text()
        assert "roles.sql" in text, caller
        assert "CREATE ROLE" not in text.upper(), f"{caller} creates roles of its own"
    compose = (REPO_ROOT / "docker-compose.yml").read_text()
    assert "./ops/roles.sql:/iotcore/roles.sql:ro" in compose


async def test_roles_file_creates_the_roles_with_their_attributes_and_memberships() -> None:
    """Run on a cluster that lacks the roles (the existing ones renamed away inside a
    transaction that is rolled back), the file creates each with its password."""
    conn = await asyncpg.connect(SUPERUSER_URL)
    try:
        async with conn.transaction():
            for role in EXPECTED:
                await conn.execute(f"ALTER ROLE {role} RENAME TO {role}_kept_by_test")
            await apply_roles(conn, "a-password-for-the-test")
            rows = await conn.fetch(ATTRIBUTES, list(EXPECTED))
            assert {r["rolname"]: tuple(r)[1:5] for r in rows} == EXPECTED
            assert {r["rolname"]: r[5] for r in rows} == {
                "iotcore_app": False,
                "iotcore_owner": True,
                "iotcore_service": True,
                "iotcore_backup": True,
            }
            members = await conn.fetch(
                "SELECT m.rolname AS member, r.rolname AS role FROM pg_auth_members a "
                "JOIN pg_roles m ON m.oid = a.member JOIN pg_roles r ON r.oid = a.roleid "
                "WHERE m.rolname = ANY($1::text[])",
                list(EXPECTED),
            )
            assert {(m["member"], m["role"]) for m in members} == {
                ("iotcore_service", "iotcore_app"),
                ("iotcore_backup", "pg_read_all_data"),
            }
            assert await conn.fetchval("SELECT current_setting('iotcore.owner_password')") == ""
            raise Rollback
    except Rollback:
        pass
    finally:
        await conn.close()


async def test_roles_file_again_restores_drifted_attributes() -> None:
    conn = await asyncpg.connect(SUPERUSER_URL)
    try:
        async with conn.transaction():
            await conn.execute("ALTER ROLE iotcore_service BYPASSRLS")
            await apply_roles(conn, "not-used-for-existing-roles")
            rows = await conn.fetch(ATTRIBUTES, list(EXPECTED))
            assert {r["rolname"]: tuple(r)[1:5] for r in rows} == EXPECTED
            raise Rollback
    except Rollback:
        pass
    finally:
        await conn.close()


class Rollback(Exception):
    """Leaves the shared cluster's roles as they were."""
