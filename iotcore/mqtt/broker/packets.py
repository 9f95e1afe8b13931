"""MQTT 3.1.1 packets: strict decoding of what clients send, encoding of what the broker sends.

Anything malformed raises `ProtocolError`, and the connection closes (MQTT 3.1.1 4.8: the
server closes the network connection on a protocol violation).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# CONNACK return codes (3.2.2.3)
ACCEPTED = 0
BAD_PROTOCOL_VERSION = 1
IDENTIFIER_REJECTED = 2
SERVER_UNAVAILABLE = 3
BAD_CREDENTIALS = 4
NOT_AUTHORIZED = 5

SUBACK_FAILURE = 0x80
PINGRESP_BYTES = b"\xd0\x00"
_U16 = struct.Struct("!H")
_ACK = struct.Struct("!BBH")


class ProtocolError(Exception):
    """The client broke the protocol; the connection is closed without an answer."""


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True)
class Connect:
    client_id: str
    username: str | None
    password: str | None
    clean_session: bool
    keepalive: int
    will: Will | None


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int


def read_frame(buffer: bytearray | bytes, start: int, max_size: int) -> tuple[int, int, int] | None:
    """(first byte, body start, body end) of the packet at `start`, or None if incomplete."""
    available = len(buffer)
    if available - start < 2:
        return None
    length, multiplier, pos = 0, 1, start + 1
    while True:
        if pos >= available:
            return None
        byte = buffer[pos]
        length += (byte & 0x7F) * multiplier
        pos += 1
        if not byte & 0x80:
            break
        multiplier *= 128
        if multiplier > 128**3:
            raise ProtocolError("remaining length longer than four bytes")
    if length > max_size:
        raise ProtocolError("packet larger than the broker accepts")
    if available < pos + length:
        return None
    return buffer[start], pos, pos + length


def _string(body: bytes, pos: int) -> tuple[str, int]:
    raw, pos = _binary(body, pos)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("string is not UTF-8") from exc
    if "\x00" in text:
        raise ProtocolError("string contains U+0000")  # forbidden by 1.5.3
    return text, pos


def _binary(body: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(body):
        raise ProtocolError("truncated length prefix")
    (size,) = _U16.unpack_from(body, pos)
    end = pos + 2 + size
    if end > len(body):
        raise ProtocolError("truncated string")
    return bytes(body[pos + 2 : end]), end


def decode_connect(flags: int, body: bytes) -> Connect | int:
    """The CONNECT packet, or a CONNACK refusal code for a well-formed CONNECT the broker
    will not serve (an MQTT version other than 3.1.1)."""
    if flags != 0:
        raise ProtocolError("CONNECT fixed-header flags must be 0")
    name, pos = _string(body, 0)
    if name != "MQTT" or pos + 4 > len(body):
        raise ProtocolError("not an MQTT CONNECT")
    level, connect_flags = body[pos], body[pos + 1]
    (keepalive,) = _U16.unpack_from(body, pos + 2)
    pos += 4
    if level != 4:
        return BAD_PROTOCOL_VERSION  # 3.1.1 only (MQTT 5 clients may retry with 3.1.1)
    if connect_flags & 0x01:
        raise ProtocolError("reserved CONNECT flag set")
    will_flag = bool(connect_flags & 0x04)
    will_qos = (connect_flags >> 3) & 0x03
    will_retain = bool(connect_flags & 0x20)
    if not will_flag and (will_qos or will_retain):
        raise ProtocolError("will QoS or retain without a will")
    if will_qos == 3:
        raise ProtocolError("will QoS 3")
    has_username, has_password = bool(connect_flags & 0x80), bool(connect_flags & 0x40)
    if has_password and not has_username:
        raise ProtocolError("password without user name")
    client_id, pos = _string(body, pos)
    will = None
    if will_flag:
        will_topic, pos = _string(body, pos)
        will_payload, pos = _binary(body, pos)
        check_topic_name(will_topic)
        will = Will(will_topic, will_payload, min(will_qos, 1), will_retain)
    username = password = None
    if has_username:
        username, pos = _string(body, pos)
    if has_password:
        raw_password, pos = _binary(body, pos)
        try:
            password = raw_password.decode("utf-8")
        except UnicodeDecodeError:
            password = ""  # never matches a secret; refused as bad credentials
    if pos != len(body):
        raise ProtocolError("trailing bytes after CONNECT payload")
    return Connect(client_id, username, password, bool(connect_flags & 0x02), keepalive, will)


def decode_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH QoS 3")
    topic, pos = _string(body, 0)
    check_topic_name(topic)
    packet_id = 0
    if qos:
        if pos + 2 > len(body):
            raise ProtocolError("PUBLISH without packet id")
        (packet_id,) = _U16.unpack_from(body, pos)
        if packet_id == 0:
            raise ProtocolError("packet id 0")
        pos += 2
    return Publish(topic, bytes(body[pos:]), qos, bool(flags & 0x01), bool(flags & 0x08), packet_id)


def decode_subscribe(flags: int, body: bytes) -> tuple[int, list[tuple[str, int]]]:
    if flags != 0x02:
        raise ProtocolError("SUBSCRIBE fixed-header flags must be 2")
    packet_id, pos = _packet_id(body)
    filters = []
    while pos < len(body):
        topic_filter, pos = _string(body, pos)
        if pos >= len(body):
            raise ProtocolError("SUBSCRIBE filter without QoS")
        qos = body[pos]
        pos += 1
        if qos > 2:
            raise ProtocolError("SUBSCRIBE QoS byte out of range")
        check_topic_filter(topic_filter)
        filters.append((topic_filter, qos))
    if not filters:
        raise ProtocolError("SUBSCRIBE without filters")
    return packet_id, filters


def decode_unsubscribe(flags: int, body: bytes) -> tuple[int, list[str]]:
    if flags != 0x02:
        raise ProtocolError("UNSUBSCRIBE fixed-header flags must be 2")
    packet_id, pos = _packet_id(body)
    filters = []
    while pos < len(body):
        topic_filter, pos = _string(body, pos)
        filters.append(topic_filter)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without filters")
    return packet_id, filters


def decode_packet_id(body: bytes) -> int:
    packet_id, pos = _packet_id(body)
    if pos != len(body):
        raise ProtocolError("unexpected bytes after packet id")
    return packet_id


def _packet_id(body: bytes) -> tuple[int, int]:
    if len(body) < 2:
        raise ProtocolError("missing packet id")
    (packet_id,) = _U16.unpack_from(body, 0)
    if packet_id == 0:
        raise ProtocolError("packet id 0")
    return packet_id, 2


def check_topic_name(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic:
        raise ProtocolError("invalid topic name")


def check_topic_filter(topic_filter: str) -> None:
    if not topic_filter:
        raise ProtocolError("empty topic filter")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ProtocolError("misplaced '#' in topic filter")
        if "+" in level and level != "+":
            raise ProtocolError("misplaced '+' in topic filter")


# ------------------------------------------------------------------ encoding


def _remaining_length(size: int) -> bytes:
    out = bytearray()
    while True:
        byte, size = size % 128, size // 128
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out)


def connack(session_present: bool, code: int) -> bytes:
    return bytes((0x20, 2, 1 if session_present and code == ACCEPTED else 0, code))


def pubacks(packet_ids: list[int]) -> bytes:
    return b"".join([_ACK.pack(0x40, 2, packet_id) for packet_id in packet_ids])


def suback(packet_id: int, codes: list[int]) -> bytes:
    return bytes((0x90,)) + _remaining_length(2 + len(codes)) + _U16.pack(packet_id) + bytes(codes)


def unsuback(packet_id: int) -> bytes:
    return _ACK.pack(0xB0, 2, packet_id)


def publish(topic: str, payload: bytes, qos: int, retain: bool, packet_id: int, dup: bool) -> bytes:
    encoded = topic.encode()
    header = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    variable = _U16.pack(len(encoded)) + encoded + (_U16.pack(packet_id) if qos else b"")
    return bytes((header,)) + _remaining_length(len(variable) + len(payload)) + variable + payload
