"""Login and registration throttling, JWT key rotation in flight, rehash on login, and no
secret in any log line."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from aiohttp.test_utils import TestClient
from argon2 import PasswordHasher

from iotcore.platform.logging import JsonFormatter
from tests.conftest import ApiFactory
from tests.support.users import PASSWORD, register, unique_email

Client = TestClient  # type: ignore[type-arg]


async def test_failed_logins_are_throttled_with_retry_after(api_with: ApiFactory) -> None:
    client = await api_with(
        login_max_failures=5, login_window_s=60, redis_prefix=f"iottest:{uuid.uuid4().hex}:"
    )
    user = await register(client)
    for _ in range(5):
        wrong = await client.post(
            "/api/v1/auth/login", json={"email": user.email, "password": "wrong-password-1"}
        )
        assert wrong.status == 401
    blocked = await client.post(
        "/api/v1/auth/login", json={"email": user.email, "password": user.password}
    )
    assert blocked.status == 429
    assert (await blocked.json())["error"]["code"] == "rate_limited"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60


async def test_throttle_window_ends(api_with: ApiFactory) -> None:
    client = await api_with(
        login_max_failures=2, login_window_s=1, redis_prefix=f"iottest:{uuid.uuid4().hex}:"
    )
    user = await register(client)
    for _ in range(2):
        await client.post(
            "/api/v1/auth/login", json={"email": user.email, "password": "wrong-pw-123"}
        )
    assert (
        await client.post(
            "/api/v1/auth/login", json={"email": user.email, "password": user.password}
        )
    ).status == 429
    await asyncio.sleep(1.2)
    ok = await client.post(
        "/api/v1/auth/login", json={"email": user.email, "password": user.password}
    )
    assert ok.status == 200


async def test_registrations_are_throttled_per_address(api_with: ApiFactory) -> None:
    client = await api_with(register_max_per_ip=2, redis_prefix=f"iottest:{uuid.uuid4().hex}:")
    statuses = []
    for _ in range(3):
        response = await client.post(
            "/api/v1/auth/register",
            json={"email": unique_email(), "password": PASSWORD, "tenant_name": "T"},
        )
        statuses.append(response.status)
    assert statuses == [201, 201, 429]


async def test_key_rotation_keeps_tokens_working_until_the_old_key_is_dropped(
    api_with: ApiFactory,
) -> None:
    old, new = "old-key-" + "a" * 40, "new-key-" + "b" * 40
    before = await api_with(jwt_keys=f"k1:{old}", jwt_signing_kid="k1")
    user = await register(before)
    old_token = user.access_token
    # Step 1 and 2: the new key joins the ring and signs; tokens from k1 still verify.
    during = await api_with(jwt_keys=f"k1:{old},k2:{new}", jwt_signing_kid="k2")
    headers = {"Authorization": f"Bearer {old_token}"}
    assert (await during.get("/api/v1/auth/me", headers=headers)).status == 200
    fresh = await (
        await during.post(
            "/api/v1/auth/login", json={"email": user.email, "password": user.password}
        )
    ).json()
    fresh_headers = {"Authorization": f"Bearer {fresh['access_token']}"}
    assert (await before.get("/api/v1/auth/me", headers=fresh_headers)).status == 401, (
        "a replica still on the old ring does not know k2: roll the ring out before switching"
    )
    # Step 4: k1 dropped: old tokens stop, new ones keep working.
    after = await api_with(jwt_keys=f"k2:{new}", jwt_signing_kid="k2")
    assert (await after.get("/api/v1/auth/me", headers=headers)).status == 401
    assert (await after.get("/api/v1/auth/me", headers=fresh_headers)).status == 200


async def test_login_rehashes_when_parameters_changed(
    api_with: ApiFactory, owner_conn: Any
) -> None:
    weak = await api_with(argon2_time_cost=1, argon2_memory_kib=8192)
    user = await register(weak)
    stronger = await api_with(argon2_time_cost=2, argon2_memory_kib=16384)
    response = await stronger.post(
        "/api/v1/auth/login", json={"email": user.email, "password": user.password}
    )
    assert response.status == 200
    stored = await owner_conn.fetchval(
        "SELECT password_hash FROM users WHERE user_id = $1", user.user_id
    )
    assert "m=16384,t=2" in stored
    assert not PasswordHasher(time_cost=2, memory_cost=16384, parallelism=1).check_needs_rehash(
        stored
    )


async def test_no_password_or_token_in_logs(api_with: ApiFactory) -> None:
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(JsonFormatter().format(record))

    handler = Capture(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        client = await api_with()
        user = await register(client)
        await client.post(
            "/api/v1/auth/login", json={"email": user.email, "password": "wrong-pass-99"}
        )
        body = await (
            await client.post(
                "/api/v1/auth/login", json={"email": user.email, "password": user.password}
            )
        ).json()
        refreshed = await (
            await client.post("/api/v1/auth/refresh", json={"refresh_token": body["refresh_token"]})
        ).json()
        await client.post("/api/v1/auth/refresh", json={"refresh_token": body["refresh_token"]})
        await client.post("/api/v1/auth/logout", json={"refresh_token": refreshed["refresh_token"]})
        await client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}
        )
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = "\n".join(records)
    assert records, "the flow logged something"
    secrets = [
        user.password,
        "wrong-pass-99",
        body["refresh_token"],
        body["access_token"],
        refreshed["refresh_token"],
        refreshed["access_token"],
        user.access_token,
    ]
    for secret in secrets:
        assert secret not in text
