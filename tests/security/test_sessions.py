"""Ending a session ends its access tokens at once, not at their expiry: after logout, after
a refresh token is reused (the family is revoked as stolen), and for every other session
after a password change. Other sessions of the same user keep working."""

from __future__ import annotations

import asyncio
import time

from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from tests.support.replicas import second_replica
from tests.support.users import login, register

Client = TestClient  # type: ignore[type-arg]
ME = "/api/v1/auth/me"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _me_status(client: Client, token: str) -> tuple[int, str | None]:
    response = await client.get(ME, headers=_bearer(token))
    body = await response.json()
    return response.status, body.get("error", {}).get("code")


async def test_logout_ends_the_sessions_access_tokens(client: Client) -> None:
    user = await register(client)
    other = await login(client, user.email, user.password)
    assert (await _me_status(client, user.access_token))[0] == 200
    out = await client.post("/api/v1/auth/logout", json={"refresh_token": user.refresh_token})
    assert out.status == 204
    assert await _me_status(client, user.access_token) == (401, "token_revoked")
    # The user's other session is untouched.
    assert (await _me_status(client, other["access_token"]))[0] == 200


async def test_a_reused_refresh_token_ends_the_family_access_tokens(client: Client) -> None:
    user = await register(client)
    first = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    rotated = await first.json()
    assert first.status == 200
    assert (await _me_status(client, rotated["access_token"]))[0] == 200
    reused = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert (await reused.json())["error"]["code"] == "token_reused"
    assert await _me_status(client, rotated["access_token"]) == (401, "token_revoked")
    assert await _me_status(client, user.access_token) == (401, "token_revoked")


async def test_a_password_change_ends_every_other_session(client: Client) -> None:
    user = await register(client)
    other = await login(client, user.email, user.password)
    changed = await client.post(
        "/api/v1/auth/password",
        json={"current_password": user.password, "new_password": "another-long-passphrase-1"},
        headers=_bearer(user.access_token),
    )
    assert changed.status in (200, 204), await changed.text()
    assert await _me_status(client, other["access_token"]) == (401, "token_revoked")
    assert (await _me_status(client, user.access_token))[0] == 200


async def test_logout_ends_the_access_token_on_every_replica(
    client: Client, settings: Settings
) -> None:
    """Each replica remembers for a moment that a session stands (no Redis round trip per
    request); the logout's invalidation reaches the other replica within that moment."""
    user = await register(client)
    async with second_replica(settings) as replica:
        assert (await _me_status(replica, user.access_token))[0] == 200
        out = await client.post("/api/v1/auth/logout", json={"refresh_token": user.refresh_token})
        assert out.status == 204
        ended_at = time.monotonic()
        while True:
            status = await _me_status(replica, user.access_token)
            if status[0] == 401 or time.monotonic() - ended_at > 1.0:
                break
            await asyncio.sleep(0.02)
        assert status == (401, "token_revoked"), "the other replica still accepts the session"
