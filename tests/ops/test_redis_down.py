"""With Redis unreachable, as runbooks/redis-down.md says: readiness names Redis, HTTP
telemetry is still accepted and stored (rate limits fail open by default), and what cannot
work without Redis (login and registration throttles) answers 503 with Retry-After, not 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from iotcore.app import create_app
from iotcore.config import Settings
from tests.conftest import free_port
from tests.support.devices import claimed_device
from tests.support.telemetry import post_telemetry, stored_rows
from tests.support.users import PASSWORD, register

Client = TestClient  # type: ignore[type-arg]


@pytest_asyncio.fixture(scope="module")
async def without_redis(settings: Settings) -> AsyncIterator[Client]:
    """A second replica on the same database whose Redis is down (nothing listens there)."""
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with TestClient(TestServer(create_app(down))) as replica:
        yield replica


async def test_readiness_names_redis(without_redis: Client) -> None:
    response = await without_redis.get("/api/v1/health/ready")
    body = await response.json()
    assert response.status == 503
    assert body["checks"]["redis"].startswith("failing")
    assert body["checks"]["postgres"] == "ok"


async def test_http_telemetry_is_accepted_and_stored_fail_open(
    client: Client, settings: Settings, without_redis: Client, owner_conn: Any
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    response = await post_telemetry(without_redis, device, {"metrics": {"during_outage": 1}})
    assert response.status == 202, await response.text()
    assert [row[0] for row in await stored_rows(owner_conn, device.device_id)] == ["during_outage"]


async def test_login_and_registration_are_unavailable_not_broken(
    client: Client, without_redis: Client
) -> None:
    owner = await register(client)
    login = await without_redis.post(
        "/api/v1/auth/login", json={"email": owner.email, "password": PASSWORD}
    )
    assert login.status == 503
    assert (await login.json())["error"]["code"] == "unavailable"
    assert login.headers["Retry-After"]
    registration = await without_redis.post(
        "/api/v1/auth/register",
        json={"email": "outage@example.com", "password": PASSWORD, "tenant_name": "Outage"},
    )
    assert registration.status == 503
