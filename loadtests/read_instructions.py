"""Instructions per dashboard read request in the API process, counted by callgrind: a
figure that holds still on a loaded machine, where bench_read.py's rates do not.

Uses the seeded database of bench_read.py (run it once with --keep first). The API runs under
`valgrind --tool=callgrind` with instrumentation off; after log-in and a warm-up of every
endpoint, counting is switched on for exactly --requests requests of one endpoint from
--clients connections, then off and dumped, endpoint after endpoint. The HTTP floor
(/health/live) is counted the same way. The device cache TTL is 600 s unless
IOT_DEVICE_CACHE_TTL_S says otherwise: at valgrind's pace the default 5 s would add look-ups.

    .venv/bin/python loadtests/read_instructions.py [--requests 300] [--clients 8]
        [--only health,latest,raw,agg_day,agg_week] [--profile out.prof] [--cpu SECONDS]

--profile runs the API under cProfile instead (no counts; the profile of all the requests,
written when the API exits), for finding where the instructions go. --cpu runs it plainly
and gives its CPU time per request over that many seconds of lean load per endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

# This checkout's iotcore, not the one the shared venv's editable install points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpload import free_port, start_api
from read import database
from read.database import PASSWORD
from read.lean_http import run_lean_load

DB = "iotcore_bench"
SERVER = database.BenchServer(5432, DB)
OWNER = f"postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/{DB}"
SERVICE = f"postgresql://iotcore_service:iotcore-dev@127.0.0.1:5432/{DB}"


def counting(pid: int, on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(pid)],
        check=True,
        capture_output=True,
    )


def dump(pid: int, out: Path, label: str) -> None:
    """Write the counts so far to a new part file, labelled; waits until callgrind has (it
    acts on requests when the program next runs, and a later request would override)."""
    parts = len(list(out.parent.glob(out.name + ".*")))
    subprocess.run(["callgrind_control", "-d", label, str(pid)], check=True, capture_output=True)
    while len(list(out.parent.glob(out.name + ".*"))) == parts:
        time.sleep(0.2)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def totals(out: Path) -> dict[str, int]:
    """Instructions of each dump, by its label (callgrind writes one file per dump)."""
    found: dict[str, int] = {}
    for part in sorted(out.parent.glob(out.name + ".*")):
        text = part.read_text(errors="replace")
        label = re.search(r"^desc: Trigger: (?:Client Request: |dump )?(.*)$", text, re.M)
        total = re.search(r"^totals:\s*(\d+)", text, re.M)
        if label and total:
            found[label[1].strip()] = int(total[1])
    return found


async def run_requests(
    session: aiohttp.ClientSession,
    base: str,
    path: Callable[[], str],
    headers: dict[str, str],
    total: int,
    clients: int,
) -> None:
    numbers = iter(range(total))

    async def worker() -> None:
        for _ in numbers:
            async with session.get(base + path(), headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{path()}: {response.status}")

    await asyncio.gather(*(worker() for _ in range(clients)))


async def main_async(args: argparse.Namespace) -> None:
    seeded = await database.find_seed(SERVER, 500, 3)
    if seeded is None:
        raise SystemExit("no seeded iotcore_bench: run bench_read.py --keep once")
    tmp = Path(tempfile.mkdtemp(prefix="read-instr-"))
    out = tmp / "api.callgrind"
    if args.cpu:
        wrapper = []
    elif args.profile:
        # This file again, as the profiling wrapper of the API's command (see main()).
        wrapper = [sys.executable, __file__, "--profiled-api", args.profile]
    else:
        wrapper = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
        ]
    port = free_port()
    env = {"IOT_DATABASE_URL": SERVICE, "IOT_DATABASE_OWNER_URL": OWNER}
    api = start_api(port, wrapper=wrapper, timeout_s=120 if args.profile else 600, **env)
    base = f"http://127.0.0.1:{port}"
    rng = random.Random(7)
    devices = seeded.devices
    now = datetime.now(UTC)
    day_ms = str(int((now - timedelta(hours=24)).timestamp() * 1000))
    week_ms = str(int((now - timedelta(days=7)).timestamp() * 1000))

    def device() -> str:
        return devices[rng.randrange(len(devices))]

    shapes: dict[str, Callable[[], str]] = {
        "health": lambda: "/api/v1/health/live",
        "latest": lambda: f"/api/v1/devices/{device()}/telemetry/latest",
        "raw": lambda: f"/api/v1/devices/{device()}/telemetry?metric=temp&limit=1000&order=desc",
        "agg_day": lambda: (
            f"/api/v1/devices/{device()}/telemetry/aggregate?metric=temp&bucket=5m&from={day_ms}"
        ),
        "agg_week": lambda: (
            f"/api/v1/devices/{device()}/telemetry/aggregate?metric=temp&bucket=1h&from={week_ms}"
        ),
    }
    only = args.only.split(",") if args.only else list(shapes)
    try:
        timeout = aiohttp.ClientTimeout(total=1800)
        connector = aiohttp.TCPConnector(limit=args.clients)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            body = {"email": seeded.email, "password": PASSWORD}
            async with session.post(base + "/api/v1/auth/login", json=body) as response:
                answer = await response.json()
                assert response.status == 200, answer
            headers = {"Authorization": "Bearer " + answer["access_token"]}
            for d in devices:  # every device's registry entry and latest hash, once
                async with session.get(
                    f"{base}/api/v1/devices/{d}/telemetry/latest", headers=headers
                ) as response:
                    assert response.status == 200, await response.text()
            for name in only:
                await run_requests(session, base, shapes[name], headers, args.warm, args.clients)
                if args.cpu:
                    before = cpu_s(api.pid)
                    result = await run_lean_load(
                        name, base, shapes[name], headers, args.clients, args.cpu
                    )
                    assert set(result.statuses) == {200}, result.statuses
                    spent = (cpu_s(api.pid) - before) * 1000 / len(result.latencies_ms)
                    print(f"{name:9} {spent:.4f} ms CPU/request ({result.rate:.0f} req/s)")
                    continue
                if not args.profile:
                    counting(api.pid, True)
                await run_requests(
                    session, base, shapes[name], headers, args.requests, args.clients
                )
                if not args.profile:
                    counting(api.pid, False)
                    dump(api.pid, out, name)
    finally:
        api.send_signal(signal.SIGINT)
        api.wait(120)
    if not args.profile and not args.cpu:
        counted = totals(out)
        for name in only:
            print(f"{name:9} {counted[name] / args.requests:12,.0f} instructions/request")


def profiled_api(out: str) -> None:
    """`--profiled-api OUT python -m iotcore.cli api`: that command under cProfile."""
    import cProfile

    from iotcore import cli

    sys.argv = ["iotcore", *sys.argv[sys.argv.index("iotcore.cli") + 1 :]]
    cProfile.runctx("cli.main()", {"cli": cli}, {}, out)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--profiled-api":
        profiled_api(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warm", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--only", default="")
    parser.add_argument("--profile", default="")
    parser.add_argument(
        "--cpu", type=float, default=0, help="seconds per endpoint: API CPU per request instead"
    )
    args = parser.parse_args()
    os.environ.setdefault("IOT_DEVICE_CACHE_TTL_S", "600")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
