"""Year-long dashboards (bench_read.py --year): 10 devices x 4 metrics at one point a minute
for 365 days (21,024,000 rows, seeded by COPY) on each storage in the same run, native
partitions (127.0.0.1:5432) and TimescaleDB (127.0.0.1:5433, when it answers; chunks older
than 7 days compressed, as the policy would). Rollups refreshed by `maintain`'s refresh.

One client, for each shape: the API (the rollup path), the endpoint's rollup SQL bare, and
the same aggregate over the raw rows bare (the baseline). Target: API p95 < 30 ms.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from httpload import LoadResult, free_port, run_load, start_api

from iotcore.config import Settings
from iotcore.maintenance.jobs import refresh_rollups
from iotcore.platform.migrations import Migrator
from iotcore.platform.sql import queries
from iotcore.telemetry.read.service import RollupSpan, TimeRange, rollup_span
from read.seed import insert_devices, seed_telemetry

REPO = Path(__file__).resolve().parents[2]
SQL_DIR = REPO / "sql"
DB = "iotcore_bench_year"
DEVICES = 10
TARGET_MS = 30
PASSWORD = "benchmark-password-" + "ye4r"
STORAGES = {"native partitions": 5432, "TimescaleDB": 5433}
# $6..$10: avg, min, max, sum, count (the API's default fn).
FUNCTIONS = (True, True, True, False, True)


def url(role: str, port: int, database: str) -> str:
    return f"postgresql://{role}:iotcore-dev@127.0.0.1:{port}/{database}"


async def available(port: int) -> bool:
    try:
        conn = await asyncpg.connect(url("iotcore_owner", port, "postgres"), timeout=5)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def prepare(port: int, days: int, reuse: bool) -> tuple[str, list[str]]:
    """The seeded database on the server at `port`: (owner e-mail, device ids)."""
    owner_url = url("iotcore_owner", port, DB)
    admin = await asyncpg.connect(url("iotcore_owner", port, "postgres"))
    try:
        if reuse and await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB):
            conn = await asyncpg.connect(owner_url)
            try:
                email = await conn.fetchval("SELECT email FROM bench_meta")
                devices = [str(r[0]) for r in await conn.fetch("SELECT device_id FROM devices")]
            finally:
                await conn.close()
            print(f"  reusing {DB}: {len(devices)} devices", flush=True)
            return email, devices
        await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DB}")
    finally:
        await admin.close()
    if port != 5432:
        su = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/{DB}")
        await su.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        await su.close()
    Migrator(owner_url, REPO / "migrations").up()
    email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
    api_port = free_port()
    api = start_api(
        api_port,
        IOT_DATABASE_URL=url("iotcore_service", port, DB),
        IOT_DATABASE_OWNER_URL=owner_url,
    )
    try:
        async with aiohttp.ClientSession() as session:
            body = {"email": email, "password": PASSWORD, "tenant_name": "Bench"}
            register = f"http://127.0.0.1:{api_port}/api/v1/auth/register"
            async with session.post(register, json=body) as response:
                answer = await response.json()
                assert response.status == 201, answer
                tenant_id = uuid.UUID(answer["tenant"]["tenant_id"])
    finally:
        api.terminate()
        api.wait(10)
    conn = await asyncpg.connect(owner_url)
    try:
        await conn.execute("CREATE TABLE bench_meta (email text)")
        await conn.execute("INSERT INTO bench_meta VALUES ($1)", email)
        devices = await insert_devices(conn, tenant_id, DEVICES)
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        started = time.perf_counter()
        rows = await seed_telemetry(
            conn, tenant_id, devices, end - timedelta(days=days), end, quiet=True
        )
        print(f"  seeded {rows:,} rows by COPY in {time.perf_counter() - started:.0f} s")
        if port != 5432:
            started = time.perf_counter()
            chunks = await conn.fetchval(
                "SELECT count(compress_chunk(c, if_not_compressed => true)) "
                "FROM show_chunks('telemetry', older_than => now() - INTERVAL '7 days') c"
            )
            print(f"  compressed {chunks} chunks in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        cleared = await refresh_rollups(conn, Settings(sql_dir=SQL_DIR))
        print(
            f"  rollups refreshed ({cleared} marked hours) in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return email, devices


async def bare(
    name: str,
    service_url: str,
    tenant_id: str,
    run: Callable[[Any], Awaitable[Any]],
    seconds: float,
) -> LoadResult:
    """One client running the SQL in the endpoint's tenant transaction, nothing else."""
    result = LoadResult(name)
    conn = await asyncpg.connect(service_url)
    try:
        started = deadline = time.perf_counter()
        deadline += seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with conn.transaction(readonly=True):
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
                await run(conn)
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            result.statuses[200] += 1
        result.elapsed_s = time.perf_counter() - started
    finally:
        await conn.close()
    return result


