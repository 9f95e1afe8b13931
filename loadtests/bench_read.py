"""Dashboard reads on a seeded table: 500 devices x 4 metrics x 3 days at one point a
minute (8.64 million rows), 50 concurrent clients on one API process, p50/p95 per endpoint,
beside the health endpoint measured in the same run.

    .venv/bin/python loadtests/bench_read.py [--seconds 8] [--keep]

Creates (and drops, unless --keep) the database `iotcore_bench`, migrated to head.
Targets: latest p95 <= 10 ms; raw page of 1,000 p95 <= 30 ms; 24 h at 5 min p95 <= 30 ms;
7 days at 1 h p95 <= 60 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import tenant
from httpload import free_port, run_load, start_api

from iotcore.platform.migrations import Migrator

ADMIN = "postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/postgres"
DB = "iotcore_bench"
OWNER = f"postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/{DB}"
SERVICE = f"postgresql://iotcore_service:iotcore-dev@127.0.0.1:5432/{DB}"
DEVICES, METRICS, DAYS = 500, ("temp", "hum", "volt", "rssi"), 3


async def seed(tenant_id: str) -> list[str]:
    conn = await asyncpg.connect(OWNER)
    try:
        today = datetime.now(UTC).date()
        await conn.execute(
            "SELECT telemetry_ensure_partitions($1, $2)", today - timedelta(days=DAYS + 1), DAYS + 3
        )
        devices = [str(uuid.uuid4()) for _ in range(DEVICES)]
        await conn.executemany(
            "INSERT INTO devices (device_id, tenant_id, serial_number, model, key_id, status) "
            "VALUES ($1, $2, $3, 'bench', 'mk1', 'active')",
            [(d, uuid.UUID(tenant_id), f"RB-{d[:13]}") for d in devices],
        )
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        start = end - timedelta(days=DAYS)
        started = time.perf_counter()
        for device in devices:
            await conn.execute(
                "INSERT INTO telemetry (tenant_id, device_id, metric, ts, value) "
                "SELECT $1, $2, m, t, random() * 100 FROM unnest($3::text[]) m, "
                "generate_series($4::timestamptz, $5::timestamptz - interval '1 minute', "
                "interval '1 minute') t",
                uuid.UUID(tenant_id),
                uuid.UUID(device),
                list(METRICS),
                start,
                end,
            )
        # What the writer keeps alongside the readings (the seed bypasses the writer).
        await conn.execute(
            "INSERT INTO telemetry_latest SELECT DISTINCT ON (device_id, metric) tenant_id, "
            "device_id, metric, ts, value FROM telemetry ORDER BY device_id, metric, ts DESC"
        )
        await conn.execute("ANALYZE telemetry")
        count = await conn.fetchval("SELECT count(*) FROM telemetry")
        print(f"seeded {count:,} rows in {time.perf_counter() - started:.0f} s")
        return devices
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> None:
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {DB}")
    await admin.close()
    Migrator(OWNER, Path(__file__).resolve().parents[1] / "migrations").up()
    os.environ["IOT_DATABASE_URL"] = SERVICE
    os.environ["IOT_DATABASE_OWNER_URL"] = OWNER
    port = free_port()
    api = start_api(port)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            headers = await tenant(session, base)
            async with session.get(base + "/api/v1/auth/me", headers=headers) as response:
                tenant_id = (await response.json())["tenant"]["tenant_id"]
        devices = await seed(tenant_id)
        rng = random.Random(7)
        now = datetime.now(UTC)
        day_ago = str(int((now - timedelta(hours=24)).timestamp() * 1000))
        week_ago = str(int((now - timedelta(days=7)).timestamp() * 1000))

        def device() -> str:
            return devices[rng.randrange(len(devices))]

        shapes = {
            "GET /health/live (baseline)": lambda: "/api/v1/health/live",
            "latest": lambda: f"/api/v1/devices/{device()}/telemetry/latest",
            "raw page of 1,000": lambda: (
                f"/api/v1/devices/{device()}/telemetry?metric=temp&limit=1000&order=desc"
            ),
            "24 h aggregate, 5 min": lambda: (
                f"/api/v1/devices/{device()}/telemetry/aggregate?metric=temp&bucket=5m"
                f"&from={day_ago}"
            ),
            "7 d aggregate, 1 h": lambda: (
                f"/api/v1/devices/{device()}/telemetry/aggregate?metric=temp&bucket=1h"
                f"&from={week_ago}"
            ),
        }
        targets = {
            "latest": 10,
            "raw page of 1,000": 30,
            "24 h aggregate, 5 min": 30,
            "7 d aggregate, 1 h": 60,
        }
        for name, path in shapes.items():
            result = await run_load(
                name, lambda _i, path=path: ("GET", base + path(), headers, None), 50, args.seconds
            )
            verdict = ""
            if name in targets:
                ok = result.percentile(95) <= targets[name] and set(result.statuses) == {200}
                verdict = f"  target p95 <= {targets[name]} ms -> {'PASS' if ok else 'FAIL'}"
            print(result.line() + verdict, flush=True)
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
    parser.add_argument("--keep", action="store_true")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
