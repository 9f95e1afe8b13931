"""Liveness, readiness (Postgres, Redis, migrations at head, other roles), metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import prometheus_client
from aiohttp import web
from pydantic import BaseModel

from iotcore.platform.context import PLATFORM_KEY, Platform
from iotcore.platform.http import Endpoint, json_response
from iotcore.platform.metrics import READY
from iotcore.platform.openapi import build_openapi, render_docs_page

log = logging.getLogger("iotcore.health")
CHECK_TIMEOUT_S = 1.5
OPENAPI_KEY = web.AppKey("openapi", dict)


class Live(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    checks: dict[str, str]


def expected_migrations(directory: Path) -> set[str]:
    return {
        p.name.removesuffix(".sql")
        for p in directory.glob("*.sql")
        if not p.name.endswith(".rollback.sql")
    }


async def _check_postgres(platform: Platform) -> None:
    async with platform.db.primary.acquire() as conn:
        await conn.fetchval("SELECT 1")


async def _check_migrations(platform: Platform) -> None:
    async with platform.db.primary.acquire() as conn:
        rows = await conn.fetch("SELECT migration_id FROM _yoyo_migration")
    missing = expected_migrations(platform.settings.migrations_dir) - {r[0] for r in rows}
    if missing:
        raise RuntimeError(f"{len(missing)} migration(s) not applied")


async def _check_redis(platform: Platform) -> None:
    await platform.redis.client.ping()


async def readiness(platform: Platform) -> dict[str, str]:
    checks = {
        "postgres": lambda: _check_postgres(platform),
        "migrations": lambda: _check_migrations(platform),
        "redis": lambda: _check_redis(platform),
        **platform.readiness_checks,
    }

    async def run(check: object) -> str:
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_S)  # type: ignore[operator]
        except Exception as exc:  # any failure means not ready; the reason goes to the caller
            return (
                f"failing: {type(exc).__name__}: {exc}"[:200]
                if str(exc)
                else (f"failing: {type(exc).__name__}")
            )
        return "ok"

    results = await asyncio.gather(*(run(c) for c in checks.values()))
    return dict(zip(checks, results, strict=True))


async def live(request: web.Request) -> web.Response:
    return json_response(Live(status="ok"))


async def ready(request: web.Request) -> web.Response:
    checks = await readiness(request.app[PLATFORM_KEY])
    healthy = all(v == "ok" for v in checks.values())
    READY.set(1 if healthy else 0)
    status = 200 if healthy else 503
    if not healthy:
        log.warning("not ready", extra={"checks": checks})
    return json_response(
        Ready(status="ok" if healthy else "unavailable", checks=checks),
        status=status,
        headers=None if healthy else {"Retry-After": "5"},
    )


async def metrics(request: web.Request) -> web.Response:
    body = prometheus_client.generate_latest()
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI_KEY])


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=render_docs_page(request.app[OPENAPI_KEY]), content_type="text/html")


ENDPOINTS = [
    Endpoint(
        "GET", "/api/v1/health/live", live, "Process is up", "operations", responses={200: Live}
    ),
    Endpoint(
        "GET",
        "/api/v1/health/ready",
        ready,
        "Postgres, Redis and migrations are ready (503 names the failing check)",
        "operations",
        responses={200: Ready, 503: Ready},
    ),
    Endpoint(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics",
        "operations",
        response_content_type="text/plain",
    ),
    Endpoint("GET", "/api/v1/openapi.json", openapi_json, "This document", "operations"),
    Endpoint(
        "GET",
        "/api/v1/docs",
        docs_page,
        "Human-readable API index",
        "operations",
        response_content_type="text/html",
    ),
]


def install_openapi(app: web.Application, endpoints: list[Endpoint], version: str) -> None:
    app[OPENAPI_KEY] = build_openapi(endpoints, version)
