"""The MQTT consumer: a shared subscription to every device's telemetry, QoS 1, a persistent
session, and each message acknowledged only after its rows are committed.

aiomqtt does not expose manual acknowledgements, so the consumer switches them on in the
paho client underneath and acks with paho's `ack(mid, qos)` from the writer's callback.
When Postgres is down the writer holds its batch, the queue fills, the consumer stops
reading, nothing is acked, and the broker keeps the messages for the persistent session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iotcore.config import Settings
from iotcore.devices.service import DeviceRegistry
from iotcore.platform.context import Platform
from iotcore.telemetry.service import TelemetryIngest
from iotcore.telemetry.writer import TRANSIENT, Submission, TelemetryWriter, WriteResult

log = logging.getLogger("iotcore.ingest")
TOPIC = "tenants/+/devices/+/telemetry"


def subscription(settings: Settings) -> str:
    if settings.mqtt_shared_subscription:
        return f"$share/{settings.mqtt_share_group}/{TOPIC}"
    return TOPIC


class Consumer:
    def __init__(self, platform: Platform, ingest: TelemetryIngest) -> None:
        self._settings = platform.settings
        self._ingest = ingest
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    def _client(self) -> aiomqtt.Client:
        settings = self._settings
        url = urlsplit(settings.mqtt_url)
        v5 = settings.mqtt_protocol_v5
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.ingest_session_expiry_s
            # Unacked messages the broker may have in flight to us: the real bound on memory
            # and on what is redelivered after a crash.
            properties.ReceiveMaximum = settings.ingest_receive_maximum
        # A persistent session: MQTT 5 "clean start" off, or MQTT 3.1.1 "clean session" off.
        session: dict[str, Any] = {"clean_start": False} if v5 else {"clean_session": False}
        client = aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or 1883,
            username=settings.ingest_mqtt_username,
            password=settings.ingest_mqtt_password.get_secret_value(),
            identifier=settings.ingest_client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            properties=properties,
            keepalive=30,
            timeout=10,
            **session,
        )
        client._client.manual_ack_set(True)
        return client

    async def _consume(self, client: aiomqtt.Client) -> None:
        paho = client._client
        await client.subscribe(subscription(self._settings), qos=1)
        self.connected = True
        log.info("ingest subscribed", extra={"topic": subscription(self._settings)})
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            submission = await self._submission(str(message.topic), payload)
            future = await self._ingest.writer.submit(submission)
            if message.qos > 0:
                mid, qos = message.mid, message.qos

                def ack(done: asyncio.Future[WriteResult], mid: int = mid, qos: int = qos) -> None:
                    # Only after the commit. A refused batch is acked too: it is recorded
                    # as rejects, and redelivering it would fail the same way forever.
                    if not done.cancelled():
                        paho.ack(mid, qos)

                future.add_done_callback(ack)

    async def _submission(self, topic: str, payload: bytes) -> Submission:
        """Checking the device needs Postgres (or the cache): while it is away, wait and
        retry, holding the stream (and the acks) rather than dropping the message."""
        delay = 0.1
        while True:
            try:
                return await self._ingest.from_mqtt(topic, payload)
            except TRANSIENT as exc:
                log.warning("device check failed; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                async with self._client() as client:
                    delay = 0.5
                    await self._consume(client)
            except aiomqtt.MqttError as exc:
                self.connected = False
                log.warning("mqtt connection lost; reconnecting", extra={"error": str(exc)})
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 30)

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="mqtt-consumer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def readiness(self) -> None:
        if not self.connected:
            raise RuntimeError("not connected to the MQTT broker")
        if not self._ingest.writer.healthy:
            raise RuntimeError("the writer cannot reach Postgres; acks are held")


class IngestRole:
    """`iotcore ingest`: its own device registry and writer, sharing the process platform."""

    def __init__(self, platform: Platform, ingest: TelemetryIngest | None = None) -> None:
        self._owns_ingest = ingest is None
        if ingest is None:
            registry = DeviceRegistry(platform)
            ingest = TelemetryIngest(platform, registry, TelemetryWriter(platform))
        self.ingest = ingest
        self.consumer = Consumer(platform, ingest)
        platform.readiness_checks["ingest"] = self.consumer.readiness

    async def start(self) -> None:
        if self._owns_ingest:
            await self.ingest.registry.start()
            await self.ingest.writer.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        if self._owns_ingest:
            await self.ingest.writer.stop()
            await self.ingest.registry.close()
