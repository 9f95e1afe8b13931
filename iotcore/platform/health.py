"""Liveness and readiness: Postgres, Redis, migrations at head, and checks other roles add."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from aiohttp import web
from pydantic import BaseModel

from iotcore.platform.context import Platform
from iotcore.platform.http.endpoints import Endpoint
from iotcore.platform.http.responses import json_response
from iotcore.platform.metrics import READY, READY_CHECK

log = logging.getLogger("iotcore.health")
CHECK_TIMEOUT_S = 1.5


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


async def _check_postgres_and_migrations(platform: Platform) -> dict[str, str]:
    """One round trip answers both: Postgres is reachable, and which migrations it has."""
    try:
        async with platform.db.primary.acquire() as conn:
            rows = await conn.fetch("SELECT migration_id FROM _yoyo_migration")
    except asyncpg.PostgresError as exc:
        # The server answered: it is up, but the schema is not there (or not ours yet).
        return {"postgres": "ok", "migrations": _failure(exc)}
    except Exception as exc:
        failure = _failure(exc)
        return {"postgres": failure, "migrations": "unknown: postgres unreachable"}
    missing = expected_migrations(platform.settings.migrations_dir) - {r[0] for r in rows}
    if missing:
        return {"postgres": "ok", "migrations": f"failing: {len(missing)} migration(s) not applied"}
    return {"postgres": "ok", "migrations": "ok"}


def _failure(exc: BaseException) -> str:
    detail = f": {exc}" if str(exc) else ""
    return f"failing: {type(exc).__name__}{detail}"[:200]


async def _check_redis(platform: Platform) -> None:
    await platform.redis.client.ping()


async def readiness(platform: Platform) -> dict[str, str]:
    checks = {"redis": lambda: _check_redis(platform), **platform.readiness_checks}

    async def run(check: Callable[[], Awaitable[None]]) -> str:
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
        except Exception as exc:  # any failure means not ready; the reason goes to the caller
            return _failure(exc)
        return "ok"

    async def database() -> dict[str, str]:
        try:
            return await asyncio.wait_for(_check_postgres_and_migrations(platform), CHECK_TIMEOUT_S)
        except TimeoutError as exc:
            return {"postgres": _failure(exc), "migrations": "unknown: postgres unreachable"}

    database_check = asyncio.ensure_future(database())
    results = await asyncio.gather(*(run(c) for c in checks.values()))
    return {**await database_check, **dict(zip(checks, results, strict=True))}


class ReadinessProbe:
    """Coalesces probes: concurrent callers share one check, and a result is reused for
    `max_age_s`, so a storm of probes costs the database one query, not one each."""

    def __init__(self, platform: Platform, max_age_s: float = 0.5) -> None:
        self._platform = platform
        self._max_age_s = max_age_s
        self._result: dict[str, str] | None = None
        self._taken_at = 0.0
        self._pending: asyncio.Future[dict[str, str]] | None = None

    async def check(self) -> dict[str, str]:
        now = time.monotonic()
        if self._result is not None and now - self._taken_at < self._max_age_s:
            return self._result
        if self._pending is None:
            self._pending = asyncio.ensure_future(readiness(self._platform))
            self._pending.add_done_callback(self._store)
        return await asyncio.shield(self._pending)

    def _store(self, future: asyncio.Future[dict[str, str]]) -> None:
        self._pending = None
        if not future.cancelled() and future.exception() is None:
            self._result = future.result()
            self._taken_at = time.monotonic()


PROBE_KEY = web.AppKey("readiness_probe", ReadinessProbe)


def observe_readiness(checks: dict[str, str]) -> bool:
    for name, state in checks.items():
        READY_CHECK.labels(name).set(1 if state == "ok" else 0)
    healthy = all(v == "ok" for v in checks.values())
    READY.set(1 if healthy else 0)
    return healthy


async def live(request: web.Request) -> web.Response:
    return json_response(Live(status="ok"))


async def ready(request: web.Request) -> web.Response:
    checks = await request.app[PROBE_KEY].check()
    healthy = observe_readiness(checks)
    status = 200 if healthy else 503
    if not healthy:
        log.warning("not ready", extra={"checks": checks})
    return json_response(
        Ready(status="ok" if healthy else "unavailable", checks=checks),
        status=status,
        headers=None if healthy else {"Retry-After": "5"},
    )


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
]


def install(app: web.Application, platform: Platform) -> None:
    app[PROBE_KEY] = ReadinessProbe(platform)
