"""Dashboard reads on a seeded table: 500 devices x 4 metrics x 3 days at one point a
minute (8,640,000 rows), 50 concurrent clients on one API process, p50/p95 per endpoint.

Baselines measured in the same run: the health endpoint through the same client (the HTTP
floor of one Python process), and each endpoint's SQL run bare through asyncpg by 50
concurrent tasks on a 10-connection pool (the database floor, tenant transaction included).

    .venv/bin/python loadtests/bench_read.py [--seconds 8] [--keep] [--reuse]
    .venv/bin/python loadtests/bench_read.py --year [--days 365] [--seconds 20] [--keep] [--reuse]

Creates the database `iotcore_bench`, migrated to head, and seeds it by COPY as the owner
(loadtests/read/seed.py). --keep leaves it for a later --reuse run (which skips the seeding
and logs in as the seeded tenant's owner). Targets: latest p95 <= 10 ms; raw page of 1,000
p95 <= 30 ms; 24 h at 5 min p95 <= 30 ms; 7 days at 1 h p95 <= 60 ms.

--year: year-long dashboards on both storages in the same run (loadtests/read/year.py).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpload import LoadResult, free_port, run_load, start_api
from read.seed import insert_devices, seed_telemetry
from read.year import run_year

from iotcore.platform.migrations import Migrator
from iotcore.platform.sql import queries

ADMIN = "postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/postgres"
DB = "iotcore_bench"
OWNER = f"postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/{DB}"
SERVICE = f"postgresql://iotcore_service:iotcore-dev@127.0.0.1:5432/{DB}"
DEVICES, DAYS, CLIENTS = 500, 3, 50
PASSWORD = "benchmark-password-" + "r3ad"
TARGETS = {
    "latest": 10,
    "raw page of 1,000": 30,
    "24 h aggregate, 5 min": 30,
    "7 d aggregate, 1 h": 60,
}


async def prepare(reuse: bool) -> tuple[str, list[str]]:
    """The seeded database: (owner e-mail, device ids)."""
    admin = await asyncpg.connect(ADMIN)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB)
        if exists and reuse:
            conn = await asyncpg.connect(OWNER)
            try:
                email = await conn.fetchval("SELECT email FROM bench_meta")
                devices = [str(r[0]) for r in await conn.fetch("SELECT device_id FROM devices")]
            finally:
                await conn.close()
            print(f"reusing {DB}: {len(devices)} devices", flush=True)
            return email, devices
        await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DB}")
    finally:
        await admin.close()
    Migrator(OWNER, Path(__file__).resolve().parents[1] / "migrations").up()
    email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
    port = free_port()
    api = start_api(port, IOT_DATABASE_URL=SERVICE, IOT_DATABASE_OWNER_URL=OWNER)
    try:
        async with aiohttp.ClientSession() as session:
            body = {"email": email, "password": PASSWORD, "tenant_name": "Bench"}
            url = f"http://127.0.0.1:{port}/api/v1/auth/register"
            async with session.post(url, json=body) as response:
                answer = await response.json()
                assert response.status == 201, answer
                tenant_id = uuid.UUID(answer["tenant"]["tenant_id"])
    finally:
        api.terminate()
        api.wait(10)
    conn = await asyncpg.connect(OWNER)
    try:
        await conn.execute("CREATE TABLE bench_meta (email text)")
        await conn.execute("INSERT INTO bench_meta VALUES ($1)", email)
        devices = await insert_devices(conn, tenant_id, DEVICES)
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        started = time.perf_counter()
        rows = await seed_telemetry(conn, tenant_id, devices, end - timedelta(days=DAYS), end)
        print(f"seeded {rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        await conn.close()
    return email, devices


async def bare_sql(
    name: str, run: Callable[[Any], Awaitable[Any]], tenant_id: str, seconds: float
) -> LoadResult:
    """The endpoint's SQL through asyncpg alone, in the same tenant transaction."""
    result = LoadResult(name)
    pool = await asyncpg.create_pool(
        SERVICE, min_size=10, max_size=10, server_settings={"plan_cache_mode": "force_custom_plan"}
    )
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with pool.acquire() as conn, conn.transaction(readonly=True):
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
                await run(conn)
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            result.statuses[200] += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    finally:
        await pool.close()
    result.elapsed_s = time.perf_counter() - started
    return result


