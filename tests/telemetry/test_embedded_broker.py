"""The single node acks after commit: telemetry through the embedded broker is stored before
its PUBACK, survives a publisher's disconnect and a kill -9 of `iotcore run`, and needs no
settings beyond the database, Redis and the keys."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from iotcore.config import Settings
from iotcore.mqtt.broker.server import EmbeddedBroker
from iotcore.platform.context import Platform
from tests.conftest import (
    OWNER_URL,
    REDIS_URL,
    REPO_ROOT,
    RUN_ID,
    SERVICE_URL,
    free_port,
    with_database,
)
from tests.support.broker import embedded_broker
from tests.support.devices import DeviceCredentials, claimed_device
from tests.support.ingest import count_rows, readings
from tests.support.mqtt import PUBACK, RawClient, publish_packet
from tests.support.users import register

Client = TestClient  # type: ignore[type-arg]


async def publish_window(
    client: RawClient,
    topic: str,
    messages: dict[int, bytes],
    in_flight: int,
    dup: bool = False,
    on_ack: Callable[[int], None] | None = None,
) -> set[int]:
    """QoS 1 publishes (packet id -> payload) with up to `in_flight` unacknowledged; returns
    the ids acknowledged before everything was acked or the broker went away."""
    queue = list(messages.items())
    acked: set[int] = set()
    sent = 0
    while len(acked) < len(queue):
        while sent < len(queue) and sent - len(acked) < in_flight:
            packet_id, payload = queue[sent]
            try:
                client.send(publish_packet(topic, payload, 1, packet_id, dup=dup))
            except ConnectionError:
                return acked
            sent += 1
        packet = await client.read(timeout=30)
        if packet is None:
            return acked
        assert packet.kind == PUBACK, packet
        acked.add(packet.packet_id)
        if on_ack is not None:
            on_ack(len(acked))
    return acked


@pytest.fixture(scope="module")
async def broker(platform: Platform) -> AsyncIterator[EmbeddedBroker]:
    async with embedded_broker(platform) as embedded:
        yield embedded


async def test_5000_in_flight_then_disconnect_after_last_puback_stores_all(
    client: Client, settings: Settings, broker: EmbeddedBroker, owner_conn: Any
) -> None:
    device = await claimed_device(client, settings, await register(client))
    payloads = readings(5000, int(time.time() * 1000) - 3_600_000)
    publisher = await RawClient.open(settings.broker_host, broker.port)
    code, _ = await publisher.connect(
        device.device_id, username=device.device_id, password=device.secret
    )
    assert code == 0
    acked = await publish_window(
        publisher, device.telemetry_topic, {i + 1: p for i, p in enumerate(payloads)}, 1000
    )
    publisher.close()  # right after the last PUBACK, no DISCONNECT
    assert len(acked) == 5000
    # No waiting: a PUBACK means committed.
    assert await count_rows(owner_conn, device.device_id) == 10_000


# ------------------------------------------------------------------ `iotcore run` as a process


def minimal_environment(database: str, http_port: int, broker_port: int) -> dict[str, str]:
    """Only the database, Redis and the keys (plus the ports and a Redis prefix of its own,
    since other test runs share this machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    env.update(
        IOT_DATABASE_URL=with_database(SERVICE_URL, database),
        IOT_DATABASE_OWNER_URL=with_database(OWNER_URL, database),
        IOT_REDIS_URL=REDIS_URL,
        IOT_REDIS_PREFIX=f"iottest:{RUN_ID}:{database}:run:",
        IOT_JWT_KEYS="k1:" + "j" * 40,
        IOT_JWT_SIGNING_KID="k1",
        IOT_MANUFACTURING_KEYS="m1:" + "m" * 40,
        IOT_MANUFACTURING_SIGNING_KEY_ID="m1",
        IOT_HTTP_PORT=str(http_port),
        IOT_BROKER_PORT=str(broker_port),
        IOT_METRICS_PORT=str(free_port()),
    )
    return env


class RunProcess:
    """`iotcore run` in a child process, restartable with the same environment."""

    def __init__(self, database: str) -> None:
        self.http_port, self.broker_port = free_port(), free_port()
        self.env = minimal_environment(database, self.http_port, self.broker_port)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="iotcore-run-", suffix=".log")[1])

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "iotcore.cli", "run"],
                env=self.env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, self.log.read_text()[-4000:]
                try:
                    url = f"http://127.0.0.1:{self.http_port}/api/v1/health/ready"
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError("iotcore run did not become ready: " + self.log.read_text()[-4000:])

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
async def run_process(database: str) -> AsyncIterator[RunProcess]:
    node = RunProcess(database)
    await node.start()
    try:
        yield node
    finally:
        node.stop()


