"""Logins per second on one API process (production argon2id parameters), and the health
endpoint's latency while 50 logins are in flight: proof that hashing stays off the event loop.

    .venv/bin/python loadtests/bench_login.py [--seconds 15] [--in-flight 50] [--runs 3]

Needs the local services and a migrated `iotcore` database (`bash ops/services.sh`,
`IOT_DATABASE_OWNER_URL=... iotcore migrate up`). Target: health p95 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpload import LoadResult, free_port, run_load, start_api


async def one_run(base: str, seconds: float, in_flight: int) -> tuple[LoadResult, LoadResult]:
    email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
    password = "benchmark-password-" + uuid.uuid4().hex[:8]
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            base + "/api/v1/auth/register",
            json={"email": email, "password": password, "tenant_name": "Bench"},
        ) as response,
    ):
        assert response.status == 201, await response.text()
    body = json.dumps({"email": email, "password": password}).encode()
    headers = {"Content-Type": "application/json"}
    logins = asyncio.create_task(
        run_load(
            "POST /auth/login",
            lambda _i: ("POST", base + "/api/v1/auth/login", headers, body),
            in_flight,
            seconds,
        )
    )
    await asyncio.sleep(1)  # let the logins saturate the hashing pool first
    health = await run_load(
        "GET /health/live (during logins)",
        lambda _i: ("GET", base + "/api/v1/health/live", {}, None),
        2,
        seconds - 2,
    )
    return await logins, health


async def main_async(args: argparse.Namespace) -> None:
    port = free_port()
    api = start_api(port)
    base = f"http://127.0.0.1:{port}"
    try:
        idle = await run_load(
            "GET /health/live (idle baseline)",
            lambda _i: ("GET", base + "/api/v1/health/live", {}, None),
            2,
            3,
        )
        print(idle.line())
        results = []
        for run in range(args.runs):
            logins, health = await one_run(base, args.seconds, args.in_flight)
            print(f"run {run + 1}: {logins.line()}")
            print(f"run {run + 1}: {health.line()}")
            results.append((logins, health))
        results.sort(key=lambda pair: pair[1].percentile(95))
        logins, health = results[len(results) // 2]
        print(
            f"\nmedian run: {logins.rate:.1f} logins/s with {args.in_flight} in flight; "
            f"health p50 {health.percentile(50):.2f} ms p95 {health.percentile(95):.2f} ms "
            f"p99 {health.percentile(99):.2f} ms (idle p95 {idle.percentile(95):.2f} ms)"
        )
        verdict = "PASS" if health.percentile(95) < 50 else "FAIL"
        print(f"target health p95 < 50 ms while logins are in flight -> {verdict}")
    finally:
        api.terminate()
        api.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
