"""Role changes, removal and password change: the rules of API.md, through the API and in SQL."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.platform.sql import queries
from tests.conftest import REPO_ROOT, SERVICE_URL, with_database
from tests.support.replicas import second_replica
from tests.support.users import RegisteredUser, add_user, login, register

Client = TestClient  # type: ignore[type-arg]
SQL = queries("auth", REPO_ROOT / "sql")


async def patch_role(client: Client, actor: RegisteredUser, target: Any, role: str) -> Any:
    return await client.patch(f"/api/v1/users/{target}", json={"role": role}, headers=actor.headers)


async def error_code(response: Any) -> str:
    code: str = (await response.json())["error"]["code"]
    return code


async def test_owner_changes_roles_and_the_token_acts_with_the_new_role(client: Client) -> None:
    owner = await register(client)
    admin = await add_user(client, owner, "admin")
    assert (await client.get("/api/v1/users", headers=admin.headers)).status == 200
    response = await patch_role(client, owner, admin.user_id, "viewer")
    body = await response.json()
    assert response.status == 200, body
    assert body["role"] == "viewer" and body["user_id"] == str(admin.user_id)
    # The same access token, still within its lifetime, now acts as a viewer.
    assert (await client.get("/api/v1/users", headers=admin.headers)).status == 403
    me = await (await client.get("/api/v1/auth/me", headers=admin.headers)).json()
    assert me["role"] == "viewer"


async def test_last_owner_cannot_be_demoted_or_removed(client: Client) -> None:
    owner = await register(client)
    response = await patch_role(client, owner, owner.user_id, "admin")
    assert response.status == 409 and await error_code(response) == "last_owner"
    response = await client.delete(f"/api/v1/users/{owner.user_id}", headers=owner.headers)
    assert response.status == 409 and await error_code(response) == "last_owner"
    second = await add_user(client, owner, "viewer")
    assert (await patch_role(client, owner, second.user_id, "owner")).status == 200
    # With a second owner the first may step down, and then the second is the last one.
    assert (await patch_role(client, owner, owner.user_id, "viewer")).status == 200
    second_headers = second.headers
    response = await client.delete(f"/api/v1/users/{second.user_id}", headers=second_headers)
    assert response.status == 409 and await error_code(response) == "last_owner"


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    client: Client, owner_conn: Any
) -> None:
    first = await register(client)
    second = await add_user(client, first, "admin")
    assert (await patch_role(client, first, second.user_id, "owner")).status == 200
    results = await asyncio.gather(
        patch_role(client, first, second.user_id, "admin"),
        patch_role(client, second, first.user_id, "admin"),
    )
    # The loser is refused either as the last owner or, demoted already, as an admin.
    statuses = sorted(r.status for r in results)
    assert statuses in ([200, 403], [200, 409]), statuses
    owners = await owner_conn.fetchval(
        "SELECT count(*) FROM users WHERE tenant_id = $1 AND role = 'owner'", first.tenant_id
    )
    assert owners == 1


async def test_concurrent_demotions_in_sql_wait_for_each_other(
    client: Client, database: str
) -> None:
    """The SQL the service runs, in two transactions that really interleave: the second waits
    on the owners' lock and then refuses, instead of both committing a tenant with no owner."""
    first = await register(client)
    second = await add_user(client, first, "admin")
    assert (await patch_role(client, first, second.user_id, "owner")).status == 200
    url = with_database(SERVICE_URL, database)
    one, two = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        for conn in (one, two):
            await conn.execute("BEGIN")
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(first.tenant_id))
        await one.fetch(SQL["lock_owners"])
        assert await one.fetchrow(SQL["change_role"], first.user_id, "admin") is not None

        async def demote_other() -> Any:
            await two.fetch(SQL["lock_owners"])
            return await two.fetchrow(SQL["change_role"], second.user_id, "admin")

        pending = asyncio.create_task(demote_other())
        waiting_pid = two.get_server_pid()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            event = await one.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", waiting_pid
            )
            if event == "Lock":
                break
            await asyncio.sleep(0.02)
        assert event == "Lock", "the second demotion did not wait for the first"
        await one.execute("COMMIT")
        assert await asyncio.wait_for(pending, 10) is None, "the last owner was demoted"
        await two.execute("COMMIT")
    finally:
        await one.close()
        await two.close()


async def test_admins_manage_viewers_only(client: Client) -> None:
    owner = await register(client)
    admin = await add_user(client, owner, "admin")
    other_admin = await add_user(client, owner, "admin")
    viewer = await add_user(client, owner, "viewer")
    for target, role in (
        (other_admin.user_id, "viewer"),
        (owner.user_id, "admin"),
        (admin.user_id, "viewer"),
        (viewer.user_id, "owner"),
    ):
        response = await patch_role(client, admin, target, role)
        assert response.status == 403, (target, role)
        assert await error_code(response) == "forbidden"
    for target in (other_admin.user_id, owner.user_id):
        response = await client.delete(f"/api/v1/users/{target}", headers=admin.headers)
        assert response.status == 403
    response = await patch_role(client, admin, viewer.user_id, "admin")
    assert response.status == 200 and (await response.json())["role"] == "admin"
    viewer2 = await add_user(client, owner, "viewer")
    response = await client.delete(f"/api/v1/users/{viewer2.user_id}", headers=admin.headers)
    assert response.status == 204


