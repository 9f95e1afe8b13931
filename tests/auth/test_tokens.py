"""Register, login, refresh rotation, reuse detection, logout, access-token checks."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import jwt
from aiohttp.test_utils import TestClient

from tests.support.users import PASSWORD, login, register, unique_email

Client = TestClient  # type: ignore[type-arg]


async def me(client: Client, token: str) -> Any:
    return await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})


async def test_register_creates_tenant_owner_and_tokens(client: Client) -> None:
    email = unique_email()
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": email.upper(), "password": PASSWORD, "tenant_name": "Acme"},
    )
    body = await response.json()
    assert response.status == 201, body
    assert body["user"]["email"] == email, "e-mail is normalised to lower case"
    assert body["user"]["role"] == "owner"
    assert body["tenant"]["name"] == "Acme"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert body["user"]["created_at"].endswith("Z")
    assert "password" not in str(body) and "hash" not in str(body)
    who = await me(client, body["access_token"])
    assert (await who.json())["role"] == "owner"


async def test_duplicate_email_is_409(client: Client) -> None:
    user = await register(client)
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": user.email, "password": PASSWORD, "tenant_name": "Again"},
    )
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "already_exists"


async def test_weak_or_short_password_is_422(client: Client) -> None:
    for password in ("password1234", "qwertyuiop", "short"):
        response = await client.post(
            "/api/v1/auth/register",
            json={"email": unique_email(), "password": password, "tenant_name": "Weak"},
        )
        body = await response.json()
        assert response.status == 422, password
        assert body["error"]["details"][0]["field"] == "password"


async def test_login_wrong_password_or_unknown_email_is_401_without_saying_which(
    client: Client,
) -> None:
    user = await register(client)
    wrong = await client.post(
        "/api/v1/auth/login", json={"email": user.email, "password": "not-the-password-1"}
    )
    unknown = await client.post(
        "/api/v1/auth/login", json={"email": unique_email(), "password": PASSWORD}
    )
    assert wrong.status == unknown.status == 401
    wrong_body, unknown_body = await wrong.json(), await unknown.json()
    assert wrong_body["error"]["code"] == unknown_body["error"]["code"] == "invalid_credentials"
    assert wrong_body["error"]["message"] == unknown_body["error"]["message"]


async def test_login_returns_a_working_pair(client: Client) -> None:
    user = await register(client)
    body = await login(client, user.email, user.password)
    assert (await me(client, body["access_token"])).status == 200


async def test_refresh_rotates_and_spends_the_old_token(client: Client) -> None:
    user = await register(client)
    response = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    body = await response.json()
    assert response.status == 200, body
    assert body["refresh_token"] != user.refresh_token
    assert (await me(client, body["access_token"])).status == 200
    again = await client.post("/api/v1/auth/refresh", json={"refresh_token": body["refresh_token"]})
    assert again.status == 200


async def test_spent_refresh_token_revokes_family(client: Client) -> None:
    user = await register(client)
    first = await (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    ).json()
    # The original token is presented again (stolen copy): 401 token_reused ...
    reuse = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert reuse.status == 401
    assert (await reuse.json())["error"]["code"] == "token_reused"
    # ... and the legitimate newest token of the family is dead too.
    newest = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert newest.status == 401


async def test_unknown_refresh_token_is_401(client: Client) -> None:
    response = await client.post("/api/v1/auth/refresh", json={"refresh_token": "nope"})
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_credentials"


async def test_logout_revokes_the_family(client: Client) -> None:
    user = await register(client)
    response = await client.post("/api/v1/auth/logout", json={"refresh_token": user.refresh_token})
    assert response.status == 204
    after = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert after.status == 401


async def test_missing_token_is_401(client: Client) -> None:
    response = await client.get("/api/v1/auth/me")
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthenticated"


def forge(claims: dict[str, Any], key: str, kid: str = "dev", alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def claims_for(user_id: str, tenant_id: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "iotcore",
        "aud": "iotcore-api",
        "sub": user_id,
        "tid": tenant_id,
        "role": "owner",
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return claims


async def test_expired_token_is_401_token_expired(client: Client, settings: Any) -> None:
    user = await register(client)
    key = settings.jwt_key_ring["dev"]
    token = forge(claims_for(str(user.user_id), str(user.tenant_id), exp=int(time.time()) - 5), key)
    response = await me(client, token)
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "token_expired"


async def test_tampered_token_is_401(client: Client) -> None:
    user = await register(client)
    header, payload, signature = user.access_token.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    response = await me(client, tampered)
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthenticated"


async def test_unknown_kid_and_alg_none_are_refused(client: Client, settings: Any) -> None:
    user = await register(client)
    claims = claims_for(str(user.user_id), str(user.tenant_id))
    unknown_kid = forge(claims, settings.jwt_key_ring["dev"], kid="other")
    none_alg = jwt.encode(claims, None, algorithm="none", headers={"kid": "dev"})  # type: ignore[arg-type]
    for token in (unknown_kid, none_alg):
        response = await me(client, token)
        assert response.status == 401


async def test_token_signed_with_another_key_is_refused(client: Client) -> None:
    user = await register(client)
    claims = claims_for(str(user.user_id), str(user.tenant_id))
    response = await me(client, forge(claims, "x" * 48))
    assert response.status == 401


async def test_an_accepted_token_is_refused_once_it_expires(client: Client, settings: Any) -> None:
    """Verified tokens are remembered (the check is costly), each only until its own expiry."""
    user = await register(client)
    key = settings.jwt_key_ring["dev"]
    expires = int(time.time()) + 3
    token = forge(claims_for(str(user.user_id), str(user.tenant_id), exp=expires), key)
    assert (await me(client, token)).status == 200
    while time.time() < expires - 1:  # a request sent just before expiry may arrive after it
        assert (await me(client, token)).status == 200
        await asyncio.sleep(0.1)
    while time.time() < expires:
        await asyncio.sleep(0.05)
    response = await me(client, token)
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "token_expired"
