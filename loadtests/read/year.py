"""Year-long dashboards (bench_read.py --year): 10 devices x 4 metrics at one point a minute
for 365 days (21,024,000 rows, seeded by COPY) on each storage in the same run: native
partitions (127.0.0.1:5432) and TimescaleDB (127.0.0.1:5433, when it answers; chunks older
than 7 days compressed, as the policy would). Rollups refreshed by `maintain`'s refresh.

One client, for each shape: the API (the rollup path), the endpoint's SQL bare (the same
function the endpoint calls, in the same tenant transaction), and the same aggregate over
the raw rows bare (the baseline). Target: API p95 < 30 ms. The windows end where the seed
ends (half an hour before its last whole hour), so a reused seed is measured on the same
data however old it is.

Seeding takes long (about 10 minutes per storage on two cores): seed once with --reuse
(--seed-only skips the measurement), then measure as often as wanted with --reuse, which
skips the seeding when the database holds a complete seed of the same size (see
loadtests/read/database.py) and keeps the database afterwards:

    nice -n 19 .venv/bin/python loadtests/bench_read.py --year --reuse --seed-only
    .venv/bin/python loadtests/bench_read.py --year --reuse --seconds 20 --raw-seconds 10
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
from iotcore.platform.sql import queries
from iotcore.telemetry.read.service import TimeRange, aggregate_rows
from read.database import PASSWORD, BenchServer, Seeded, available, drop, prepare

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
DEVICES = 10
TARGET_MS = 30
STORAGES = {
    "native": ("native partitions", BenchServer(5432, "iotcore_bench_year")),
    "timescaledb": ("TimescaleDB", BenchServer(5433, "iotcore_bench_year")),
}
# avg, min, max, sum, count: the API's default fn.
FUNCTIONS = [True, True, True, False, True]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--year", action="store_true", help="year-long dashboards, both storages")
    parser.add_argument("--days", type=int, default=365, help="--year: days of readings")
    parser.add_argument(
        "--raw-seconds", type=float, default=8, help="--year: seconds of the raw-rows baseline"
    )
    parser.add_argument(
        "--storage",
        choices=["both", *STORAGES],
        default="both",
        help="--year: which storage (default both, in the same run)",
    )
    parser.add_argument(
        "--seed-only", action="store_true", help="--year: seed (or find the seed), no measuring"
    )


async def compress_and_refresh(conn: asyncpg.Connection) -> None:
    """What the policies and `maintain` would have done by now: chunks older than 7 days
    compressed (TimescaleDB), every marked hour refreshed."""
    if await conn.fetchval(
        "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')"
    ):
        started = time.perf_counter()
        chunks = await conn.fetchval(
            "SELECT count(compress_chunk(c, if_not_compressed => true)) "
            "FROM show_chunks('telemetry', older_than => now() - INTERVAL '7 days') c"
        )
        print(f"  compressed {chunks} chunks in {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    cleared = 0
    while refreshed := await refresh_rollups(conn, Settings(sql_dir=SQL_DIR)):
        cleared += refreshed
    print(
        f"  rollups refreshed ({cleared} marked hours) in {time.perf_counter() - started:.0f} s",
        flush=True,
    )


async def bare(
    name: str,
    server: BenchServer,
    tenant_id: str,
    run: Callable[[Any], Awaitable[Any]],
    seconds: float,
) -> LoadResult:
    """One client running the SQL in the endpoint's tenant transaction (REPEATABLE READ, read
    only), nothing else."""
    result = LoadResult(name)
    conn = await asyncpg.connect(
        server.service, server_settings={"plan_cache_mode": "force_custom_plan"}
    )
    try:
        started = deadline = time.perf_counter()
        deadline += seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
                await run(conn)
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            result.statuses[200] += 1
        result.elapsed_s = time.perf_counter() - started
    finally:
        await conn.close()
    return result


async def measure(server: BenchServer, seeded: Seeded, args: argparse.Namespace) -> None:
    # Retention long enough that the whole seed is inside the horizon however old it is
    # (rollups older than the retention horizon are not read).
    age_days = (datetime.now(UTC) - seeded.end).days
    api_port = free_port()
    api = start_api(
        api_port,
        **server.api_env(),
        IOT_TELEMETRY_RETENTION_DAYS=str(seeded.days + age_days + 2),
    )
    base = f"http://127.0.0.1:{api_port}"
    sql = queries("telemetry_read", SQL_DIR)
    try:
        async with aiohttp.ClientSession() as session:
            body = {"email": seeded.email, "password": PASSWORD}
            async with session.post(base + "/api/v1/auth/login", json=body) as response:
                answer = await response.json()
                assert response.status == 200, answer
        headers = {"Authorization": "Bearer " + answer["access_token"]}
        tenant_id = answer["tenant"]["tenant_id"]
        # Windows that end half an hour before the seed's last whole hour: like a dashboard
        # up to now, they begin and end inside an hour (edges read from the raw rows).
        end = seeded.end.replace(minute=0) - timedelta(minutes=30)
        long_days, short_days = min(seeded.days, 365), min(seeded.days, 90)
        shapes = {
            f"{long_days} d aggregate, 1 d": (timedelta(days=long_days), "1d", timedelta(days=1)),
            f"{short_days} d aggregate, 1 h": (
                timedelta(days=short_days),
                "1h",
                timedelta(hours=1),
            ),
        }
        counter = 0

        def device() -> str:
            nonlocal counter
            counter += 1
            return seeded.devices[counter % len(seeded.devices)]

        for name, (span, bucket, width) in shapes.items():
            window = TimeRange(end - span, end)
            start_ms = int(window.start.timestamp() * 1000)
            end_ms = int(window.end.timestamp() * 1000)

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

            def endpoint_sql(
                conn: Any, width: timedelta = width, window: TimeRange = window
            ) -> Any:
                return aggregate_rows(
                    conn,
                    sql,
                    uuid.UUID(device()),
                    "temp",
                    width,
                    window,
                    FUNCTIONS,
                    seeded.days + age_days + 2,
                )

            def raw_rows(conn: Any, width: timedelta = width, window: TimeRange = window) -> Any:
                return conn.fetch(
                    sql["aggregate"],
                    uuid.UUID(device()),
                    "temp",
                    width,
                    window.start,
                    window.end,
                    *FUNCTIONS,
                )

            for label, run, seconds in (
                ("bare SQL, rollups", endpoint_sql, args.seconds),
                ("bare SQL, raw rows", raw_rows, args.raw_seconds),
            ):
                result = await bare(f"{label}: {name}", server, tenant_id, run, seconds)
                print(f"  {result.line()}", flush=True)
    finally:
        api.terminate()
        api.wait(10)


async def run_year(args: argparse.Namespace) -> None:
    print(
        f"{DEVICES} devices x 4 metrics x {args.days} days at one point a minute "
        f"({DEVICES * 4 * args.days * 1440:,} rows) per storage; one client",
        flush=True,
    )
    wanted = list(STORAGES) if args.storage == "both" else [args.storage]
    for key in wanted:
        label, server = STORAGES[key]
        if not await available(server):
            print(f"{label}: no server on {server.host}:{server.port}, skipped", flush=True)
            continue
        print(f"{label} ({server.host}:{server.port}/{server.name})", flush=True)
        seeded = await prepare(
            server,
            devices=DEVICES,
            days=args.days,
            reuse=args.reuse,
            after_seed=compress_and_refresh,
            quiet=True,
        )
        try:
            if not args.seed_only:
                measure_started = time.perf_counter()
                await measure(server, seeded, args)
                print(f"  measured in {time.perf_counter() - measure_started:.0f} s", flush=True)
        finally:
            if not (args.keep or args.reuse):  # a seed meant for reuse is kept
                await drop(server)