async def measure(storage: str, port: int, args: argparse.Namespace) -> None:
    print(f"{storage} (127.0.0.1:{port})", flush=True)
    email, devices = await prepare(port, args.days, args.reuse)
    service_url = url("iotcore_service", port, DB)
    api_port = free_port()
    api = start_api(
        api_port,
        IOT_DATABASE_URL=service_url,
        IOT_DATABASE_OWNER_URL=url("iotcore_owner", port, DB),
    )
    base = f"http://127.0.0.1:{api_port}"
    sql = queries("telemetry_read", SQL_DIR)
    try:
        async with aiohttp.ClientSession() as session:
            body = {"email": email, "password": PASSWORD}
            async with session.post(base + "/api/v1/auth/login", json=body) as response:
                answer = await response.json()
                assert response.status == 200, answer
        headers = {"Authorization": "Bearer " + answer["access_token"]}
        tenant_id = answer["tenant"]["tenant_id"]
        now = datetime.now(UTC)
        shapes = {
            f"{min(args.days, 365)} d aggregate, 1 d": (timedelta(days=min(args.days, 365)), "1d"),
            f"{min(args.days, 90)} d aggregate, 1 h": (timedelta(days=min(args.days, 90)), "1h"),
        }
        counter = 0

        def device() -> str:
            nonlocal counter
            counter += 1
            return devices[counter % len(devices)]

        for name, (span, bucket) in shapes.items():
            start = now - span
            start_ms = int(start.timestamp() * 1000)
            end_ms = int(now.timestamp() * 1000)

            def path(
                _i: int, bucket: str = bucket, start_ms: int = start_ms, end_ms: int = end_ms
            ) -> Any:
                return (
                    "GET",
                    f"{base}/api/v1/devices/{device()}/telemetry/aggregate?metric=temp"
                    f"&bucket={bucket}&from={start_ms}&to={end_ms}",
                    headers,
                    None,
                )

            await run_load("warm-up", path, 1, 1)
            api_result = await run_load(f"API: {name}", path, 1, args.seconds)
            ok = api_result.percentile(95) < TARGET_MS and set(api_result.statuses) == {200}
            print(
                f"  {api_result.line()}  target p95 < {TARGET_MS} ms -> {'PASS' if ok else 'FAIL'}",
                flush=True,
            )
            width = timedelta(days=1) if bucket == "1d" else timedelta(hours=1)
            window = TimeRange(start, now)
            span_of_rollups = rollup_span(window, width, 365)
            assert span_of_rollups is not None

            def rollup_sql(
                conn: Any,
                width: timedelta = width,
                start: datetime = start,
                rollups: RollupSpan = span_of_rollups,
            ) -> Any:
                return conn.fetch(
                    sql["aggregate_rollup"],
                    uuid.UUID(device()),
                    "temp",
                    width,
                    start,
                    now,
                    *FUNCTIONS,
                    rollups.first_hour,
                    rollups.last_hour,
                    rollups.first_day,
                    rollups.last_day,
                )

            def raw_sql(conn: Any, width: timedelta = width, start: datetime = start) -> Any:
                return conn.fetch(
                    sql["aggregate"], uuid.UUID(device()), "temp", width, start, now, *FUNCTIONS
                )

            for label, run in (("bare SQL, rollups", rollup_sql), ("bare SQL, raw rows", raw_sql)):
                seconds = args.seconds if label.endswith("rollups") else args.raw_seconds
                result = await bare(f"{label}: {name}", service_url, tenant_id, run, seconds)
                print(f"  {result.line()}", flush=True)
    finally:
        api.terminate()
        api.wait(10)
        if not args.keep:
            admin = await asyncpg.connect(url("iotcore_owner", port, "postgres"))
            await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
            await admin.close()


async def run_year(args: argparse.Namespace) -> None:
    print(
        f"{DEVICES} devices x 4 metrics x {args.days} days at one point a minute "
        f"({DEVICES * 4 * args.days * 1440:,} rows) per storage; one client",
        flush=True,
    )
    for storage, port in STORAGES.items():
        if not await available(port):
            print(f"{storage}: no server on 127.0.0.1:{port}, skipped", flush=True)
            continue
        await measure(storage, port, args)
