"""Benchmark set-up: a database of its own, the single node (`iotcore run`) on it, and through
the public API a tenant and claimed devices with secrets."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from httpload import free_port, wait_http

from iotcore.devices import signing
from iotcore.platform.migrations import Migrator
from iotcore.tools import factory_client

REPO = Path(__file__).resolve().parent.parent
DEV_FACTORY_KEY = ("mk1", "dev-only-manufacturing-key-change-me-012345")
OWNER = "postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/{db}"
SERVICE = "postgresql://iotcore_service:iotcore-dev@127.0.0.1:5432/{db}"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kb = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
    return kb / 1024


class Database:
    def __init__(self) -> None:
        self.name = f"iotcore_bench_{uuid.uuid4().hex[:8]}"

    async def create(self) -> None:
        await self._on_server(f"CREATE DATABASE {self.name}")
        Migrator(OWNER.format(db=self.name), REPO / "migrations").up()

    async def drop(self) -> None:
        await self._on_server(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    async def _on_server(self, sql: str) -> None:
        conn = await asyncpg.connect(OWNER.format(db="postgres"))
        try:
            await conn.execute(sql)
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


@dataclass
class Node:
    db: Database
    process: subprocess.Popen[bytes]
    base: str
    broker_port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)
        await self.db.drop()


async def start_node(max_connections: int) -> Node:
    """A fresh migrated database and `iotcore run` (API + embedded broker) on free ports,
    ready to serve; `stop()` ends the node and drops the database."""
    db = Database()
    await db.create()
    http_port, broker_port = free_port(), free_port()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "iotcore.cli", "run"],
            env=environment(
                db.name,
                IOT_HTTP_PORT=str(http_port),
                IOT_BROKER_PORT=str(broker_port),
                IOT_METRICS_PORT=str(free_port()),
                IOT_BROKER_MAX_CONNECTIONS=str(max_connections),
            ),
        )
    except BaseException:
        await db.drop()
        raise
    node = Node(db, process, f"http://127.0.0.1:{http_port}", broker_port)
    try:
        wait_http(node.base + "/api/v1/health/ready", 60)
    except BaseException:
        await node.stop()
        raise
    return node


@dataclass
class BenchDevice:
    device_id: str
    secret: str
    topic: str


async def tenant(session: aiohttp.ClientSession, base: str) -> dict[str, str]:
    body = {
        "email": f"bench-{uuid.uuid4().hex[:10]}@example.com",
        "password": "benchmark-password-" + uuid.uuid4().hex[:6],
        "tenant_name": "Bench",
    }
    async with session.post(base + "/api/v1/auth/register", json=body) as response:
        answer = await response.json()
        assert response.status == 201, answer
    return {"Authorization": "Bearer " + answer["access_token"]}


async def claimed_devices(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], count: int
) -> list[BenchDevice]:
    key_id, secret = DEV_FACTORY_KEY
    provisioned = []
    for start in range(0, count, 1000):
        serials = [f"BENCH-{uuid.uuid4().hex[:12]}" for _ in range(min(1000, count - start))]
        path, body, signed = factory_client.factory_request(
            key_id, secret, [{"serial_number": s, "model": "bench"} for s in serials]
        )
        async with session.post(base + path, data=body, headers=signed) as response:
            provisioned.extend((await response.json())["devices"])
    limiter = asyncio.Semaphore(32)

    async def claim(device: dict[str, str]) -> BenchDevice:
        async with limiter:
            body = {"serial_number": device["serial_number"], "claim_code": device["claim_code"]}
            async with session.post(
                base + "/api/v1/devices/claim", json=body, headers=headers
            ) as response:
                assert response.status == 200, await response.text()
            path, raw, signed = factory_client.device_request(
                device["device_id"],
                signing.decode_device_key(device["device_key"]),
                "/api/v1/devices/secret",
            )
            async with session.post(base + path, data=raw, headers=signed) as response:
                answer = await response.json()
        return BenchDevice(device["device_id"], answer["secret"], answer["mqtt"]["telemetry_topic"])

    return list(await asyncio.gather(*(claim(d) for d in provisioned)))


def devices_file(devices: list[BenchDevice], path: Path) -> Path:
    """One JSON line a device, as mqtt_devices.py --devices reads them."""
    path.write_bytes(
        b"\n".join(
            orjson.dumps({"device_id": d.device_id, "secret": d.secret, "topic": d.topic})
            for d in devices
        )
    )
    return path
