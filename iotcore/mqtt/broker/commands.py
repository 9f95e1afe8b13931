"""Commands on the embedded broker (iotcore/commands/dispatch.py tells the whole story): a
device's pending commands go to its own session when it subscribes to its commands and when
one is created while it is; the device's PUBACK marks a command `sent`; its replies are
stored before they are acknowledged."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING
from uuid import UUID

from iotcore.commands.dispatch import Delivery
from iotcore.commands.schemas import delivery_payload
from iotcore.devices.mqtt_access import topic_base
from iotcore.mqtt.broker.sessions import Message, Session
from iotcore.platform.context import Platform

if TYPE_CHECKING:
    from iotcore.mqtt.broker.connection import Connection
    from iotcore.mqtt.broker.server import EmbeddedBroker

log = logging.getLogger("iotcore.broker")


def covers_commands(session: Session, topic_filter: str) -> bool:
    """A subscription of the session's device under its commands (the ACL allows no other)."""
    if session.tenant_id is None:
        return False
    base = topic_base(session.tenant_id, session.client_id)
    return topic_filter == f"{base}/commands" or topic_filter.startswith(f"{base}/commands/")


class EmbeddedDelivery(Delivery):
    def __init__(self, broker: EmbeddedBroker, platform: Platform) -> None:
        super().__init__(platform, "broker-commands")
        self._broker = broker

    # triggers ----------------------------------------------------------------------------

    def subscribed(self, session: Session, filters: list[tuple[str, int]]) -> None:
        if any(covers_commands(session, topic_filter) for topic_filter, _ in filters):
            self.spawn(self._deliver(session))

    def created(self, tenant_id: UUID, device_id: UUID) -> None:
        session = self._broker.sessions.get(str(device_id))
        if session is not None and session.tenant_id == tenant_id:
            self.spawn(self._deliver(session))

    def connected(self, tenant_id: UUID, device_id: UUID, connected: bool) -> None:
        """A connect this broker made itself is followed by the device's SUBSCRIBE (or by
        its resumed session's subscriptions, handled the same way): nothing to do here."""

    async def resync(self) -> None:
        """The listener (re)connected: every subscribed session gets what it is owed."""
        for session in list(self._broker.sessions.values()):
            if any(covers_commands(session, f) for f in session.subscriptions):
                self.spawn(self._deliver(session))

    # delivery ----------------------------------------------------------------------------

    async def _deliver(self, session: Session) -> None:
        if session.connection is None or session.tenant_id is None:
            return
        tenant_id, device_id = session.tenant_id, UUID(session.client_id)
        try:
            rows = await self.service.due(tenant_id, device_id, resend=False)
        except Exception:
            log.warning("could not read pending commands", exc_info=True)
            return
        base = topic_base(tenant_id, device_id)
        for row in rows:
            command_id = row["command_id"]
            topic = f"{base}/commands/{row['name']}"
            if command_id in session.commands or session.connection is None:
                continue
            granted = [q for s, q in self._broker.subscribers(topic) if s is session]
            if not granted:
                continue  # not subscribed to this command's name
            session.commands.add(command_id)
            acked = functools.partial(self._on_ack, session, tenant_id, command_id)
            if max(granted) == 0:
                # A QoS 0 subscription (3.8.4: never above what was granted): sent once, so
                # `sent` as it leaves; the device asked for no more.
                session.deliver(Message(topic, delivery_payload(row), 0, False))
                acked()
                continue
            session.deliver(
                Message(
                    topic,
                    delivery_payload(row),
                    1,
                    False,
                    expires=row["expires_at"].timestamp(),
                    on_ack=acked,
                )
            )

    def _on_ack(self, session: Session, tenant_id: UUID, command_id: UUID) -> None:
        self.spawn(self._acked(session, tenant_id, command_id))

    async def _acked(self, session: Session, tenant_id: UUID, command_id: UUID) -> None:
        try:
            await self.service.mark_sent(tenant_id, command_id)
        except Exception:
            # Still pending in the database: sent again on the device's next subscription.
            log.warning("could not mark a command sent", exc_info=True)
        finally:
            session.commands.discard(command_id)

    # replies -----------------------------------------------------------------------------

    def reply(
        self,
        connection: Connection,
        topic: str,
        command_id: str,
        payload: bytes,
        qos: int,
        packet_id: int,
    ) -> None:
        """A device's reply: stored (or recorded as rejected) before its PUBACK."""
        grant = connection.grant
        assert grant is not None and grant.identity.tenant_id is not None
        ack = connection.owe_ack(packet_id, ready=False) if qos == 1 else None
        tenant_id, device_id = grant.identity.tenant_id, grant.identity.device_id

        async def handle() -> None:
            try:
                await self.service.reply(tenant_id, device_id, topic, command_id, payload)
            except Exception:
                log.warning("command reply not stored; closing for a resend", exc_info=True)
                connection.close(send_will=False)
                return
            if ack is not None:
                ack.ready = True
                connection.send_acks()

        self.spawn(handle())
