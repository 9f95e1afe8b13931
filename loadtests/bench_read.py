"""Dashboard reads on a seeded table: 500 devices x 4 metrics x 3 days at one point a
minute (8,640,000 rows), one API process. Each endpoint (latest values, a raw page of 1,000,
a 24 h aggregate at 5 min, a 7 d aggregate at 1 h) is measured at 1 client (latency: p50,
p95, p99) and at 8 clients (saturation on 2 cores: throughput), each beside its bare query
in the same run: the endpoint's SQL through iotcore's own tenant transaction (one pool,
nothing else; for latest values, the query that the API's Redis hash spares it).

    .venv/bin/python loadtests/bench_read.py [--seconds 8] [--rounds 2] [--keep] [--reuse]
        [--only latest]
    .venv/bin/python loadtests/bench_read.py --year [--days 365] [--seconds 20] [--keep] [--reuse]
        [--storage both|native|timescaledb] [--seed-only]

Targets at 1 client: the API adds at most 1 ms to its bare query at p50, and p95 stays within
latest 3 ms, raw page of 1,000 8 ms, 24 h at 5 min 6 ms, 7 d at 1 h 8 ms; at 8 clients the API
serves at least 85% of its bare query's rate. Each API line also gives the API process's CPU
time per request (from /proc: less sensitive to a busy machine than the latencies), each bare
line the client's. Within a line the API and the bare query take --rounds turns (API, bare,
bare, API, ...), each after a second of unmeasured load of its own; the line adds them up.

Creates the database `iotcore_bench`, migrated to head, seeds it by COPY as the owner
(loadtests/read/database.py) and refreshes the rollups, as `maintain` would. --keep leaves it for a
later --reuse run (which skips the seeding and logs in as the seeded tenant's owner).

--year: year-long dashboards on both storages in the same run (loadtests/read/year.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
from httpload import LoadResult, free_port, process_cpu_s, start_api
from read import database, year
from read.database import PASSWORD
from read.lean_http import closed_loop, run_lean_load

from iotcore.config import Settings
from iotcore.maintenance.jobs import refresh_rollups
from iotcore.platform.db import Database
from iotcore.platform.sql import queries
from iotcore.telemetry.read.service import TimeRange, aggregate_rows

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
ADMIN = "postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/postgres"
DB = "iotcore_bench"
OWNER = f"postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/{DB}"
SERVICE = f"postgresql://iotcore_service:iotcore-dev@127.0.0.1:5432/{DB}"
DEVICES, DAYS = 500, 3
# 1 client: what one dashboard waits; 8: enough to keep the one API process (and the 2 cores)
# busy, where throughput is compared.
LATENCY_CLIENTS, SATURATION_CLIENTS = 1, 8
SERVER = database.BenchServer(5432, DB)
TARGET_P95_MS = {
    "latest": 3,
    "raw page of 1,000": 8,
    "24 h aggregate, 5 min": 6,
    "7 d aggregate, 1 h": 8,
}
TARGET_ADDED_P50_MS = 1.0
TARGET_SATURATION_RATIO = 0.85
# Unmeasured load before each measured turn of either side.
WARMUP_S = 1.0
# $6..$10 of the aggregate queries: avg, min, max, sum, count (the API's default fn).
FUNCTIONS = (True, True, True, False, True)


async def prepare(reuse: bool) -> tuple[str, list[str]]:
    """The seeded database: (owner e-mail, device ids)."""

    async def refresh(conn: asyncpg.Connection) -> None:
        # As `maintain` would have: the 7 d aggregate reads the hourly rollups.
        await refresh_rollups(conn, Settings(sql_dir=SQL_DIR))

    seeded = await database.prepare(
        SERVER, devices=DEVICES, days=DAYS, reuse=reuse, after_seed=refresh
    )
    return seeded.email, seeded.devices


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (field 3 onwards); empty if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def cluster_cpu_s(postmaster: int) -> float:
    """CPU seconds of a whole PostgreSQL cluster: the postmaster, every live child (backends,
    parallel workers, background processes) and the children it has already reaped (cutime,
    cstime). Counting only the benchmark's backends missed parallel workers and connections
    that closed during a run."""
    tick = os.sysconf("SC_CLK_TCK")
    own = _stat_fields(postmaster)
    total = sum(int(own[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


class CpuMeter:
    """CPU time per request of each process on the path, measured around one run: the API
    process, this one (the load generator, or the bare client) and the PostgreSQL cluster (all
    of its processes). Less sensitive to a busy machine than latencies are. (pg_stat_database
    counters were tried too: a backend may hold its statistics back for 10 s, too long to tell
    one 10 s line from the next.)"""

    def __init__(self, api_pid: int | None) -> None:
        self._api_pid = api_pid
        self._start: dict[str, float] = {}
        self._postmaster = 0

    async def _find_postmaster(self) -> None:
        conn = await asyncpg.connect(OWNER)
        try:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            self._postmaster = int(_stat_fields(backend)[1])  # while the backend lives
        finally:
            await conn.close()

    async def start(self) -> None:
        if not self._postmaster:
            await self._find_postmaster()
        self._start = {"client": time.process_time(), "PostgreSQL": cluster_cpu_s(self._postmaster)}
        if self._api_pid is not None:
            self._start["API"] = process_cpu_s(self._api_pid)

    async def per_request_ms(self, requests: int) -> dict[str, float]:
        now = {"client": time.process_time(), "PostgreSQL": cluster_cpu_s(self._postmaster)}
        if self._api_pid is not None:
            now["API"] = process_cpu_s(self._api_pid)
        return {k: (now[k] - self._start[k]) * 1000 / max(1, requests) for k in now}


def cpu_text(cpu: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
    return f"CPU ms/req: {parts}"


async def bare(
    name: str, run: Callable[[Any], Awaitable[Any]], clients: int, seconds: float
) -> tuple[LoadResult, dict[str, float]]:
    """`clients` tasks running `run` back to back; the result and the CPU per call."""
    meter = CpuMeter(None)
    await meter.start()

    async def call(_worker: int) -> int:
        await run(None)
        return 200

    result = await closed_loop(name, clients, seconds, call)
    return result, await meter.per_request_ms(len(result.latencies_ms))


async def through_api(
    name: str,
    base: str,
    path: Callable[[], str],
    headers: dict[str, str],
    api_pid: int,
    clients: int,
    seconds: float,
) -> tuple[LoadResult, dict[str, float]]:
    """The endpoint through HTTP (a lean client: its own CPU would count against the API's
    side); the result and the CPU per request."""
    meter = CpuMeter(api_pid)
    await meter.start()
    result = await run_lean_load(name, base, path, headers, clients, seconds)
    return result, await meter.per_request_ms(len(result.latencies_ms))


def merged(
    name: str, rounds: list[tuple[LoadResult, dict[str, float]]]
) -> tuple[LoadResult, dict[str, float]]:
    """The rounds of one side as one result, the CPU per request over all of them."""
    result = LoadResult(name)
    spent: dict[str, float] = {}
    for part, cpu in rounds:
        result.latencies_ms += part.latencies_ms
        result.statuses.update(part.statuses)
        result.elapsed_s += part.elapsed_s
        for process, ms in cpu.items():
            spent[process] = spent.get(process, 0.0) + ms * len(part.latencies_ms)
    requests = max(1, len(result.latencies_ms))
    return result, {process: ms / requests for process, ms in spent.items()}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def main_async(args: argparse.Namespace) -> None:
    email, devices = await prepare(args.reuse)
    port = free_port()
    api = start_api(port, IOT_DATABASE_URL=SERVICE, IOT_DATABASE_OWNER_URL=OWNER)
    base = f"http://127.0.0.1:{port}"
    settings = Settings(
        database_url=SERVICE,
        database_owner_url=OWNER,
        database_pool_max=SATURATION_CLIENTS,
    )
    db = Database(settings)
    await db.connect()
    try:
        async with aiohttp.ClientSession() as session:
            body = {"email": email, "password": PASSWORD}
            async with session.post(base + "/api/v1/auth/login", json=body) as response:
                answer = await response.json()
                assert response.status == 200, answer
        headers = {"Authorization": "Bearer " + answer["access_token"]}
        tenant_id = uuid.UUID(answer["tenant"]["tenant_id"])
        rng = random.Random(7)
        now = datetime.now(UTC)
        day_ago, week_ago = now - timedelta(hours=24), now - timedelta(days=7)
        day_ms, week_ms = (str(int(t.timestamp() * 1000)) for t in (day_ago, week_ago))
        sql = queries("telemetry_read", SQL_DIR)

        def device() -> str:
            return devices[rng.randrange(len(devices))]

        async def in_tenant(query: str, *query_args: Any) -> Any:
            async with db.tenant_transaction(tenant_id, read=True) as conn:
                return await conn.fetch(query, uuid.UUID(device()), *query_args)

        async def rollup_aggregate() -> Any:
            # The endpoint's two statements (marked hours, then the buckets) in its snapshot.
            async with db.tenant_transaction(tenant_id, read=True, repeatable=True) as conn:
                return await aggregate_rows(
                    conn,
                    sql,
                    uuid.UUID(device()),
                    "temp",
                    timedelta(hours=1),
                    TimeRange(week_ago, now),
                    list(FUNCTIONS),
                    365,
                )

        # Per endpoint: the API path, and the bare query (bare name, call).
        shapes: dict[str, tuple[Callable[[], str], str, Callable[[Any], Awaitable[Any]]]] = {
            "latest": (
                lambda: f"/api/v1/devices/{device()}/telemetry/latest",
                "metrics",
                lambda _c: in_tenant(sql["metrics"]),
            ),
            "raw page of 1,000": (
                lambda: f"/api/v1/devices/{device()}/telemetry?metric=temp&limit=1000&order=desc",
                "raw_desc",
                lambda _c: in_tenant(sql["raw_desc"], day_ago, now, now, "", 1001, "temp"),
            ),
            "24 h aggregate, 5 min": (
                lambda: (
                    f"/api/v1/devices/{device()}/telemetry/aggregate"
                    f"?metric=temp&bucket=5m&from={day_ms}"
                ),
                "aggregate",
                lambda _c: in_tenant(
                    sql["aggregate"], "temp", timedelta(minutes=5), day_ago, now, *FUNCTIONS
                ),
            ),
            "7 d aggregate, 1 h": (
                lambda: (
                    f"/api/v1/devices/{device()}/telemetry/aggregate"
                    f"?metric=temp&bucket=1h&from={week_ms}"
                ),
                "aggregate_rollup",
                lambda _c: rollup_aggregate(),
            ),
        }
        # Warm-up: every device's latest values once (the pools, and the hashes the writer
        # keeps in production: a cold hash is a database read and a refill).
        pending = list(devices)

        async def warm(session: aiohttp.ClientSession) -> None:
            while pending:
                url = f"{base}/api/v1/devices/{pending.pop()}/telemetry/latest"
                async with session.get(url, headers=headers) as response:
                    assert response.status == 200, await response.text()

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(warm(session) for _ in range(SATURATION_CLIENTS)))
        print(f"load average before: {subprocess.check_output(['uptime'], text=True).strip()}")
        print(f"{args.seconds:.0f} s per line; one API process (pid {api.pid})", flush=True)
        health, health_cpu = await through_api(
            "GET /health/live (HTTP floor)",
            base,
            lambda: "/api/v1/health/live",
            {},
            api.pid,
            LATENCY_CLIENTS,
            args.seconds,
        )
        print(f"{health.line()}  {cpu_text(health_cpu)}", flush=True)
        for name, (path, bare_name, run) in shapes.items():
            if args.only and not any(word in name for word in args.only):
                continue
            print(name, flush=True)
            measured: dict[tuple[str, int], LoadResult] = {}
            cpu: dict[tuple[str, int], dict[str, float]] = {}
            for clients in (LATENCY_CLIENTS, SATURATION_CLIENTS):
                label = f"{clients} client{'s' if clients > 1 else ''}"
                api_rounds: list[tuple[LoadResult, dict[str, float]]] = []
                bare_rounds: list[tuple[LoadResult, dict[str, float]]] = []
                turn_s = args.seconds / args.rounds
                # The two sides take turns (API, bare, bare, API, ...), each turn after a
                # warm-up of its own: neither a side's first second (pools, caches) nor a
                # steady drift of the machine weighs on one side only.
                for turn in range(args.rounds):
                    for side in ("api", "bare") if turn % 2 == 0 else ("bare", "api"):
                        if side == "api":
                            await through_api("", base, path, headers, api.pid, clients, WARMUP_S)
                            api_rounds.append(
                                await through_api("", base, path, headers, api.pid, clients, turn_s)
                            )
                        else:
                            await bare("", run, clients, WARMUP_S)
                            bare_rounds.append(await bare("", run, clients, turn_s))
                api_result, api_cpu = merged(f"  API, {label}", api_rounds)
                print(f"{api_result.line()}  {cpu_text(api_cpu)}", flush=True)
                bare_result, bare_cpu = merged(f"  bare {bare_name}, {label}", bare_rounds)
                print(f"{bare_result.line()}  {cpu_text(bare_cpu)}", flush=True)
                assert set(api_result.statuses) == {200}, api_result.statuses
                measured["api", clients], measured["bare", clients] = api_result, bare_result
                cpu["api", clients], cpu["bare", clients] = api_cpu, bare_cpu
            one_api, one_bare = measured["api", LATENCY_CLIENTS], measured["bare", LATENCY_CLIENTS]
            added = one_api.percentile(50) - one_bare.percentile(50)
            p95 = one_api.percentile(95)
            ratio = (
                measured["api", SATURATION_CLIENTS].rate / measured["bare", SATURATION_CLIENTS].rate
            )
            print(
                f"  -> API adds {added:.2f} ms at p50 (target <= {TARGET_ADDED_P50_MS:g}): "
                f"{verdict(added <= TARGET_ADDED_P50_MS)}; p95 {p95:.2f} ms "
                f"(target <= {TARGET_P95_MS[name]}): {verdict(p95 <= TARGET_P95_MS[name])}; "
                f"at {SATURATION_CLIENTS} clients {ratio:.0%} of the bare rate "
                f"(target >= {TARGET_SATURATION_RATIO:.0%}): "
                f"{verdict(ratio >= TARGET_SATURATION_RATIO)}",
                flush=True,
            )
            api_total = sum(cpu["api", SATURATION_CLIENTS].values())
            bare_total = sum(cpu["bare", SATURATION_CLIENTS].values())
            print(
                f"     CPU per request at {SATURATION_CLIENTS} clients, all processes: API path "
                f"{api_total:.2f} ms, bare {bare_total:.2f} ms: where CPU is all there is, the "
                f"API serves {bare_total / api_total:.0%} of the bare rate",
                flush=True,
            )
    finally:
        await db.close()
        api.terminate()
        api.wait(10)
        if not args.keep:
            admin = await asyncpg.connect(ADMIN)
            await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
            await admin.close()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8, help="measured, per side and line")
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=2,
        help="turns the API and the bare query take per line",
    )
    parser.add_argument("--keep", action="store_true", help="leave the database for --reuse")
    parser.add_argument("--reuse", action="store_true", help="use an existing seeded database")
    parser.add_argument(
        "--only", action="append", help="endpoints whose name holds this text (repeatable)"
    )
    year.add_arguments(parser)
    args = parser.parse_args()
    asyncio.run(year.run_year(args) if args.year else main_async(args))


if __name__ == "__main__":
    main()
