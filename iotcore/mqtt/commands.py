"""Commands through an external broker (EMQX, Mosquitto), by the ingest consumer, which holds
the MQTT connection: new commands and devices' connects heard on Postgres are published at
QoS 1 to `.../commands/{name}`, and replies arriving on the consumer's subscription are
stored before they are acknowledged. iotcore/commands/dispatch.py says what `sent` means
here and why a command may reach a device twice."""

from __future__ import annotations

import logging
import time
from uuid import UUID

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iotcore.commands.dispatch import Delivery
from iotcore.commands.schemas import delivery_payload
from iotcore.devices.mqtt_access import REPLIES_FILTER, topic_base
from iotcore.platform.context import Platform
from iotcore.platform.metrics import COMMAND_REPLIES_REJECTED
from iotcore.platform.types import parse_uuid

log = logging.getLogger("iotcore.ingest")
# A `sent` command without an answer is sent again on the device's next connect, at most
# this often (several consumer replicas hear the same connect: one of them sends it).
RESEND_AFTER_S = 5.0


def replies_subscription(shared: bool, group: str) -> str:
    return f"$share/{group}/{REPLIES_FILTER}" if shared else REPLIES_FILTER


def is_reply(topic: str) -> bool:
    """`tenants/+/devices/+/replies/+`, what the replies subscription brings."""
    levels = topic.split("/", 5)
    return len(levels) == 6 and levels[4] == "replies" and levels[0] == "tenants"


def reply_topic(topic: str) -> tuple[UUID, UUID, str] | None:
    """(tenant, device, command id text) of `tenants/{t}/devices/{d}/replies/{c}`."""
    levels = topic.split("/")
    if len(levels) != 6 or levels[0] != "tenants" or levels[2] != "devices":
        return None
    if levels[4] != "replies":
        return None
    tenant_id, device_id = parse_uuid(levels[1]), parse_uuid(levels[3])
    if tenant_id is None or device_id is None:
        return None
    return tenant_id, device_id, levels[5]


class ExternalDelivery(Delivery):
    def __init__(self, platform: Platform) -> None:
        super().__init__(platform, "ingest-commands")
        self._v5 = platform.settings.mqtt_protocol_v5
        self._client: aiomqtt.Client | None = None

    def attach(self, client: aiomqtt.Client | None) -> None:
        """The consumer's connection, once subscribed (None when it is lost)."""
        self._client = client
        if client is not None:
            self.spawn(self.resync())

    def created(self, tenant_id: UUID, device_id: UUID) -> None:
        self.spawn(self._deliver(tenant_id, device_id, resend=False))

    def connected(self, tenant_id: UUID, device_id: UUID, connected: bool) -> None:
        if connected:
            self.spawn(self._deliver(tenant_id, device_id, resend=True))

    async def resync(self) -> None:
        """After a reconnection (to Postgres or to the broker): every open command again."""
        if self._client is None:
            return
        try:
            devices = await self.service.open_devices()
        except Exception:
            log.warning("could not list open commands", exc_info=True)
            return
        for tenant_id, device_id in devices:
            await self._deliver(tenant_id, device_id, resend=True)

    async def _deliver(self, tenant_id: UUID, device_id: UUID, *, resend: bool) -> None:
        client = self._client
        if client is None:
            return  # attach() catches up
        try:
            rows = await self.service.due(tenant_id, device_id, resend=resend)
            base = topic_base(tenant_id, device_id)
            for row in rows:
                claimed = await self.service.mark_sent(
                    tenant_id, row["command_id"], again_after_s=RESEND_AFTER_S
                )
                if claimed is None:
                    continue  # another replica has it, or it just ended
                properties = None
                if self._v5:
                    remaining = int(row["expires_at"].timestamp() - time.time() + 0.999)
                    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    properties.MessageExpiryInterval = max(1, remaining)
                await client.publish(
                    f"{base}/commands/{row['name']}",
                    delivery_payload(row),
                    qos=1,
                    properties=properties,
                )
        except Exception:
            # Claimed but maybe not published: sent again on the device's next connect.
            log.warning("command delivery failed", exc_info=True)

    async def reply(self, topic: str, payload: bytes) -> None:
        """Store a reply from the consumer's subscription (raises on a database failure,
        and the message stays unacknowledged)."""
        parts = reply_topic(topic)
        if parts is None:
            COMMAND_REPLIES_REJECTED.labels("reply_invalid").inc()
            return
        tenant_id, device_id, command_text = parts
        await self.service.reply(tenant_id, device_id, topic, command_text, payload)
