"""Instructions per webhook request, counted by callgrind in the API process, beside an
aiohttp hello-world counted the same way: a figure that holds still on a loaded machine,
where rates and latencies do not (valgrind counts instructions, not seconds).

Each server runs under `valgrind --tool=callgrind` with instrumentation off; after set-up
and a warm-up (each device's first post, then --warm requests), counting is switched on for
exactly --requests requests from 64 connections spread over the devices, then off.

    .venv/bin/python loadtests/webhook_instructions.py [--requests 1000] [--devices 20]

Needs valgrind, the local services and a migrated database (IOT_DATABASE_URL and
IOT_DATABASE_OWNER_URL, as for bench_ingest.py). Takes a few minutes: under valgrind the API
serves some 20-30 requests a second. Set IOT_DEVICE_CACHE_TTL_S=60 to count the hot path
only (with the default 5 s, cache expiries at valgrind's pace add look-ups).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import claimed_devices, tenant
from httpload import HELLO_WORLD, free_port, spread, start_api, wait_http

CONNECTIONS = 64


def under_callgrind(out: Path) -> list[str]:
    """The command prefix: callgrind, counting nothing until told to."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


def instructions(out: Path) -> int:
    return int(re.search(r"^totals:\s*(\d+)", out.read_text(), re.M)[1])  # type: ignore[index]


def counting(pid: int, on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(pid)],
        check=True,
        capture_output=True,
    )


async def closed_loop(
    session: aiohttp.ClientSession,
    requests: list[tuple[str, str, dict[str, str], bytes | None]],
    total: int,
) -> None:
    """`total` requests from CONNECTIONS workers, each starting on a different request."""
    numbers = iter(range(total))

    async def worker(w: int) -> None:
        for k, _ in enumerate(numbers):
            method, url, headers, body = requests[spread(w * 1_000_000 + k, len(requests))]
            async with session.request(method, url, headers=headers, data=body) as response:
                await response.read()
                if response.status >= 300:
                    raise RuntimeError(f"{url}: {response.status}")

    await asyncio.gather(*(worker(w) for w in range(CONNECTIONS)))


async def counted(
    pid: int,
    session: aiohttp.ClientSession,
    requests: list[tuple[str, str, dict[str, str], bytes | None]],
    args: argparse.Namespace,
) -> None:
    """A warm-up, then exactly args.requests requests with callgrind counting."""
    await closed_loop(session, requests, args.warm)
    counting(pid, True)
    await closed_loop(session, requests, args.requests)
    counting(pid, False)


async def measure(args: argparse.Namespace, tmp: Path) -> None:
    timeout = aiohttp.ClientTimeout(total=900)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        # The webhook.
        port, out = free_port(), tmp / "api.callgrind"
        api = start_api(
            port,
            wrapper=under_callgrind(out),
            timeout_s=600,
            IOT_RATE_LIMIT_DEVICE_PER_S="100000",
            IOT_RATE_LIMIT_DEVICE_BURST="100000",
            IOT_RATE_LIMIT_TENANT_PER_S="1000000",
            IOT_RATE_LIMIT_TENANT_BURST="1000000",
        )
        try:
            base = f"http://127.0.0.1:{port}"
            devices = await claimed_devices(
                session, base, await tenant(session, base), args.devices
            )
            posts = [
                (
                    "POST",
                    base + "/api/v1/telemetry",
                    {
                        "Authorization": "Basic "
                        + base64.b64encode(f"{d.device_id}:{d.secret}".encode()).decode(),
                        "Content-Type": "application/json",
                    },
                    b'{"metrics": {"x": 1}}',
                )
                for d in devices
            ]
            for post in posts:  # each device's first post completes its secret rotation
                await closed_loop(session, [post], 1)
            await counted(api.pid, session, posts, args)
        finally:
            api.terminate()
            api.wait(300)
        webhook = instructions(out) / args.requests

        # The hello-world, counted the same way.
        port, out = free_port(), tmp / "hello.callgrind"
        hello = subprocess.Popen(
            [*under_callgrind(out), sys.executable, "-c", HELLO_WORLD, str(port), "uvloop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_http(url, 600)
            await counted(hello.pid, session, [("GET", url, {}, None)], args)
        finally:
            hello.terminate()
            hello.wait(300)
        baseline = instructions(out) / args.requests
    print(
        f"webhook: {webhook:,.0f} instructions/request; hello-world: {baseline:,.0f}; "
        f"ratio {baseline / webhook:.0%} (server side only, {args.requests} requests each, "
        f"{CONNECTIONS} connections, {args.devices} devices)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument(
        "--keep", type=Path, help="keep the callgrind files here (for callgrind_annotate)"
    )
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        asyncio.run(measure(args, args.keep))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(measure(args, Path(tmp)))


if __name__ == "__main__":
    main()
