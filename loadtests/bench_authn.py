"""EMQX authn hook throughput on one API process, beside an aiohttp hello-world measured in
the same run, and a reconnect storm of N devices authenticating with a cold cache.

    .venv/bin/python loadtests/bench_authn.py [--seconds 10] [--runs 3] [--storm 10000]

Needs the local services and a migrated `iotcore` database (ops/services.sh, migrate up).
Targets: >= 40% of hello-world req/s, p99 < 20 ms at 50 connections; the storm in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import claimed_devices, tenant
from httpload import LoadResult, free_port, run_load, start_api, start_hello_world

HOOK_TOKEN = "dev-only-mqtt-hook-token-change-me-0123456789"


def median(results: list[LoadResult]) -> LoadResult:
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


async def main_async(args: argparse.Namespace) -> None:
    api_port, hello_port = free_port(), free_port()
    # The hooks are on the internal listener: the same port as the API here, so one base URL.
    api = start_api(api_port, IOT_DEVICE_CACHE_TTL_S="60", IOT_METRICS_PORT=str(api_port))
    hello = start_hello_world(hello_port)
    base = f"http://127.0.0.1:{api_port}"
    try:
        async with aiohttp.ClientSession() as session:
            headers = await tenant(session, base)
            started = time.perf_counter()
            devices = await claimed_devices(session, base, headers, args.storm)
            print(
                f"set-up: {len(devices)} devices provisioned, claimed and given secrets "
                f"in {time.perf_counter() - started:.1f} s"
            )
        hook = {"Authorization": f"Bearer {HOOK_TOKEN}", "Content-Type": "application/json"}
        bodies = [
            orjson.dumps(
                {
                    "clientid": d.device_id,
                    "username": d.device_id,
                    "password": d.secret,
                    "peerhost": "10.0.0.1",
                }
            )
            for d in devices
        ]

        # Reconnect storm: every device once, cache cold, 50 in flight.
        storm_started = time.perf_counter()
        sem = asyncio.Semaphore(50)
        allowed = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:

            async def one(body: bytes) -> None:
                nonlocal allowed
                async with (
                    sem,
                    session.post(base + "/api/v1/mqtt/authn", data=body, headers=hook) as response,
                ):
                    allowed += (await response.json())["result"] == "allow"

            await asyncio.gather(*(one(b) for b in bodies))
        storm_s = time.perf_counter() - storm_started
        print(
            f"reconnect storm: {len(bodies)} devices authenticated in {storm_s:.2f} s "
            f"({allowed} allowed, {len(bodies) / storm_s:.0f}/s)"
        )

        hello_runs, hook_runs = [], []
        for run in range(args.runs):
            hello_result = await run_load(
                "hello-world (baseline)",
                lambda _i: ("GET", f"http://127.0.0.1:{hello_port}/", {}, None),
                50,
                args.seconds,
            )
            hook_result = await run_load(
                "POST /api/v1/mqtt/authn",
                lambda i: ("POST", base + "/api/v1/mqtt/authn", hook, bodies[i % len(bodies)]),
                50,
                args.seconds,
            )
            print(f"run {run + 1}: {hello_result.line()}\nrun {run + 1}: {hook_result.line()}")
            hello_runs.append(hello_result)
            hook_runs.append(hook_result)
        h, k = median(hello_runs), median(hook_runs)
        ratio = k.rate / h.rate
        print(
            f"\nmedian: hook {k.rate:.0f} req/s p99 {k.percentile(99):.2f} ms; hello-world "
            f"{h.rate:.0f} req/s; ratio {ratio:.0%}"
        )
        verdict = "PASS" if ratio >= 0.4 and k.percentile(99) < 20 else "FAIL"
        print(f"target >= 40% of hello-world and p99 < 20 ms -> {verdict}")
    finally:
        for process in (api, hello):
            process.terminate()
            process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--storm", type=int, default=10_000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
