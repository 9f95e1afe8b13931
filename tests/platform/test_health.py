"""Liveness and readiness: 503 names the failing check within 5 s, 200 again on recovery."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from iotcore.app import create_app
from iotcore.config import Settings
from iotcore.platform.migrations import Migrator
from tests.conftest import SERVICE_URL, free_port, make_settings, with_database
from tests.support.proxy import CuttableProxy

Client = TestClient  # type: ignore[type-arg]


async def test_live_answers_ok(client: Client) -> None:
    response = await client.get("/api/v1/health/live")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_ready_when_postgres_redis_and_migrations_are_fine(client: Client) -> None:
    response = await client.get("/api/v1/health/ready")
    body = await response.json()
    assert response.status == 200, body
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["migrations"] == "ok"


async def test_metrics_count_requests_by_route_template(client: Client) -> None:
    await client.get("/api/v1/health/live")
    text = await (await client.get("/metrics")).text()
    assert 'iotcore_http_requests_total{method="GET",route="/api/v1/health/live",status="200"}' in (
        text
    )
    assert "iotcore_http_request_duration_seconds_bucket" in text


async def wait_for_status(client: Client, status: int, within_s: float) -> tuple[float, Any]:
    started = time.monotonic()
    body: Any = None
    while time.monotonic() - started < within_s:
        response = await client.get("/api/v1/health/ready")
        body = await response.json()
        if response.status == status:
            return time.monotonic() - started, body
        await asyncio.sleep(0.1)
    raise AssertionError(f"/ready did not answer {status} within {within_s}s; last: {body}")


@pytest.fixture
def private_redis() -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A Redis of this test's own, so the test can really stop and start it."""
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL)]
    time.sleep(0.3)
    yield port, processes
    for process in processes:
        process.kill()
        process.wait()


@pytest.fixture
async def app_with(database: str) -> AsyncIterator[Any]:
    clients: list[Client] = []

    async def build(settings: Settings) -> Client:
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.close()


async def test_ready_turns_503_when_redis_stops_and_200_when_it_returns(
    database: str, private_redis: tuple[int, list[subprocess.Popen[bytes]]], app_with: Any
) -> None:
    port, processes = private_redis
    client = await app_with(make_settings(database, redis_url=f"redis://127.0.0.1:{port}/0"))
    await wait_for_status(client, 200, 5)

    processes[0].kill()
    processes[0].wait()
    took, body = await wait_for_status(client, 503, 5)
    assert body["checks"]["redis"].startswith("failing")
    assert body["checks"]["postgres"] == "ok"
    assert took < 5

    processes.append(
        subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
    )
    await wait_for_status(client, 200, 10)


async def test_ready_turns_503_when_postgres_is_cut_and_200_when_it_returns(
    database: str, app_with: Any
) -> None:
    target = urlsplit(SERVICE_URL)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    try:
        url = with_database(SERVICE_URL, database).replace(
            f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}"
        )
        client = await app_with(make_settings(database, database_url=url))
        await wait_for_status(client, 200, 5)

        await proxy.cut()
        took, body = await wait_for_status(client, 503, 5)
        assert body["checks"]["postgres"].startswith("failing")
        assert took < 5

        await proxy.restore()
        await wait_for_status(client, 200, 10)
    finally:
        await proxy.close()


async def test_ready_is_503_while_a_migration_is_pending(database: str, app_with: Any) -> None:
    settings = make_settings(database)
    Migrator(settings.database_owner_url, settings.migrations_dir).down(1)
    try:
        client = await app_with(settings)
        _, body = await wait_for_status(client, 503, 5)
        assert body["checks"]["migrations"].startswith("failing")
    finally:
        Migrator(settings.database_owner_url, settings.migrations_dir).up()
