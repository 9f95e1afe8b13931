"""One client connection of the embedded broker: framing, the CONNECT handshake, and the
per-packet rules. Decisions that involve other clients or the database are the broker's.

PUBACKs leave in the order the PUBLISHes came (MQTT 3.1.1 4.6): a telemetry PUBACK waits
for its commit, and any PUBACK behind it waits with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

from iotcore.mqtt.broker import packets
from iotcore.mqtt.broker.packets import ProtocolError

if TYPE_CHECKING:
    from iotcore.mqtt.broker.server import EmbeddedBroker, SessionGrant
    from iotcore.mqtt.broker.sessions import Session

log = logging.getLogger("iotcore.broker")


class Ack:
    """A PUBACK owed to the client, sent once `ready` and every earlier one is sent."""

    __slots__ = ("packet_id", "ready")

    def __init__(self, packet_id: int, ready: bool) -> None:
        self.packet_id = packet_id
        self.ready = ready


class Connection(asyncio.Protocol):
    def __init__(self, broker: EmbeddedBroker) -> None:
        self.broker = broker
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.opened_at = broker.now()
        self.last_seen = self.opened_at
        self.keepalive = 0
        self.grant: SessionGrant | None = None
        self.session: Session | None = None
        self.will: packets.Will | None = None
        self.telemetry_topic = ""
        self.topic_base = ""  # tenants/{t}/devices/{d} of the accepted device
        self.status_topic = ""
        self.telemetry_prefix = b""  # the telemetry topic as a PUBLISH carries it (length, UTF-8)
        self.presence_gen = 0  # this connection's presence generation (epoch ms)
        self.taken_over = False  # ended by a new connection of the same client id
        self.acks: deque[Ack] = deque()
        self.connecting = False  # CONNECT received, answer not sent yet
        self.closed = False
        self.paused = False

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if not self.broker.opened(self):
            self.closed = True
            self.transport.abort()  # over the connection limit: no CONNACK is owed before CONNECT

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_seen = self.broker.now()
        self.buffer += data
        if not self.connecting:
            self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.broker.closed(self)

    def pause_writing(self) -> None:
        # A subscriber that does not read: stop reading it too, its queue bounds the rest.
        self._pause()

    def resume_writing(self) -> None:
        self._resume()

    # ------------------------------------------------------------------ framing

    def process(self) -> None:
        """Handle every complete packet in the buffer."""
        buffer = self.buffer
        pos = 0
        broker = self.broker
        max_size = broker.max_packet_bytes
        prefix = self.telemetry_prefix
        # No body is longer than max_size: no fast path before the CONNECT is accepted.
        topic_end = len(prefix) if prefix else max_size + 1
        try:
            while not self.closed:
                frame = packets.read_frame(buffer, pos, max_size)
                if frame is None:
                    break
                first, start, end = frame
                pos = end
                # The usual packet: telemetry on the device's own topic at QoS 0 or 1. Its
                # topic matched as encoded bytes needs no decoding nor topic checks; anything
                # else (or malformed) takes the general way below.
                if (
                    first & 0xF4 == 0x30
                    and end - start >= topic_end
                    and buffer.startswith(prefix, start)
                ):
                    at = start + topic_end
                    if not first & 0x02:
                        broker.telemetry(self, bytes(buffer[at:end]), 0)
                        continue
                    packet_id = buffer[at] << 8 | buffer[at + 1] if at + 2 <= end else 0
                    if packet_id:
                        broker.telemetry(self, bytes(buffer[at + 2 : end]), packet_id)
                        continue
                body = bytes(buffer[start:end])
                kind, flags = first >> 4, first & 0x0F
                if self.grant is None:
                    if kind != packets.CONNECT:
                        raise ProtocolError("first packet is not CONNECT")
                    self.connecting = True
                    broker.connect(self, packets.decode_connect(flags, body))
                    break  # the rest waits for the CONNECT's answer
                self._packet(kind, flags, body)
        except ProtocolError as exc:
            log.info("mqtt protocol error; closing", extra={"error": str(exc)})
            self.close(send_will=True)
        del buffer[:pos]
        broker.flush_telemetry()

    def _packet(self, kind: int, flags: int, body: bytes) -> None:
        broker = self.broker
        if kind == packets.PUBLISH:
            broker.publish(self, packets.decode_publish(flags, body))
        elif kind == packets.PUBACK:
            if self.session is not None:
                self.session.acknowledged(packets.decode_packet_id(body))
        elif kind == packets.PINGREQ:
            if flags or body:
                raise ProtocolError("malformed PINGREQ")
            self.write(packets.PINGRESP_BYTES)
        elif kind == packets.SUBSCRIBE:
            broker.subscribe(self, *packets.decode_subscribe(flags, body))
        elif kind == packets.UNSUBSCRIBE:
            broker.unsubscribe(self, *packets.decode_unsubscribe(flags, body))
        elif kind == packets.DISCONNECT:
            if flags or body:
                raise ProtocolError("malformed DISCONNECT")
            self.close(send_will=False)  # 3.14.4: a clean DISCONNECT discards the will
        elif kind == packets.CONNECT:
            raise ProtocolError("second CONNECT")  # 3.1.0-2
        else:
            # QoS 2 flows (PUBREC/PUBREL/PUBCOMP) never start: a QoS 2 publish is refused.
            raise ProtocolError(f"unexpected packet type {kind}")

    # ------------------------------------------------------------------ answers

    def accepted(self, grant: SessionGrant, session: Session, present: bool) -> None:
        """The broker accepted the CONNECT: answer, then go on with what the client sent."""
        self.grant = grant
        self.session = session
        self.telemetry_topic = grant.telemetry_topic
        encoded = grant.telemetry_topic.encode()
        self.telemetry_prefix = len(encoded).to_bytes(2, "big") + encoded
        self.topic_base = grant.telemetry_topic.removesuffix("/telemetry")
        self.status_topic = grant.telemetry_topic.removesuffix("telemetry") + "status"
        self.connecting = False
        self.write(packets.connack(present, packets.ACCEPTED))
        session.resume(self)
        if self.buffer:
            self.process()

    def refuse(self, code: int) -> None:
        self.write(packets.connack(False, code))
        self.close(send_will=False)

    def owe_ack(self, packet_id: int, ready: bool) -> Ack:
        ack = Ack(packet_id, ready)
        self.acks.append(ack)
        if ready and len(self.acks) == 1:
            self.send_acks()
        return ack

    def send_acks(self) -> None:
        acks = self.acks
        ready = []
        while acks and acks[0].ready:
            ready.append(acks.popleft().packet_id)
        if ready:
            self.write(packets.pubacks(ready))

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self, send_will: bool) -> None:
        """Close the connection; the will goes out only when asked for (not after DISCONNECT,
        nor when the broker ends a session whose credential was revoked)."""
        if not send_will:
            self.will = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def hold(self) -> None:
        """The write queue is full: stop reading this client until it has room again."""
        self._pause()

    def release(self) -> None:
        self._resume()
