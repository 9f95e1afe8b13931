"""`iotcore ingest` refuses to start against a broker that does not serve shared
subscriptions while it is configured to use them, instead of reporting ready and storing
nothing; against one that does, it starts."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from iotcore.config import Settings
from tests.conftest import free_port, read_log, start_iotcore
from tests.support.ingest import consumer_settings, wait_ready

# amqtt grants `$share/...` as a literal filter that never matches: a real broker without
# shared subscriptions (a test-only dependency).
AMQTT = """
import asyncio, sys
from amqtt.broker import Broker

async def main():
    listener = {"type": "tcp", "bind": f"127.0.0.1:{sys.argv[1]}"}
    plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    await Broker({"listeners": {"default": listener}, "plugins": plugins}).start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
def broker_without_share() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", AMQTT, str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(5)


async def test_ingest_refuses_to_start_without_shared_subscriptions(
    settings: Settings, broker_without_share: str
) -> None:
    ingest = consumer_settings(
        settings, mqtt_url=broker_without_share, mqtt_shared_subscription=True
    )
    consumer = start_iotcore(ingest, "ingest")
    try:
        deadline = time.monotonic() + 60
        while consumer.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert consumer.returncode == 2, read_log(consumer)
        assert "does not support $share" in read_log(consumer)
    finally:
        consumer.kill()
        consumer.wait(5)


async def test_ingest_starts_when_the_broker_serves_shared_subscriptions(
    settings: Settings,
) -> None:
    # A share group of its own: its persistent session stays in the group after it stops,
    # and Mosquitto would keep handing it a share of other tests' messages.
    ingest = consumer_settings(
        settings, mqtt_shared_subscription=True, mqtt_share_group=f"probe-{time.time_ns()}"
    )
    consumer = start_iotcore(ingest, "ingest")
    try:
        await wait_ready(ingest.metrics_port)
        assert consumer.poll() is None
    finally:
        consumer.terminate()
        consumer.wait(10)
