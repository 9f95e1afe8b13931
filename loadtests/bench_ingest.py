"""MQTT QoS 1 to committed rows for one `iotcore ingest` process, against a bare aiomqtt
loop that only receives and counts, measured in the same run with the same publishers;
and the HTTP webhook against an aiohttp hello-world.

    .venv/bin/python loadtests/bench_ingest.py [--messages 200000] [--publishers 2]

Needs the local services, a migrated `iotcore` database and Mosquitto installed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import claimed_devices, tenant
from httpload import free_port, run_load, start_api, start_hello_world

HERE = Path(__file__).resolve().parent
OWNER_URL = os.environ.get(
    "IOT_DATABASE_OWNER_URL", "postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/iotcore"
)


def start_mosquitto(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 1000000\nmax_inflight_messages 0\n"
    )
    process = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)]
    )
    time.sleep(0.5)
    return process


def publishers(port: int, topics_file: Path, total: int, count: int, start_ms: int) -> list[Any]:
    share = total // count
    return [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "mqtt_publisher.py"),
                "127.0.0.1",
                str(port),
                str(topics_file),
                str(share),
                str(start_ms + i * share),
            ]
        )
        for i in range(count)
    ]


async def bare_loop(port: int, topics_file: Path, total: int, count: int) -> float:
    """The baseline: an aiomqtt subscriber that only receives and counts."""
    received = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier="bare-baseline") as client:
        await client.subscribe("tenants/+/devices/+/telemetry", qos=1)
        procs = publishers(port, topics_file, total, count, int(time.time() * 1000) - 10**8)
        started = time.perf_counter()
        async for _ in client.messages:
            received += 1
            if received >= total:
                break
        elapsed = time.perf_counter() - started
    for proc in procs:
        proc.wait(60)
    return received / elapsed


async def consumer_run(port: int, topics_file: Path, total: int, count: int) -> tuple[float, int]:
    conn = await asyncpg.connect(OWNER_URL)
    before = await conn.fetchval("SELECT count(*) FROM telemetry")
    metrics_port = free_port()
    env = dict(
        os.environ,
        IOT_MQTT_URL=f"mqtt://127.0.0.1:{port}",
        IOT_LOG_LEVEL="WARNING",
        IOT_METRICS_PORT=str(metrics_port),
        IOT_INGEST_CLIENT_ID=f"bench-{uuid.uuid4().hex[:6]}",
    )
    consumer = subprocess.Popen([sys.executable, "-m", "iotcore.cli", "ingest"], env=env)
    await asyncio.sleep(3)
    procs = publishers(port, topics_file, total, count, int(time.time() * 1000) - 2 * 10**8)
    started = time.perf_counter()
    rss = 0
    while True:
        stored = await conn.fetchval("SELECT count(*) FROM telemetry") - before
        status = Path(f"/proc/{consumer.pid}/status").read_text()
        rss = max(
            rss, int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
        )
        if stored >= 2 * total or time.perf_counter() - started > 300:
            break
        await asyncio.sleep(0.2)
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.wait(60)
    consumer.terminate()
    consumer.wait(10)
    await conn.close()
    return stored / 2 / elapsed, rss // 1024


async def main_async(args: argparse.Namespace) -> None:
    api_port, hello_port, mqtt_port = free_port(), free_port(), free_port()
    os.environ.setdefault("IOT_RATE_LIMIT_DEVICE_PER_S", "100000")
    os.environ.setdefault("IOT_RATE_LIMIT_TENANT_PER_S", "1000000")
    os.environ.setdefault("IOT_RATE_LIMIT_DEVICE_BURST", "100000")
    os.environ.setdefault("IOT_RATE_LIMIT_TENANT_BURST", "1000000")
    api = start_api(api_port)
    base = f"http://127.0.0.1:{api_port}"
    with tempfile.TemporaryDirectory() as tmp:
        mosquitto = start_mosquitto(mqtt_port, Path(tmp))
        try:
            async with aiohttp.ClientSession() as session:
                devices = await claimed_devices(session, base, await tenant(session, base), 100)
            topics_file = Path(tmp) / "topics"
            topics_file.write_text("\n".join(d.topic for d in devices))
            bare = await bare_loop(mqtt_port, topics_file, args.messages, args.publishers)
            print(f"bare aiomqtt loop (receive + count): {bare:,.0f} msg/s")
            rate, rss = await consumer_run(mqtt_port, topics_file, args.messages, args.publishers)
            print(
                f"iotcore ingest (QoS 1 to committed rows, 2 metrics/msg): {rate:,.0f} msg/s "
                f"= {2 * rate:,.0f} rows/s; {rate / bare:.0%} of the bare loop; peak RSS {rss} MB"
            )

            hello = start_hello_world(hello_port)
            auth = [
                {
                    "Authorization": "Basic "
                    + base64.b64encode(f"{d.device_id}:{d.secret}".encode()).decode(),
                    "Content-Type": "application/json",
                }
                for d in devices
            ]
            web = await run_load(
                "POST /api/v1/telemetry",
                lambda i: (
                    "POST",
                    base + "/api/v1/telemetry",
                    auth[i % len(auth)],
                    b'{"metrics": {"x": 1}}',
                ),
                64,
                args.seconds,
            )
            baseline = await run_load(
                "hello-world (baseline)",
                lambda _i: ("GET", f"http://127.0.0.1:{hello_port}/", {}, None),
                64,
                args.seconds,
            )
            hello.terminate()
            print(web.line())
            print(baseline.line())
            print(
                f"webhook {web.rate:,.0f} req/s = {web.rate / baseline.rate:.0%} of hello-world, "
                f"p99 {web.percentile(99):.1f} ms"
            )
        finally:
            mosquitto.terminate()
            api.terminate()
            api.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
