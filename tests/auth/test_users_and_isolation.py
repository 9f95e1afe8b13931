"""Roles, the users endpoints, and tenant isolation in SQL (RLS) and through the API."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.support.users import PASSWORD, add_user, register, unique_email

Client = TestClient  # type: ignore[type-arg]


async def test_owner_adds_admin_and_viewer_who_can_log_in(client: Client) -> None:
    owner = await register(client)
    admin = await add_user(client, owner, "admin")
    viewer = await add_user(client, owner, "viewer")
    assert admin.tenant_id == viewer.tenant_id == owner.tenant_id
    who = await (await client.get("/api/v1/auth/me", headers=viewer.headers)).json()
    assert who["role"] == "viewer"


async def test_viewer_cannot_create_or_list_users(client: Client) -> None:
    owner = await register(client)
    viewer = await add_user(client, owner, "viewer")
    create = await client.post(
        "/api/v1/users",
        json={"email": unique_email(), "password": PASSWORD, "role": "viewer"},
        headers=viewer.headers,
    )
    assert create.status == 403
    assert (await create.json())["error"]["code"] == "forbidden"
    assert (await client.get("/api/v1/users", headers=viewer.headers)).status == 403


async def test_admin_cannot_create_an_owner(client: Client) -> None:
    owner = await register(client)
    response = await client.post(
        "/api/v1/users",
        json={"email": unique_email(), "password": PASSWORD, "role": "owner"},
        headers=owner.headers,
    )
    assert response.status == 422


async def test_user_list_paginates_every_user_once(client: Client) -> None:
    owner = await register(client)
    added = {(await add_user(client, owner, "viewer")).user_id for _ in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (
            await client.get("/api/v1/users", params=params, headers=owner.headers)
        ).json()
        seen.extend(item["user_id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 6
    assert {str(u) for u in added} | {str(owner.user_id)} == set(seen)


async def test_bad_cursor_is_422(client: Client) -> None:
    owner = await register(client)
    response = await client.get(
        "/api/v1/users", params={"cursor": "garbage!"}, headers=owner.headers
    )
    assert response.status == 422
    assert (await response.json())["error"]["details"][0]["field"] == "cursor"


async def test_users_endpoints_never_show_another_tenant(client: Client) -> None:
    alice, bob = await register(client), await register(client)
    await add_user(client, bob, "viewer")
    listed = await (await client.get("/api/v1/users", headers=alice.headers)).json()
    assert {item["tenant_id"] for item in listed["items"]} == {str(alice.tenant_id)}
    mine = await (await client.get("/api/v1/auth/me", headers=alice.headers)).json()
    assert mine["tenant"]["tenant_id"] == str(alice.tenant_id)


async def _as_tenant(conn: Any, tenant_id: Any) -> None:
    await conn.execute("SELECT set_config('app.tenant_id', $1, false)", str(tenant_id))


async def test_rls_shows_the_service_role_only_its_tenant(
    client: Client, service_conn: Any
) -> None:
    alice, bob = await register(client), await register(client)
    await _as_tenant(service_conn, alice.tenant_id)
    rows = await service_conn.fetch("SELECT tenant_id FROM users")
    assert rows and {r["tenant_id"] for r in rows} == {alice.tenant_id}
    tenants = await service_conn.fetch("SELECT tenant_id FROM tenants")
    assert [r["tenant_id"] for r in tenants] == [alice.tenant_id]
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await service_conn.execute(
            "INSERT INTO users (tenant_id, email, password_hash, role) "
            "VALUES ($1, $2, 'x', 'viewer')",
            bob.tenant_id,
            unique_email(),
        )
    await _as_tenant(service_conn, "")
    assert await service_conn.fetch("SELECT * FROM users") == []
    assert await service_conn.fetch("SELECT * FROM refresh_tokens") == []
    assert await service_conn.fetch("SELECT * FROM audit_log") == []


async def test_service_role_cannot_bypass_rls_or_own_tables(service_conn: Any) -> None:
    row = await service_conn.fetchrow(
        "SELECT rolbypassrls, rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    assert not row["rolbypassrls"] and not row["rolsuper"]
    owned = await service_conn.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
        "WHERE r.rolname = current_user"
    )
    assert owned == 0
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await service_conn.execute("SET row_security = off; SELECT * FROM users")


async def test_audit_records_logins_without_secrets(client: Client, owner_conn: Any) -> None:
    user = await register(client)
    await client.post(
        "/api/v1/auth/login", json={"email": user.email, "password": "wrong-password-1"}
    )
    await client.post("/api/v1/auth/login", json={"email": user.email, "password": user.password})
    rows = await owner_conn.fetch(
        "SELECT action, details::text AS details FROM audit_log "
        "WHERE tenant_id = $1 ORDER BY audit_id",
        user.tenant_id,
    )
    actions = [r["action"] for r in rows]
    assert actions == ["user_created", "login_failure", "login_success"]
    assert all(user.password not in r["details"] for r in rows)
