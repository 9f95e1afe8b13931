"""Users and tokens through the public API."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from aiohttp.test_utils import TestClient

_numbers = itertools.count(1)
PASSWORD = "correct-horse-battery-staple"


@dataclass
class RegisteredUser:
    user_id: UUID
    tenant_id: UUID
    email: str
    password: str
    access_token: str
    refresh_token: str
    role: str = "owner"
    headers: dict[str, str] = field(default_factory=dict)


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{next(_numbers)}-{uuid.uuid4().hex[:8]}@example.com"


def _user(body: dict[str, Any], password: str, role: str) -> RegisteredUser:
    token = body["access_token"]
    return RegisteredUser(
        user_id=UUID(body["user"]["user_id"]),
        tenant_id=UUID(body["tenant"]["tenant_id"]),
        email=body["user"]["email"],
        password=password,
        access_token=token,
        refresh_token=body["refresh_token"],
        role=role,
        headers={"Authorization": f"Bearer {token}"},
    )


async def register(
    client: TestClient,  # type: ignore[type-arg]
    email: str | None = None,
    password: str | None = None,
    tenant_name: str | None = None,
) -> RegisteredUser:
    password = password or PASSWORD
    response = await client.post(
        "/api/v1/auth/register",
        json={
            "email": email or unique_email("owner"),
            "password": password,
            "tenant_name": tenant_name or f"Tenant {next(_numbers)}",
        },
    )
    body = await response.json()
    assert response.status == 201, body
    return _user(body, password, "owner")


async def login(client: TestClient, email: str, password: str) -> dict[str, Any]:  # type: ignore[type-arg]
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


async def add_user(client: TestClient, owner: RegisteredUser, role: str) -> RegisteredUser:  # type: ignore[type-arg]
    email = unique_email(role)
    response = await client.post(
        "/api/v1/users",
        json={"email": email, "password": PASSWORD, "role": role},
        headers=owner.headers,
    )
    assert response.status == 201, await response.text()
    return _user(await login(client, email, PASSWORD), PASSWORD, role)