async def device_of(node: RunProcess, settings: Settings) -> DeviceCredentials:
    # The child's keys, so that provisioning is signed with what it verifies.
    child = settings.model_copy(
        update={
            "manufacturing_keys": SecretStr(node.env["IOT_MANUFACTURING_KEYS"]),
            "manufacturing_signing_key_id": "m1",
        }
    )
    async with aiohttp.ClientSession(f"http://127.0.0.1:{node.http_port}") as http:
        owner = await register(http)  # type: ignore[arg-type]
        return await claimed_device(http, child, owner)  # type: ignore[arg-type]


async def test_iotcore_run_with_only_database_redis_and_keys_stores_mqtt_telemetry(
    settings: Settings, run_process: RunProcess, owner_conn: Any
) -> None:
    device = await device_of(run_process, settings)
    publisher = await RawClient.open("127.0.0.1", run_process.broker_port)
    code, _ = await publisher.connect(
        device.device_id, username=device.device_id, password=device.secret
    )
    assert code == 0
    payloads = readings(20, int(time.time() * 1000) - 60_000)
    acked = await publish_window(
        publisher, device.telemetry_topic, {i + 1: p for i, p in enumerate(payloads)}, 20
    )
    publisher.close()
    assert len(acked) == 20
    assert await count_rows(owner_conn, device.device_id) == 40


@pytest.mark.slow
async def test_kill_9_of_iotcore_run_mid_stream_stores_every_message_once(
    settings: Settings, run_process: RunProcess, owner_conn: Any
) -> None:
    device = await device_of(run_process, settings)
    total = 5000
    messages = {
        i + 1: p for i, p in enumerate(readings(total, int(time.time() * 1000) - 7_200_000))
    }
    login = {"username": device.device_id, "password": device.secret, "clean_session": False}

    publisher = await RawClient.open("127.0.0.1", run_process.broker_port)
    assert (await publisher.connect(device.device_id, **login))[0] == 0

    def kill_midway(acked: int) -> None:
        if acked == 2000:
            run_process.kill()

    acked = await publish_window(
        publisher, device.telemetry_topic, messages, 200, on_ack=kill_midway
    )
    publisher.close()
    assert run_process.process is not None and run_process.process.returncode == -signal.SIGKILL
    stored_at_kill = await count_rows(owner_conn, device.device_id)
    assert 0 < stored_at_kill < 2 * total, "the kill landed mid-stream"
    assert stored_at_kill >= 2 * len(acked), "every acknowledged message was committed"

    await run_process.start()
    publisher = await RawClient.open("127.0.0.1", run_process.broker_port)
    assert (await publisher.connect(device.device_id, **login))[0] == 0
    unacked = {i: p for i, p in messages.items() if i not in acked}
    # Everything not acknowledged goes again (MQTT 3.1.1 4.4: resent with DUP on reconnect).
    again = await publish_window(publisher, device.telemetry_topic, unacked, 200, dup=True)
    publisher.close()
    assert again == set(unacked)
    assert await count_rows(owner_conn, device.device_id) == 2 * total
    distinct = await owner_conn.fetchval(
        "SELECT count(DISTINCT (metric, ts)) FROM telemetry WHERE device_id = $1",
        device.device_id,
    )
    assert distinct == 2 * total
