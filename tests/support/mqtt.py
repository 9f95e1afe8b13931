"""A raw MQTT 3.1.1 client over a real socket, for the packets a client library would refuse
to send (non-canonical ids, foreign wills, QoS 2) and for exact control of acks and resends.
Written from the specification, independently of the broker's own codec."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

CONNACK, PUBLISH, PUBACK, SUBACK, UNSUBACK, PINGRESP = 2, 3, 4, 9, 11, 13


def _length(size: int) -> bytes:
    out = bytearray()
    while True:
        byte, size = size % 128, size // 128
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out)


def _str(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def connect_packet(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    clean_session: bool = True,
    keepalive: int = 60,
    will: tuple[str, bytes, int, bool] | None = None,
    level: int = 4,
) -> bytes:
    flags = 0x02 if clean_session else 0
    payload = _str(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _str(topic) + _str(message)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    body = _str("MQTT") + bytes((level, flags)) + struct.pack("!H", keepalive) + payload
    return b"\x10" + _length(len(body)) + body


def publish_packet(
    topic: str,
    payload: bytes,
    qos: int = 1,
    packet_id: int = 1,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    header = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = _str(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return bytes((header,)) + _length(len(body)) + body


def subscribe_packet(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_str(f) + bytes((q,)) for f, q in filters)
    return b"\x82" + _length(len(body)) + body


@dataclass(frozen=True)
class Packet:
    kind: int
    flags: int
    body: bytes

    @property
    def packet_id(self) -> int:
        if self.kind == PUBLISH:
            topic_length = struct.unpack_from("!H", self.body)[0]
            return int(struct.unpack_from("!H", self.body, 2 + topic_length)[0])
        return int(struct.unpack_from("!H", self.body)[0])

    @property
    def topic(self) -> str:
        size = struct.unpack_from("!H", self.body)[0]
        return self.body[2 : 2 + size].decode()

    @property
    def payload(self) -> bytes:
        size = struct.unpack_from("!H", self.body)[0]
        offset = 2 + size + (2 if (self.flags >> 1) & 3 else 0)
        return self.body[offset:]


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read(self, timeout: float = 10) -> Packet | None:
        """The next packet, or None when the broker closed the connection."""
        try:
            first = await asyncio.wait_for(self.reader.readexactly(1), timeout)
            size, multiplier = 0, 1
            while True:
                byte = (await asyncio.wait_for(self.reader.readexactly(1), timeout))[0]
                size += (byte & 0x7F) * multiplier
                multiplier *= 128
                if not byte & 0x80:
                    break
            body = await asyncio.wait_for(self.reader.readexactly(size), timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return Packet(first[0] >> 4, first[0] & 0x0F, body)

    async def connect(self, client_id: str, **options: object) -> tuple[int, bool]:
        """(CONNACK return code, session present)."""
        self.send(connect_packet(client_id, **options))  # type: ignore[arg-type]
        packet = await self.read()
        assert packet is not None, "closed without a CONNACK"
        assert packet.kind == CONNACK, packet
        return packet.body[1], bool(packet.body[0] & 1)

    async def closed_by_broker(self, timeout: float = 10) -> bool:
        """True once the broker closes the connection (anything it sends first is skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), deadline - loop.time())
            except TimeoutError:
                return False
            except ConnectionError:
                return True
            if not data:
                return True
        return False

    def close(self) -> None:
        self.writer.close()


@asynccontextmanager
async def raw_client(host: str, port: int) -> AsyncIterator[RawClient]:
    client = await RawClient.open(host, port)
    try:
        yield client
    finally:
        client.close()
