"""`/metrics` and the broker hooks answer on the internal port only; the public port and its
OpenAPI document do not offer them."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio

from iotcore.cli import start_api
from iotcore.config import Settings
from iotcore.platform.context import Platform
from tests.conftest import free_port


@pytest_asyncio.fixture(scope="module")
async def ports(settings: Settings, platform: Platform) -> AsyncIterator[tuple[str, str]]:
    listening = settings.model_copy(update={"http_port": free_port(), "metrics_port": free_port()})
    runner = await start_api(listening, platform)
    try:
        yield (
            f"http://127.0.0.1:{listening.http_port}",
            f"http://127.0.0.1:{listening.metrics_port}",
        )
    finally:
        await runner.cleanup()


async def test_metrics_only_on_the_internal_port(ports: tuple[str, str]) -> None:
    public, internal = ports
    async with aiohttp.ClientSession() as session:
        async with session.get(public + "/metrics") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"
        async with session.get(internal + "/metrics") as response:
            assert response.status == 200
            assert "iotcore_db_pool_connections" in await response.text()


async def test_broker_hooks_only_on_the_internal_port(
    ports: tuple[str, str], settings: Settings
) -> None:
    public, internal = ports
    hook = {"Authorization": f"Bearer {settings.mqtt_hook_token.get_secret_value()}"}
    body = {"clientid": "x", "username": "x", "password": "y", "peerhost": "127.0.0.1"}
    async with aiohttp.ClientSession() as session:
        async with session.post(public + "/api/v1/mqtt/authn", json=body, headers=hook) as r:
            assert r.status == 404
        async with session.post(internal + "/api/v1/mqtt/authn", json=body, headers=hook) as r:
            assert r.status == 200
            assert (await r.json())["result"] == "deny"


async def test_public_openapi_leaves_internal_routes_out(ports: tuple[str, str]) -> None:
    public, _ = ports
    async with (
        aiohttp.ClientSession() as session,
        session.get(public + "/api/v1/openapi.json") as response,
    ):
        paths = (await response.json())["paths"]
    assert "/api/v1/health/ready" in paths
    assert not [p for p in paths if p == "/metrics" or p.startswith("/api/v1/mqtt/")]


async def test_a_serving_api_collects_young_objects_less_often(ports: tuple[str, str]) -> None:
    # start_api tuned the collector once the API was up (server.tune_gc_for_serving).
    assert gc.get_threshold()[0] == 10_000
    assert gc.get_freeze_count() > 0
