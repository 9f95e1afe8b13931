"""Presence where the broker has no hooks (Mosquitto; EMQX too, beside its events webhook):
the ingest process subscribes to every device's retained `status` topic, where each device
publishes `{"online": true}` on connect and leaves `{"online": false}` as its last will.

A plain subscription (not shared), clean session: every replica gets every status message
and the retained ones on (re)subscribe, which is how a restarted consumer catches up; the
database makes the duplicates harmless (iotcore/devices/presence.py). The topic names a
tenant and a device; with a broker that authenticates nobody, the database applies the
message only if that device exists, belongs to that tenant and holds credentials, so one
device's message can never move another's presence. Separate from the telemetry consumer:
nothing here touches the telemetry path.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiomqtt

from iotcore.devices.mqtt_access import STATUS_FILTER
from iotcore.devices.presence import Presence, PresenceEvent, now_ms, parse_status, status_topic
from iotcore.platform.backoff import Backoff
from iotcore.platform.context import Platform
from iotcore.platform.metrics import PRESENCE_EVENTS
from iotcore.platform.shutdown import stop_task

log = logging.getLogger("iotcore.ingest.status")


class StatusWatcher:
    def __init__(self, platform: Platform, presence: Presence | None = None) -> None:
        self._settings = platform.settings
        self._presence = presence or Presence(platform)
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def _client(self) -> aiomqtt.Client:
        settings = self._settings
        url = urlsplit(settings.mqtt_url)
        return aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or 1883,
            username=settings.ingest_mqtt_username,
            password=settings.ingest_mqtt_password.get_secret_value(),
            identifier=f"{settings.ingest_client_id}-status",
            keepalive=30,
            timeout=10,
            clean_session=True,
        )

    async def handle(self, topic: str, payload: bytes) -> str:
        """One status message; returns the outcome (for tests and metrics)."""
        ids = status_topic(topic)
        online = parse_status(payload)
        if ids is None or online is None:
            PRESENCE_EVENTS.labels("status", "ignored").inc()
            return "ignored"
        tenant_id, device_id = ids
        event = PresenceEvent(
            tenant_id, device_id, "status", online, now_ms(), datetime.now(UTC), "status"
        )
        return await self._presence.apply(event)

    async def run(self) -> None:
        backoff = Backoff(0.5, 30.0)
        while True:
            try:
                async with self._client() as client:
                    await client.subscribe(STATUS_FILTER, qos=1)
                    self.subscribed.set()
                    backoff.reset()
                    async for message in client.messages:
                        payload = message.payload
                        raw = payload if isinstance(payload, bytes) else str(payload).encode()
                        try:
                            await self.handle(message.topic.value, raw)
                        except Exception as exc:  # the database is away: the staleness rule
                            log.warning(
                                "status message not applied", extra={"error": type(exc).__name__}
                            )
            except aiomqtt.MqttError as exc:
                self.subscribed.clear()
                log.warning("status subscription lost; reconnecting", extra={"error": str(exc)})
            await backoff.wait()

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="presence-status")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        self.subscribed.clear()
