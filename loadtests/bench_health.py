"""Health endpoints latency on one API process, beside an aiohttp hello-world baseline.

    .venv/bin/python loadtests/bench_health.py [--concurrency 50] [--seconds 10] [--runs 3]

Needs the local services and a migrated `iotcore` database (`bash ops/services.sh` and
`iotcore migrate up` with the ops/lib.sh URLs). Target: p95 under 50 ms with 50 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpload import LoadResult, free_port, run_load, start_api, start_hello_world


async def measure(args: argparse.Namespace) -> None:
    api_port, hello_port = free_port(), free_port()
    api, hello = start_api(api_port), start_hello_world(hello_port)
    try:
        targets = {
            "hello-world (baseline)": f"http://127.0.0.1:{hello_port}/",
            "GET /api/v1/health/live": f"http://127.0.0.1:{api_port}/api/v1/health/live",
            "GET /api/v1/health/ready": f"http://127.0.0.1:{api_port}/api/v1/health/ready",
        }
        runs: dict[str, list[LoadResult]] = {name: [] for name in targets}
        for run in range(args.runs):
            for name, url in targets.items():
                result = await run_load(
                    name, lambda _i, url=url: ("GET", url, {}, None), args.concurrency, args.seconds
                )
                runs[name].append(result)
                print(f"run {run + 1}: {result.line()}", flush=True)
        print(f"\nmedian of {args.runs} runs, {args.concurrency} concurrent clients:")
        for results in runs.values():
            ordered = sorted(results, key=lambda r: r.percentile(95))
            print(ordered[len(ordered) // 2].line())
        ready_p95 = sorted(r.percentile(95) for r in runs["GET /api/v1/health/ready"])[
            args.runs // 2
        ]
        live_p95 = sorted(r.percentile(95) for r in runs["GET /api/v1/health/live"])[args.runs // 2]
        verdict = "PASS" if max(ready_p95, live_p95) < 50 else "FAIL"
        print(f"target p95 < 50 ms: live {live_p95:.2f} ms, ready {ready_p95:.2f} ms -> {verdict}")
    finally:
        for process in (api, hello):
            process.terminate()
            process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
