"""API keys: shown once and stored as a hash, act with their role, refused after revocation
(on another replica within a second), after expiry and after their rotation grace."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from iotcore.auth.routes import API_KEYS_KEY
from iotcore.config import Settings
from tests.support.replicas import second_replica
from tests.support.users import PASSWORD, RegisteredUser, add_user, register, unique_email

Client = TestClient  # type: ignore[type-arg]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create_key(
    client: Client, user: RegisteredUser, role: str = "viewer", **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/api-keys",
        json={"name": f"{role} dashboard", "role": role, **extra},
        headers=user.headers,
    )
    body: dict[str, Any] = await response.json()
    assert response.status == 201, body
    return body


async def status_with(client: Client, key: str, path: str = "/api/v1/devices") -> int:
    return (await client.get(path, headers=bearer(key))).status


async def poll_status(client: Client, key: str, expected: int, within_s: float) -> float:
    """Seconds until `key` gets `expected` on `client`; fails after `within_s`."""
    started = time.monotonic()
    while True:
        status = await status_with(client, key)
        elapsed = time.monotonic() - started
        if status == expected:
            return elapsed
        assert elapsed < within_s, f"still {status} after {elapsed:.2f} s"
        await asyncio.sleep(0.02)


async def test_key_is_shown_once_and_stored_only_as_a_hash(client: Client, owner_conn: Any) -> None:
    owner = await register(client)
    created = await create_key(client, owner, "admin")
    key = created["key"]
    assert key.startswith("iotk_") and len(key) == 5 + 43
    assert created["role"] == "admin" and created["expires_at"] is None
    listed = await (await client.get("/api/v1/api-keys", headers=owner.headers)).json()
    assert [item["api_key_id"] for item in listed["items"]] == [created["api_key_id"]]
    assert key not in str(listed) and "key" not in listed["items"][0]
    row = await owner_conn.fetchrow(
        "SELECT * FROM api_keys WHERE api_key_id = $1", created["api_key_id"]
    )
    assert row["key_hash"] == hashlib.sha256(key.encode()).digest()
    assert all(key not in str(value) for value in dict(row).values())


async def test_keys_act_with_their_role_in_their_tenant(client: Client) -> None:
    owner = await register(client)
    viewer_key = (await create_key(client, owner, "viewer"))["key"]
    admin_key = (await create_key(client, owner, "admin"))["key"]
    assert await status_with(client, viewer_key) == 200
    assert await status_with(client, viewer_key, "/api/v1/users") == 403
    listed = await (await client.get("/api/v1/users", headers=bearer(admin_key))).json()
    assert {item["tenant_id"] for item in listed["items"]} == {str(owner.tenant_id)}
    claim = await client.post(
        "/api/v1/devices/claim",
        json={"serial_number": "NOPE-1", "claim_code": "00000-00000"},
        headers=bearer(viewer_key),
    )
    assert claim.status == 403


async def test_keys_never_administer_above_their_role(client: Client) -> None:
    owner = await register(client)
    viewer = await add_user(client, owner, "viewer")
    admin = await add_user(client, owner, "admin")
    admin_key = (await create_key(client, owner, "admin"))["key"]
    viewer_key = (await create_key(client, owner, "viewer"))["key"]
    for target in (owner.user_id, admin.user_id):
        response = await client.patch(
            f"/api/v1/users/{target}", json={"role": "viewer"}, headers=bearer(admin_key)
        )
        assert response.status == 403
    response = await client.post(
        "/api/v1/api-keys", json={"name": "x", "role": "viewer"}, headers=bearer(viewer_key)
    )
    assert response.status == 403
    response = await client.post(
        "/api/v1/users",
        json={"email": unique_email(), "password": PASSWORD, "role": "viewer"},
        headers=bearer(viewer_key),
    )
    assert response.status == 403
    for path, body in (
        ("/api/v1/auth/password", {"current_password": "x", "new_password": "y" * 12}),
    ):
        response = await client.post(path, json=body, headers=bearer(admin_key))
        assert response.status == 403
    assert (await client.get("/api/v1/auth/me", headers=bearer(admin_key))).status == 403
    # Within its role it administers: an admin key manages viewers.
    response = await client.delete(f"/api/v1/users/{viewer.user_id}", headers=bearer(admin_key))
    assert response.status == 204
    response = await client.post(
        "/api/v1/api-keys", json={"name": "owner?", "role": "owner"}, headers=owner.headers
    )
    assert response.status == 422


async def test_unknown_or_malformed_keys_are_401(client: Client) -> None:
    for key in ("iotk_" + "A" * 43, "iotk_", "iotk_" + "x" * 500):
        response = await client.get("/api/v1/devices", headers=bearer(key))
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthenticated"


async def test_revocation_reaches_another_replica_within_a_second(
    client: Client, settings: Settings
) -> None:
    owner = await register(client)
    created = await create_key(client, owner)
    async with second_replica(settings) as replica:
        # The replica has the key in its cache: only the invalidation can stop it.
        assert await status_with(replica, created["key"]) == 200
        assert await status_with(replica, created["key"]) == 200
        response = await client.delete(
            f"/api/v1/api-keys/{created['api_key_id']}", headers=owner.headers
        )
        assert response.status == 204
        elapsed = await poll_status(replica, created["key"], 401, within_s=1.0)
    assert elapsed < 1.0
    assert await status_with(client, created["key"]) == 401
    again = await client.delete(f"/api/v1/api-keys/{created['api_key_id']}", headers=owner.headers)
    assert again.status == 404


async def test_expired_key_is_refused(client: Client, owner_conn: Any) -> None:
    owner = await register(client)
    expires = datetime.now(UTC) + timedelta(hours=1)
    created = await create_key(client, owner, expires_at=expires.isoformat())
    assert created["expires_at"].startswith(expires.strftime("%Y-%m-%dT%H:%M"))
    assert await status_with(client, created["key"]) == 200
    await owner_conn.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE api_key_id = $1",
        created["api_key_id"],
    )
    await poll_status(client, created["key"], 401, within_s=3.0)
    response = await client.get("/api/v1/devices", headers=bearer(created["key"]))
    assert (await response.json())["error"]["code"] == "token_expired"
    past = await client.post(
        "/api/v1/api-keys",
        json={"name": "old", "role": "viewer", "expires_at": "2020-01-01T00:00:00Z"},
        headers=owner.headers,
    )
    assert past.status == 422


async def test_rotation_keeps_the_old_key_until_its_grace_ends(
    client: Client, owner_conn: Any
) -> None:
    owner = await register(client)
    created = await create_key(client, owner)
    old_key = created["key"]
    response = await client.post(
        f"/api/v1/api-keys/{created['api_key_id']}/rotate", headers=owner.headers
    )
    rotated = await response.json()
    assert response.status == 201, rotated
    assert rotated["api_key_id"] == created["api_key_id"] and rotated["key"] != old_key
    assert await status_with(client, old_key) == 200
    assert await status_with(client, rotated["key"]) == 200
    listed = await (await client.get("/api/v1/api-keys", headers=owner.headers)).json()
    grace_end = datetime.fromisoformat(listed["items"][0]["previous_valid_until"])
    assert timedelta(hours=23) < grace_end - datetime.now(UTC) <= timedelta(hours=24)
    # The grace period ends.
    await owner_conn.execute(
        "UPDATE api_keys SET previous_valid_until = now() WHERE api_key_id = $1",
        created["api_key_id"],
    )
    await poll_status(client, old_key, 401, within_s=3.0)
    assert await status_with(client, rotated["key"]) == 200
    # With no grace the replaced key stops at once.
    response = await client.post(
        f"/api/v1/api-keys/{created['api_key_id']}/rotate",
        json={"grace_s": 0},
        headers=owner.headers,
    )
    newest = await response.json()
    assert await status_with(client, rotated["key"]) == 401
    assert await status_with(client, newest["key"]) == 200


async def test_last_use_is_written_in_batches(client: Client, owner_conn: Any) -> None:
    owner = await register(client)
    created = await create_key(client, owner)
    for _ in range(5):
        assert await status_with(client, created["key"]) == 200
    last_used = "SELECT last_used_at FROM api_keys WHERE api_key_id = $1"
    assert await owner_conn.fetchval(last_used, created["api_key_id"]) is None, (
        "a request wrote last_used_at itself"
    )
    flushed = await client.server.app[API_KEYS_KEY].flush_last_used()
    assert flushed >= 1
    used_at = await owner_conn.fetchval(last_used, created["api_key_id"])
    assert used_at is not None and datetime.now(UTC) - used_at < timedelta(minutes=1)
    listed = await (await client.get("/api/v1/api-keys", headers=owner.headers)).json()
    assert listed["items"][0]["last_used_at"] is not None


async def test_another_tenants_key_is_404_and_invisible(
    client: Client, service_conn: Any, owner_conn: Any
) -> None:
    alice, bob = await register(client), await register(client)
    bobs = await create_key(client, bob)
    for method, path in (
        ("POST", f"/api/v1/api-keys/{bobs['api_key_id']}/rotate"),
        ("DELETE", f"/api/v1/api-keys/{bobs['api_key_id']}"),
        ("DELETE", "/api/v1/api-keys/not-a-uuid"),
    ):
        response = await client.request(method, path, headers=alice.headers)
        assert response.status == 404, path
    assert await status_with(client, bobs["key"]) == 200
    flags = await owner_conn.fetchrow(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'api_keys'"
    )
    assert flags["relrowsecurity"] and flags["relforcerowsecurity"]
    async with service_conn.transaction():
        await service_conn.execute(
            "SELECT set_config('app.tenant_id', $1, true)", str(alice.tenant_id)
        )
        assert await service_conn.fetch("SELECT api_key_id FROM api_keys") == []
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await service_conn.fetch("SELECT key_hash FROM api_keys")


async def test_key_administration_is_audited(client: Client, owner_conn: Any) -> None:
    owner = await register(client)
    created = await create_key(client, owner)
    await client.post(f"/api/v1/api-keys/{created['api_key_id']}/rotate", headers=owner.headers)
    await client.delete(f"/api/v1/api-keys/{created['api_key_id']}", headers=owner.headers)
    rows = await owner_conn.fetch(
        "SELECT action, subject, details::text AS details FROM audit_log "
        "WHERE tenant_id = $1 AND action LIKE 'api_key_%' ORDER BY audit_id",
        owner.tenant_id,
    )
    assert [r["action"] for r in rows] == ["api_key_created", "api_key_rotated", "api_key_revoked"]
    assert {r["subject"] for r in rows} == {created["api_key_id"]}
    assert all(created["key"] not in r["details"] for r in rows)