async def main_async(args: argparse.Namespace) -> None:
    email, devices = await prepare(args.reuse)
    port = free_port()
    api = start_api(port, IOT_DATABASE_URL=SERVICE, IOT_DATABASE_OWNER_URL=OWNER)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            body = {"email": email, "password": PASSWORD}
            async with session.post(base + "/api/v1/auth/login", json=body) as response:
                answer = await response.json()
                assert response.status == 200, answer
        headers = {"Authorization": "Bearer " + answer["access_token"]}
        tenant_id = answer["tenant"]["tenant_id"]
        rng = random.Random(7)
        now = datetime.now(UTC)
        day_ago, week_ago = now - timedelta(hours=24), now - timedelta(days=7)
        day_ms, week_ms = (str(int(t.timestamp() * 1000)) for t in (day_ago, week_ago))

        def device() -> str:
            return devices[rng.randrange(len(devices))]

        shapes: dict[str, Callable[[], str]] = {
            "GET /health/live (baseline)": lambda: "/api/v1/health/live",
            "latest": lambda: f"/api/v1/devices/{device()}/telemetry/latest",
            "raw page of 1,000": lambda: (
                f"/api/v1/devices/{device()}/telemetry?metric=temp&limit=1000&order=desc"
            ),
            "24 h aggregate, 5 min": lambda: (
                f"/api/v1/devices/{device()}/telemetry/aggregate?metric=temp&bucket=5m"
                f"&from={day_ms}"
            ),
            "7 d aggregate, 1 h": lambda: (
                f"/api/v1/devices/{device()}/telemetry/aggregate?metric=temp&bucket=1h"
                f"&from={week_ms}"
            ),
        }
        # Warm-up: the first requests fill the pools and the latest-values cache.
        await run_load(
            "warm-up",
            lambda i: (
                "GET",
                base + f"/api/v1/devices/{devices[i % len(devices)]}/telemetry/latest",
                headers,
                None,
            ),
            CLIENTS,
            2,
        )
        print(f"load average before: {subprocess.check_output(['uptime'], text=True).strip()}")
        print(f"{CLIENTS} concurrent clients, {args.seconds:.0f} s each, one API process")
        for name, path in shapes.items():
            result = await run_load(
                name,
                lambda _i, path=path: ("GET", base + path(), headers, None),
                CLIENTS,
                args.seconds,
            )
            verdict = ""
            if name in TARGETS:
                ok = result.percentile(95) <= TARGETS[name] and set(result.statuses) == {200}
                verdict = f"  target p95 <= {TARGETS[name]} ms -> {'PASS' if ok else 'FAIL'}"
            print(result.line() + verdict, flush=True)

        sql = queries("telemetry_read", Path(__file__).resolve().parents[1] / "sql")
        # $6..$10 of the aggregate query: avg, min, max, sum, count (the API's default fn).
        FUNCTIONS = (True, True, True, False, True)
        bare = {
            "bare SQL: raw page of 1,000": lambda c: c.fetch(
                sql["raw_desc"], uuid.UUID(device()), day_ago, now, now, "", 1001, "temp"
            ),
            "bare SQL: 24 h aggregate, 5 min": lambda c: c.fetch(
                sql["aggregate"],
                uuid.UUID(device()),
                "temp",
                timedelta(minutes=5),
                day_ago,
                now,
                *FUNCTIONS,
            ),
            "bare SQL: 7 d aggregate, 1 h": lambda c: c.fetch(
                sql["aggregate"],
                uuid.UUID(device()),
                "temp",
                timedelta(hours=1),
                week_ago,
                now,
                *FUNCTIONS,
            ),
        }
        for name, run in bare.items():
            print((await bare_sql(name, run, tenant_id, args.seconds)).line(), flush=True)
    finally:
        api.terminate()
        api.wait(10)
        if not args.keep:
            admin = await asyncpg.connect(ADMIN)
            await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--keep", action="store_true", help="leave the database for --reuse")
    parser.add_argument("--reuse", action="store_true", help="use an existing seeded database")
    parser.add_argument("--year", action="store_true", help="year-long dashboards, both storages")
    parser.add_argument("--days", type=int, default=365, help="--year: days of readings")
    parser.add_argument(
        "--raw-seconds", type=float, default=8, help="--year: seconds of the raw-rows baseline"
    )
    args = parser.parse_args()
    asyncio.run(run_year(args) if args.year else main_async(args))


if __name__ == "__main__":
    main()
