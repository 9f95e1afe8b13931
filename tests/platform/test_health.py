"""Liveness and readiness: 503 names the failing check within 5 s, 200 again on recovery."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from iotcore.platform.migrations import Migrator
from tests.conftest import SERVICE_URL, ApiFactory, free_port, make_settings, with_database
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


async def test_metrics_count_unknown_methods_as_other(client: Client) -> None:
    """Methods beyond the usual ones (the parser knows WebDAV's and more) share one label."""
    for method in ("PROPFIND", "PURGE"):
        response = await client.request(method, "/api/v1/health/live")
        assert response.status == 405
    text = await (await client.get("/metrics")).text()
    assert 'iotcore_http_requests_total{method="other",route="unmatched",status="405"} 2.0' in text
    assert "PROPFIND" not in text and "PURGE" not in text


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


class PrivateRedis:
    """A Redis of this test's own, so the test can really stop and start it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        self.processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))

    def kill(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    redis = PrivateRedis()
    redis.start()
    time.sleep(0.3)
    yield redis
    redis.kill()


async def test_ready_turns_503_when_redis_stops_and_200_when_it_returns(
    database: str, private_redis: PrivateRedis, api_with: ApiFactory
) -> None:
    client = await api_with(redis_url=f"redis://127.0.0.1:{private_redis.port}/0")
    await wait_for_status(client, 200, 5)

    private_redis.kill()
    took, body = await wait_for_status(client, 503, 5)
    assert body["checks"]["redis"].startswith("failing")
    assert body["checks"]["postgres"] == "ok"
    assert took < 5

    private_redis.start()
    await wait_for_status(client, 200, 10)


async def test_ready_turns_503_when_postgres_is_cut_and_200_when_it_returns(
    database: str, api_with: ApiFactory
) -> None:
    target = urlsplit(SERVICE_URL)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    try:
        url = with_database(SERVICE_URL, database).replace(
            f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}"
        )
        client = await api_with(database_url=url)
        await wait_for_status(client, 200, 5)

        await proxy.cut()
        took, body = await wait_for_status(client, 503, 5)
        assert body["checks"]["postgres"].startswith("failing")
        assert took < 5

        await proxy.restore()
        await wait_for_status(client, 200, 10)
    finally:
        await proxy.close()


async def test_ready_is_503_while_a_migration_is_pending(
    database: str, api_with: ApiFactory
) -> None:
    settings = make_settings(database)
    Migrator(settings.database_owner_url, settings.migrations_dir).down(1)
    try:
        client = await api_with()
        _, body = await wait_for_status(client, 503, 5)
        assert body["checks"]["migrations"].startswith("failing")
    finally:
        Migrator(settings.database_owner_url, settings.migrations_dir).up()
