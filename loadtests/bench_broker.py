"""The single node's MQTT path against the external-broker path, in one run:

- embedded: `iotcore run` (API + embedded broker writing telemetry itself); N real devices
  (provisioned, claimed and given secrets through the API) each on its own authenticated
  connection, publishing QoS 1 (2 metrics a message) at --rate for --seconds. A PUBACK
  leaves after the commit, so acked msg/s is committed msg/s; PUBLISH-to-PUBACK p50/p99
  are measured by the devices; the database count is checked against the acks.
- external: the same devices and load against Mosquitto, with one `iotcore ingest`
  consuming; committed msg/s from the database count, PUBACK latency as Mosquitto gives
  it (on receipt: not durable), publish-to-commit from the consumer's histogram.
- idle: --idle-devices authenticated connections held on `iotcore run`, its RSS before
  and after.

Each phase records the machine's load average (the machine is shared).

    .venv/bin/python loadtests/bench_broker.py [--devices 1000] [--rate 5000] [--seconds 60]
        [--idle-devices 10000]

Needs the local services (ops/services.sh) and Mosquitto. Uses a database of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import Consumer, lag_percentile, start_mosquitto
from fixtures import (
    OWNER,
    claimed_devices,
    devices_file,
    environment,
    loadavg,
    rss_mb,
    start_node,
    tenant,
)
from httpload import free_port

HERE = Path(__file__).resolve().parent


def generator(port: int, devices: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(HERE / "mqtt_devices.py"), "--port", str(port)]
    return subprocess.Popen([*command, "--devices", str(devices), *args], stdout=subprocess.PIPE)


def result(process: subprocess.Popen[bytes], timeout: float = 900) -> dict[str, Any]:
    out, _ = process.communicate(timeout=timeout)
    answer: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return answer


async def rows(db: str) -> int:
    conn = await asyncpg.connect(OWNER.format(db=db))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM telemetry"))
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> None:
    node = await start_node(args.idle_devices + args.devices + 100)
    db, base, broker_port, mosquitto_port = node.db, node.base, node.broker_port, free_port()
    report: dict[str, Any] = {"cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        mosquitto = start_mosquitto(mosquitto_port, Path(tmp))
        consumer: Consumer | None = None
        try:
            async with aiohttp.ClientSession() as session:
                owner = await tenant(session, base)
                devices = await claimed_devices(session, base, owner, args.devices)
                file = devices_file(devices, Path(tmp) / "devices")
                print(f"{len(devices)} devices claimed", flush=True)

                # Embedded: ack after commit.
                report["rss_idle_mb"] = rss_mb(node.pid)
                report["load_embedded"] = loadavg()
                before = await rows(db.name)
                embedded = result(
                    generator(
                        broker_port, file, "--rate", str(args.rate), "--seconds", str(args.seconds)
                    )
                )
                embedded["stored_rows"] = await rows(db.name) - before
                embedded["rss_mb"] = rss_mb(node.pid)
                report["embedded"] = embedded
                print("embedded:", embedded, flush=True)

                # External: Mosquitto + iotcore ingest.
                os.environ.update(environment(db.name))
                consumer = Consumer(mosquitto_port)
                await consumer.ready(session)
                report["load_external"] = loadavg()
                before = await rows(db.name)
                _, lag_before = await consumer.scrape(session)
                external = result(
                    generator(
                        mosquitto_port,
                        file,
                        "--rate",
                        str(args.rate),
                        "--seconds",
                        str(args.seconds),
                    )
                )
                target = before + 2 * external["acked"]
                deadline = time.time() + 300
                while (count := await rows(db.name)) < target and time.time() < deadline:
                    await asyncio.sleep(0.05)
                committed_at = time.time()
                _, lag_after = await consumer.scrape(session)
                external["stored_rows"] = count - before
                external["committed_rate"] = round(
                    external["stored_rows"] / 2 / (committed_at - external["started_at"]), 1
                )
                external["publish_to_commit_p50_ms"] = (
                    lag_percentile(lag_before, lag_after, 0.5) * 1000
                )
                external["publish_to_commit_p99_ms"] = (
                    lag_percentile(lag_before, lag_after, 0.99) * 1000
                )
                external["consumer_rss_mb"] = consumer.rss_mb()
                report["external"] = external
                print("external:", external, flush=True)
                consumer.stop()
                consumer = None

                if args.idle_devices:
                    owner = await tenant(session, base)  # the first token may have expired
                    more = await claimed_devices(session, base, owner, args.idle_devices)
                    idle_file = devices_file(more, Path(tmp) / "idle")
                    report["load_idle"] = loadavg()
                    rss_before = rss_mb(node.pid)
                    holder = generator(broker_port, idle_file, "--idle", "30")
                    assert holder.stdout is not None
                    line = await asyncio.to_thread(holder.stdout.readline)
                    held = orjson.loads(line)
                    await asyncio.sleep(2)
                    report["idle"] = {
                        **held,
                        "rss_before_mb": rss_before,
                        "rss_after_mb": rss_mb(node.pid),
                    }
                    print("idle:", report["idle"], flush=True)
                    holder.kill()
                    holder.wait()
        finally:
            if consumer is not None:
                consumer.stop()
            mosquitto.terminate()
            await node.stop()
    print(orjson.dumps(report).decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--idle-devices", type=int, default=10_000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
