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
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import Consumer, lag_percentile, start_mosquitto
from fixtures import BenchDevice, claimed_devices, tenant
from httpload import free_port, wait_http

from iotcore.platform.migrations import Migrator

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OWNER = "postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/{db}"
SERVICE = "postgresql://iotcore_service:iotcore-dev@127.0.0.1:5432/{db}"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kb = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
    return kb / 1024


def devices_file(devices: list[BenchDevice], path: Path) -> Path:
    path.write_bytes(
        b"\n".join(
            orjson.dumps({"device_id": d.device_id, "secret": d.secret, "topic": d.topic})
            for d in devices
        )
    )
    return path


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


class Database:
    def __init__(self) -> None:
        self.name = f"iotcore_bench_{uuid.uuid4().hex[:8]}"

    async def create(self) -> None:
        conn = await asyncpg.connect(OWNER.format(db="postgres"))
        try:
            await conn.execute(f"CREATE DATABASE {self.name}")
        finally:
            await conn.close()
        Migrator(OWNER.format(db=self.name), REPO / "migrations").up()

    async def drop(self) -> None:
        conn = await asyncpg.connect(OWNER.format(db="postgres"))
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        finally:
            await conn.close()


def environment(db: str, **extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        IOT_DATABASE_URL=SERVICE.format(db=db),
        IOT_DATABASE_OWNER_URL=OWNER.format(db=db),
        IOT_REDIS_PREFIX=f"bench:{uuid.uuid4().hex[:8]}:",
        IOT_LOG_LEVEL="WARNING",
        IOT_REGISTER_MAX_PER_IP="100000",
        IOT_CLAIM_MAX_FAILURES="1000000",  # 32 claims in flight count as attempts
        **extra,
    )


async def main_async(args: argparse.Namespace) -> None:
    db = Database()
    await db.create()
    http_port, broker_port, mosquitto_port = free_port(), free_port(), free_port()
    node = subprocess.Popen(
        [sys.executable, "-m", "iotcore.cli", "run"],
        env=environment(
            db.name,
            IOT_HTTP_PORT=str(http_port),
            IOT_BROKER_PORT=str(broker_port),
            IOT_METRICS_PORT=str(free_port()),
            IOT_BROKER_MAX_CONNECTIONS=str(args.idle_devices + args.devices + 100),
        ),
    )
    base = f"http://127.0.0.1:{http_port}"
    report: dict[str, Any] = {"cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        mosquitto = start_mosquitto(mosquitto_port, Path(tmp))
        consumer: Consumer | None = None
        try:
            wait_http(base + "/api/v1/health/ready", 60)
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
            node.terminate()
            node.wait(20)
            await db.drop()
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