async def test_viewers_manage_nobody(client: Client) -> None:
    owner = await register(client)
    viewer = await add_user(client, owner, "viewer")
    other = await add_user(client, owner, "viewer")
    assert (await patch_role(client, viewer, other.user_id, "viewer")).status == 403
    response = await client.delete(f"/api/v1/users/{other.user_id}", headers=viewer.headers)
    assert response.status == 403


async def test_another_tenants_user_is_404(client: Client) -> None:
    alice, bob = await register(client), await register(client)
    bobs_viewer = await add_user(client, bob, "viewer")
    for target in (bob.user_id, bobs_viewer.user_id, "not-a-uuid"):
        assert (await patch_role(client, alice, target, "viewer")).status == 404
        response = await client.delete(f"/api/v1/users/{target}", headers=alice.headers)
        assert response.status == 404
    me = await (await client.get("/api/v1/auth/me", headers=bobs_viewer.headers)).json()
    assert me["role"] == "viewer"


async def test_removal_ends_refresh_and_access_tokens_on_every_replica(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    viewer = await add_user(client, owner, "viewer")
    async with second_replica(settings) as replica:
        assert (await replica.get("/api/v1/devices", headers=viewer.headers)).status == 200
        response = await client.delete(f"/api/v1/users/{viewer.user_id}", headers=owner.headers)
        assert response.status == 204
        removed_at = time.monotonic()
        while True:
            on_replica = await replica.get("/api/v1/devices", headers=viewer.headers)
            if on_replica.status == 401 or time.monotonic() - removed_at > 1.0:
                break
            await asyncio.sleep(0.02)
        assert on_replica.status == 401, "the other replica still accepts a removed user"
        assert await error_code(on_replica) == "token_revoked"
    here = await client.get("/api/v1/devices", headers=viewer.headers)
    assert here.status == 401
    refresh = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": viewer.refresh_token}
    )
    assert refresh.status == 401
    relogin = await client.post(
        "/api/v1/auth/login", json={"email": viewer.email, "password": viewer.password}
    )
    assert relogin.status == 401


async def test_password_change_revokes_other_sessions_only(client: Client) -> None:
    owner = await register(client)
    laptop = await login(client, owner.email, owner.password)
    phone = await login(client, owner.email, owner.password)
    laptop_headers = {"Authorization": f"Bearer {laptop['access_token']}"}
    wrong = await client.post(
        "/api/v1/auth/password",
        json={"current_password": "not-the-password", "new_password": "a-new-long-passphrase"},
        headers=laptop_headers,
    )
    assert wrong.status == 401 and await error_code(wrong) == "invalid_credentials"
    response = await client.post(
        "/api/v1/auth/password",
        json={"current_password": owner.password, "new_password": "a-new-long-passphrase"},
        headers=laptop_headers,
    )
    assert response.status == 204, await response.text()
    for other in (phone["refresh_token"], owner.refresh_token):
        refused = await client.post("/api/v1/auth/refresh", json={"refresh_token": other})
        assert refused.status == 401
    kept = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": laptop["refresh_token"]}
    )
    assert kept.status == 200
    old = await client.post(
        "/api/v1/auth/login", json={"email": owner.email, "password": owner.password}
    )
    assert old.status == 401
    await login(client, owner.email, "a-new-long-passphrase")


async def test_password_change_checks_the_new_password(client: Client) -> None:
    owner = await register(client)
    response = await client.post(
        "/api/v1/auth/password",
        json={"current_password": owner.password, "new_password": "password1234"},
        headers=owner.headers,
    )
    assert response.status == 422
    assert (await response.json())["error"]["details"][0]["field"] == "password"


async def test_administration_is_audited(client: Client, owner_conn: Any) -> None:
    owner = await register(client)
    viewer = await add_user(client, owner, "viewer")
    other = await add_user(client, owner, "viewer")
    await patch_role(client, owner, viewer.user_id, "admin")
    await client.delete(f"/api/v1/users/{other.user_id}", headers=owner.headers)
    await client.post(
        "/api/v1/auth/password",
        json={"current_password": owner.password, "new_password": "a-new-long-passphrase"},
        headers=owner.headers,
    )
    rows = await owner_conn.fetch(
        "SELECT action, actor, subject, details FROM audit_log WHERE tenant_id = $1 "
        "AND action IN ('user_role_changed', 'user_deleted', 'password_changed') "
        "ORDER BY audit_id",
        owner.tenant_id,
    )
    assert [r["action"] for r in rows] == ["user_role_changed", "user_deleted", "password_changed"]
    assert all(r["actor"] == owner.user_id for r in rows)
    assert rows[0]["subject"] == str(viewer.user_id)
    assert json.loads(rows[0]["details"]) == {"from": "viewer", "to": "admin"}
    assert rows[1]["subject"] == str(other.user_id)
    assert "a-new-long-passphrase" not in str(rows[2]["details"])


async def test_new_operations_are_in_the_openapi_document(client: Client) -> None:
    document = await (await client.get("/api/v1/openapi.json")).json()
    assert {"patch", "delete"} <= set(document["paths"]["/api/v1/users/{user_id}"])
    assert "post" in document["paths"]["/api/v1/auth/password"]
