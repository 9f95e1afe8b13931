"""The read benchmarks' seeded databases: created, migrated, a tenant registered through the
API, devices inserted and telemetry COPYed in (loadtests/read/seed.py), then recorded as
complete in `bench_meta`. A later run with --reuse finds a complete seed of the same size and
skips all of that (it only brings the schema to head), so the measurement alone can be
repeated, e.g. on a quiet machine; an incomplete or different seed is dropped and redone.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
from httpload import free_port, start_api

from iotcore.platform.migrations import Migrator
from read.seed import insert_devices, seed_telemetry

PASSWORD = "benchmark-password-" + "r3ad"
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


@dataclass(frozen=True)
class BenchServer:
    """One PostgreSQL server holding a benchmark database `name`."""

    port: int
    name: str
    host: str = "127.0.0.1"

    def url(self, role: str, database: str | None = None) -> str:
        return f"postgresql://{role}:iotcore-dev@{self.host}:{self.port}/{database or self.name}"

    @property
    def owner(self) -> str:
        return self.url("iotcore_owner")

    @property
    def service(self) -> str:
        return self.url("iotcore_service")

    @property
    def admin(self) -> str:
        return self.url("iotcore_owner", "postgres")

    def api_env(self) -> dict[str, str]:
        return {"IOT_DATABASE_URL": self.service, "IOT_DATABASE_OWNER_URL": self.owner}


@dataclass(frozen=True)
class Seeded:
    email: str
    devices: list[str]
    end: datetime  # the readings cover [end - days, end)
    days: int


async def available(server: BenchServer) -> bool:
    try:
        conn = await asyncpg.connect(server.admin, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def find_seed(server: BenchServer, devices: int, days: int) -> Seeded | None:
    """The complete seed of this size in the database, or None."""
    try:
        conn = await asyncpg.connect(server.owner)
    except asyncpg.InvalidCatalogNameError:
        return None
    try:
        if not await conn.fetchval("SELECT to_regclass('bench_meta') IS NOT NULL"):
            return None
        meta = await conn.fetchrow("SELECT email, seed_end, devices, days FROM bench_meta")
        if meta is None or meta["seed_end"] is None:
            return None
        if (meta["devices"], meta["days"]) != (devices, days):
            return None
        ids = [str(r[0]) for r in await conn.fetch("SELECT device_id FROM devices")]
        return Seeded(meta["email"], ids, meta["seed_end"], days)
    except asyncpg.UndefinedColumnError:
        return None  # an older benchmark's database
    finally:
        await conn.close()


async def register_owner(server: BenchServer) -> tuple[str, uuid.UUID]:
    """A tenant and its owner, through the API: (e-mail, tenant id)."""
    email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
    port = free_port()
    api = start_api(port, **server.api_env())
    try:
        async with aiohttp.ClientSession() as session:
            body = {"email": email, "password": PASSWORD, "tenant_name": "Bench"}
            url = f"http://127.0.0.1:{port}/api/v1/auth/register"
            async with session.post(url, json=body) as response:
                answer = await response.json()
                assert response.status == 201, answer
                return email, uuid.UUID(answer["tenant"]["tenant_id"])
    finally:
        api.terminate()
        api.wait(10)


async def prepare(
    server: BenchServer,
    *,
    devices: int,
    days: int,
    reuse: bool,
    after_seed: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    quiet: bool = False,
) -> Seeded:
    """The seeded database: reused when --reuse finds a complete seed of this size, else
    (re)created and seeded; `after_seed` runs on the owner connection before the seed is
    recorded as complete (compression, rollup refresh)."""
    if reuse:
        found = await find_seed(server, devices, days)
        if found is not None:
            Migrator(server.owner, MIGRATIONS).up()  # a no-op unless the schema moved on
            print(
                f"  reusing {server.name}: {len(found.devices)} devices, {days} days up to "
                f"{found.end:%Y-%m-%d %H:%M} UTC",
                flush=True,
            )
            return found
        print(f"  no complete seed of this size in {server.name}: seeding", flush=True)
    admin = await asyncpg.connect(server.admin)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {server.name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {server.name}")
        timescale = await admin.fetchval(
            "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'timescaledb')"
        )
    finally:
        await admin.close()
    if timescale:
        su = await asyncpg.connect(server.url("postgres"))
        try:
            await su.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        finally:
            await su.close()
    Migrator(server.owner, MIGRATIONS).up()
    email, tenant_id = await register_owner(server)
    conn = await asyncpg.connect(server.owner)
    try:
        await conn.execute(
            "CREATE TABLE bench_meta (email text, seed_end timestamptz, devices int, days int)"
        )
        ids = await insert_devices(conn, tenant_id, devices)
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        started = time.perf_counter()
        rows = await seed_telemetry(
            conn, tenant_id, ids, end - timedelta(days=days), end, quiet=quiet
        )
        print(
            f"  seeded {rows:,} rows by COPY in {time.perf_counter() - started:.0f} s", flush=True
        )
        if after_seed is not None:
            await after_seed(conn)
        await conn.execute("VACUUM ANALYZE")
        await conn.execute(
            "INSERT INTO bench_meta VALUES ($1, $2, $3, $4)", email, end, devices, days
        )
    finally:
        await conn.close()
    return Seeded(email, ids, end, days)


async def drop(server: BenchServer) -> None:
    admin = await asyncpg.connect(server.admin)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {server.name} WITH (FORCE)")
    finally:
        await admin.close()
