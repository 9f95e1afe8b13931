"""MQTT QoS 1 to committed rows for one `iotcore ingest` process, and the HTTP webhook,
each against baselines measured in the same run on the same machine:

- (a) a bare aiomqtt subscriber that only receives and counts;
- (b) `mosquitto_sub` piped into a minimal batched insert (baseline_insert.py);
- then `iotcore ingest`: capacity (N messages offered as fast as the broker takes them),
  a sustained run at --rate for --duration seconds with the publish-to-commit lag from the
  consumer's own histogram, and an overload run at twice the capacity for the same time
  (peak RSS, then everything stored once the load stops);
- the webhook (64 connections, single-point bodies) against an aiohttp hello-world.

The load comes from mqtt_load.py, a raw-socket QoS 1 generator, so that publishing costs
the 2 cores little. 100 real devices, provisioned and claimed through the API.

    .venv/bin/python loadtests/bench_ingest.py [--messages 200000] [--rate 12000] [--duration 60]

Needs the local services, a migrated `iotcore` database and Mosquitto installed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
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
import orjson
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import claimed_devices, tenant
from httpload import (
    free_port,
    process_cpu_s,
    run_load,
    spread,
    start_api,
    start_hello_world,
)

HERE = Path(__file__).resolve().parent
INFLIGHT = 10_000
OWNER_URL = os.environ.get(
    "IOT_DATABASE_OWNER_URL", "postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/iotcore"
)


def start_mosquitto(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    # The in-flight window per client bounds what the consumer holds unacked (its memory).
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_queued_messages 5000000\nmax_inflight_messages {INFLIGHT}\n"
    )
    process = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)]
    )
    time.sleep(0.5)
    return process


def load(port: int, topics_file: Path, *args: str) -> subprocess.Popen[bytes]:
    """The raw-socket QoS 1 generator (mqtt_load.py); its JSON summary goes to stdout."""
    command = [sys.executable, str(HERE / "mqtt_load.py"), "--port", str(port)]
    command += ["--topics", str(topics_file), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE)


def summary(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=600)
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return result


async def bare_loop(port: int, topics_file: Path, total: int) -> float:
    """(a) an aiomqtt subscriber that only receives and counts (it acks on receipt)."""
    received = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier="bare-baseline") as client:
        await client.subscribe("tenants/+/devices/+/telemetry", qos=1)
        generator = load(port, topics_file, "--count", str(total))
        async for _ in client.messages:
            received += 1
            if received >= total:
                break
        finished = time.time()
    return float(total / (finished - summary(generator)["started_at"]))


def sub_insert_baseline(port: int, topics_file: Path, total: int) -> float:
    """(b) `mosquitto_sub` piped into a minimal batched insert (baseline_insert.py)."""
    sub = subprocess.Popen(
        [
            shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub",
            *("-h", "127.0.0.1", "-p", str(port), "-q", "1", "-C", str(total)),
            *("-t", "tenants/+/devices/+/telemetry", "-F", "%t %p"),
        ],
        stdout=subprocess.PIPE,
    )
    inserter = subprocess.Popen(
        [sys.executable, str(HERE / "baseline_insert.py"), OWNER_URL],
        stdin=sub.stdout,
        stdout=subprocess.PIPE,
    )
    assert sub.stdout is not None
    sub.stdout.close()
    time.sleep(0.5)
    started = summary(load(port, topics_file, "--count", str(total)))["started_at"]
    done = summary(inserter)
    assert done["messages"] == total, done
    return float(total / (done["finished_at"] - started))


class Consumer:
    """One `iotcore ingest` process, watched through its Prometheus endpoint and /proc."""

    def __init__(self, port: int) -> None:
        self.metrics_port = free_port()
        env = dict(
            os.environ,
            IOT_MQTT_URL=f"mqtt://127.0.0.1:{port}",
            IOT_LOG_LEVEL="WARNING",
            IOT_METRICS_PORT=str(self.metrics_port),
            IOT_INGEST_CLIENT_ID=f"bench-{uuid.uuid4().hex[:6]}",
        )
        self.process = subprocess.Popen([sys.executable, "-m", "iotcore.cli", "ingest"], env=env)
        self.peak_rss_mb = 0.0

    async def ready(self, session: aiohttp.ClientSession) -> None:
        url = f"http://127.0.0.1:{self.metrics_port}/api/v1/health/ready"
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError("iotcore ingest did not become ready")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kb = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
        self.peak_rss_mb = max(self.peak_rss_mb, kb / 1024)
        return kb / 1024

    async def scrape(
        self, session: aiohttp.ClientSession
    ) -> tuple[float, list[tuple[float, float]]]:
        """(rows stored over MQTT, [(le, cumulative count)] of the publish-to-commit lag)."""
        async with session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as response:
            text = await response.text()
        stored, buckets = 0.0, []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("transport") != "mqtt":
                    continue
                if sample.name == "iotcore_ingest_messages_total" and (
                    sample.labels.get("outcome") == "stored"
                ):
                    stored = sample.value
                if sample.name == "iotcore_ingest_publish_lag_seconds_bucket":
                    buckets.append((float(sample.labels["le"]), sample.value))
        return stored, sorted(buckets)

    async def wait_stored(
        self, session: aiohttp.ClientSession, rows: float, timeout: float
    ) -> tuple[float, float]:
        """Poll until `rows` are stored; (wall time it was seen, rows stored)."""
        deadline = time.time() + timeout
        while True:
            stored, _ = await self.scrape(session)
            self.rss_mb()
            if stored >= rows or time.time() > deadline:
                return time.time(), stored
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


def lag_percentile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float:
    """The upper bound of the histogram bucket holding the q-th percentile of this run."""
    start = dict(before)
    counts = [(le, n - start.get(le, 0.0)) for le, n in after]
    total = counts[-1][1]
    for le, n in counts:
        if n >= q * total:
            return le
    return math.inf


async def _sustained(
    consumer: Consumer,
    session: aiohttp.ClientSession,
    port: int,
    topics_file: Path,
    args: argparse.Namespace,
    out: dict[str, Any],
) -> dict[str, Any]:
    """The target rate for the given time, then the publish-to-commit lag of that run."""
    base, lag_before = await consumer.scrape(session)
    offered = summary(
        load(port, topics_file, "--rate", str(args.rate), "--seconds", str(args.duration))
    )
    seen, stored = await consumer.wait_stored(session, base + 2 * offered["sent"], 300)
    _, lag_after = await consumer.scrape(session)
    out["sustained"] = {
        "offered": offered["sent"] / offered["seconds"],
        "stored_messages": (stored - base) / 2,
        "sent": offered["sent"],
        "rate": (stored - base) / 2 / (seen - offered["started_at"]),
        "p50": lag_percentile(lag_before, lag_after, 0.50),
        "p99": lag_percentile(lag_before, lag_after, 0.99),
        "rss": consumer.peak_rss_mb,
    }
    return out


async def consumer_runs(
    session: aiohttp.ClientSession, port: int, topics_file: Path, args: argparse.Namespace
) -> dict[str, Any]:
    consumer = Consumer(port)
    out: dict[str, Any] = {}
    try:
        await consumer.ready(session)
        # Capacity: N messages offered as fast as the broker takes them.
        if args.capacity:  # given: skip the capacity run
            out["capacity"] = args.capacity
            return await _sustained(consumer, session, port, topics_file, args, out)
        base, _ = await consumer.scrape(session)
        generator = load(port, topics_file, "--count", str(args.messages))
        if args.py_spy:  # where the consumer's time goes, for whoever tunes it
            subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-f",
                    "raw",
                    "-r",
                    "200",
                    "-d",
                    "10",
                    "-o",
                    args.py_spy,
                    "-p",
                    str(consumer.process.pid),
                ]
            )
        started = summary(generator)["started_at"]
        seen, stored = await consumer.wait_stored(session, base + 2 * args.messages, 300)
        out["capacity"] = (stored - base) / 2 / (seen - started)

        await _sustained(consumer, session, port, topics_file, args, out)

        # Overload: twice the measured capacity for the same time; memory must stay bounded
        # (the broker holds the backlog), and once the load stops, everything is stored.
        consumer.peak_rss_mb = 0
        base, _ = await consumer.scrape(session)
        over_rate = 2 * out["capacity"]
        generators = [
            load(
                port,
                topics_file,
                *("--rate", str(over_rate / 2), "--seconds", str(args.duration)),
                *("--shard", f"{i}/2"),  # devices apart, so no two readings share a ts
            )
            for i in range(2)
        ]
        while any(g.poll() is None for g in generators):
            consumer.rss_mb()
            await asyncio.sleep(0.25)
        offered_list = [summary(g) for g in generators]
        sent = sum(o["sent"] for o in offered_list)
        _, stored = await consumer.wait_stored(session, base + 2 * sent, 600)
        out["overload"] = {
            "offered": sent / max(o["seconds"] for o in offered_list),
            "sent": sent,
            "stored_messages": (stored - base) / 2,
            "rss": consumer.peak_rss_mb,
        }
    finally:
        consumer.stop()
    return out


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
                if not args.webhook_only:
                    if not args.capacity:
                        bare = await bare_loop(mqtt_port, topics_file, args.messages)
                        print(f"(a) bare aiomqtt loop, receive + count: {bare:,.0f} msg/s")
                        floor = sub_insert_baseline(mqtt_port, topics_file, args.messages)
                        print(
                            f"(b) mosquitto_sub | batched insert: {floor:,.0f} msg/s "
                            f"= {2 * floor:,.0f} rows/s"
                        )
                    runs = await consumer_runs(session, mqtt_port, topics_file, args)
                    capacity = runs["capacity"]
                    if not args.capacity:
                        print(
                            f"iotcore ingest capacity (QoS 1 to committed rows, 2 metrics/msg): "
                            f"{capacity:,.0f} msg/s = {2 * capacity:,.0f} rows/s; "
                            f"{capacity / bare:.0%} of (a), {capacity / floor:.0%} of (b)"
                        )
                    sus = runs["sustained"]
                    print(
                        f"sustained {args.duration:.0f} s at {sus['offered']:,.0f} msg/s offered: "
                        f"{sus['stored_messages']:,.0f} of {sus['sent']:,} stored, "
                        f"{sus['rate']:,.0f} msg/s to the last commit; publish-to-commit "
                        f"p50 <= {sus['p50'] * 1000:.0f} ms, p99 <= {sus['p99'] * 1000:.0f} ms; "
                        f"peak RSS {sus['rss']:.0f} MB"
                    )
                    if "overload" in runs:
                        over = runs["overload"]
                        print(
                            f"overload {args.duration:.0f} s at {over['offered']:,.0f} msg/s "
                            f"offered (2x capacity): peak RSS {over['rss']:.0f} MB; afterwards "
                            f"{over['stored_messages']:,.0f} of {over['sent']:,} stored"
                        )

                if args.skip_webhook:
                    return
                hello = start_hello_world(hello_port)
                auth = [
                    {
                        "Authorization": "Basic "
                        + base64.b64encode(f"{d.device_id}:{d.secret}".encode()).decode(),
                        "Content-Type": "application/json",
                    }
                    for d in devices
                ]

                def telemetry(i: int) -> tuple[str, str, dict[str, str], bytes]:
                    headers = auth[spread(i, len(auth))]
                    return "POST", base + "/api/v1/telemetry", headers, b'{"metrics": {"x": 1}}'

                # Warm-up: each device's first post completes its secret rotation and fills
                # the credential cache; steady state is what is measured.
                await run_load("warm-up", telemetry, 64, 2)
                cpu = process_cpu_s(api.pid)
                web = await run_load("POST /api/v1/telemetry", telemetry, 64, args.seconds)
                web_cpu = (process_cpu_s(api.pid) - cpu) / max(1, len(web.latencies_ms))
                cpu = process_cpu_s(hello.pid)
                baseline = await run_load(
                    "hello-world (baseline)",
                    lambda _i: ("GET", f"http://127.0.0.1:{hello_port}/", {}, None),
                    64,
                    args.seconds,
                )
                hello_cpu = (process_cpu_s(hello.pid) - cpu) / max(1, len(baseline.latencies_ms))
                hello.terminate()
                print(web.line())
                print(baseline.line())
                print(
                    f"webhook {web.rate:,.0f} req/s = "
                    f"{web.rate / baseline.rate:.0%} of hello-world, "
                    f"p99 {web.percentile(99):.1f} ms; server CPU per request: API "
                    f"{web_cpu * 1000:.3f} ms, hello-world {hello_cpu * 1000:.3f} ms"
                )
        finally:
            mosquitto.terminate()
            api.terminate()
            api.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=12_000, help="sustained msg/s")
    parser.add_argument("--duration", type=float, default=60, help="sustained/overload s")
    parser.add_argument("--skip-webhook", action="store_true")
    parser.add_argument("--webhook-only", action="store_true")
    parser.add_argument(
        "--capacity",
        type=float,
        default=0,
        help="skip the baselines and the capacity run: only the sustained run at --rate",
    )
    parser.add_argument("--py-spy", metavar="FILE", help="py-spy raw profile of the consumer")
    parser.add_argument("--seconds", type=float, default=10)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
