"""Broker-side MQTT session state: subscriptions and outgoing QoS 1 messages of one client id.

A session outlives its connection when the client asked for one (clean session off): its
subscriptions stay, QoS 1 messages for it wait in a bounded queue, and unacknowledged ones
are sent again (DUP) when it reconnects.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

from iotcore.mqtt.broker import packets

if TYPE_CHECKING:
    from iotcore.mqtt.broker.connection import Connection

MAX_INFLIGHT = 100


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    # A command: never sent (nor sent again) once this unix time has passed, and who to
    # tell when the client acknowledges it.
    expires: float | None = None
    on_ack: Callable[[], None] | None = None

    def expired(self) -> bool:
        return self.expires is not None and self.expires <= time.time()


class Session:
    __slots__ = (
        "client_id",
        "commands",
        "connection",
        "dropped",
        "inflight",
        "next_id",
        "offline_since",
        "queue",
        "queue_limit",
        "subscriptions",
        "tenant_id",
    )

    def __init__(self, client_id: str, tenant_id: UUID | None, queue_limit: int) -> None:
        self.client_id = client_id
        self.tenant_id = tenant_id
        self.connection: Connection | None = None
        self.subscriptions: dict[str, int] = {}
        self.inflight: dict[int, Message] = {}
        self.queue: deque[Message] = deque()
        self.queue_limit = queue_limit
        self.next_id = 0
        self.offline_since = time.monotonic()
        self.dropped = 0
        self.commands: set[UUID] = set()  # commands handed to this session, not yet acked

    def deliver(self, message: Message) -> None:
        connection = self.connection
        if message.qos == 0:
            if connection is not None:
                connection.write(
                    packets.publish(message.topic, message.payload, 0, message.retain, 0, False)
                )
            return
        if connection is not None and len(self.inflight) < MAX_INFLIGHT:
            self._send(connection, message)
        elif len(self.queue) < self.queue_limit:
            self.queue.append(message)
        else:
            self.dropped += 1  # bounded: the oldest undelivered messages are kept

    def _send(self, connection: Connection, message: Message) -> None:
        if message.expired():
            return
        packet_id = self._packet_id()
        self.inflight[packet_id] = message
        connection.write(
            packets.publish(message.topic, message.payload, 1, message.retain, packet_id, False)
        )

    def _packet_id(self) -> int:
        while True:
            self.next_id = self.next_id % 65535 + 1
            if self.next_id not in self.inflight:
                return self.next_id

    def acknowledged(self, packet_id: int) -> None:
        message = self.inflight.pop(packet_id, None)
        if message is None:
            return
        if message.on_ack is not None:
            message.on_ack()
        connection = self.connection
        while connection is not None and self.queue and len(self.inflight) < MAX_INFLIGHT:
            self._send(connection, self.queue.popleft())

    def resume(self, connection: Connection) -> None:
        """A reconnect: unacknowledged messages again (DUP set, same ids), then the queue."""
        self.connection = connection
        for packet_id, message in list(self.inflight.items()):
            if message.expired():  # a command past its expiry is not sent again
                del self.inflight[packet_id]
                continue
            connection.write(
                packets.publish(message.topic, message.payload, 1, message.retain, packet_id, True)
            )
        while self.queue and len(self.inflight) < MAX_INFLIGHT:
            self._send(connection, self.queue.popleft())

    def detach(self) -> None:
        self.connection = None
        self.offline_since = time.monotonic()
